"""Decoding: any input (path, bytes, array, PIL image) → RGB uint8, refusing bombs, hangs and
truncated files from their structure before a decoder runs. The folder scan that picks image files
by name is `scan`."""
from __future__ import annotations

import io
import os
from typing import Any

import cv2
import numpy as np

from ..errors import ImageDecodeError, ImageTooLargeError, UnsupportedInputError
from .config import MAX_PIXELS
from .header import MAX_DECODE_BYTES_PER_PIXEL, MAX_SCAN_PIXELS, Header, Malformed
from .read import file_byte_limit, read_image_file
from .orient import apply_orientation, exif_orientation, flatten_alpha, xmp_orientation
from .sniff import read_header

__all__ = ["IMAGE_SUFFIXES", "image_size", "inspect_bytes", "decode_inspected", "decode_image", "load_image",
           "load_image_native"]

_DECODABLE = "JPEG, PNG, WebP, GIF, BMP, TIFF, PNM, AVIF, JPEG 2000"
# File names treated as images when a folder is scanned (CLI, training data, benchmarks). HEIC is
# listed so such files get an error row ("not a recognised image") rather than being skipped unseen.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff",
                            ".gif", ".jp2", ".pgm", ".ppm", ".pnm", ".heic", ".avif"})


def _name(src: Any, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    return f"<{type(src).__name__}>"


def image_size(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) read from an encoded image's header, or None if unrecognised or
    structurally invalid.

    Only the header is parsed, so a decompression bomb can be refused before any pixel buffer is
    allocated. Formats without a parser here are not decoded at all (see :func:`load_image`).
    """
    try:
        hdr = read_header(data)
    except Malformed:
        return None
    return None if hdr is None else (hdr.fmt, hdr.width, hdr.height)


def _check_pixels(w: int, h: int, max_pixels: int, src: str) -> None:
    if w * h > max_pixels:
        raise ImageTooLargeError(
            f"{src}: image is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
            "(raise max_pixels to accept it)",
            src,
        )
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"{src}: image header declares an empty size {w}x{h}", src)


def _check_header(hdr: Header, max_pixels: int, src: str) -> None:
    """Refuse what decoding would cost beyond the limits (see `nsnet_sdk.pipeline.header`)."""
    _check_pixels(hdr.width, hdr.height, max_pixels, src)
    budget = MAX_DECODE_BYTES_PER_PIXEL * max_pixels + (16 << 20)
    if hdr.decode_bytes > budget:
        raise ImageTooLargeError(
            f"{src}: decoding this {hdr.fmt} ({hdr.width}x{hdr.height}) would allocate about "
            f"{hdr.decode_bytes:,} bytes, over the limit of {budget:,} (raise max_pixels to accept it)",
            src)
    if hdr.scans * hdr.width * hdr.height > MAX_SCAN_PIXELS:
        raise ImageTooLargeError(
            f"{src}: {hdr.scans} JPEG scans over {hdr.width}x{hdr.height} pixels exceed the decoding "
            f"work limit of {MAX_SCAN_PIXELS:,} scan-pixels", src)


def _checked_header(data: bytes, max_pixels: int, src: str) -> Header | None:
    """The file's `Header` once its structure and cost pass every check; None if unrecognised."""
    try:
        hdr = read_header(data)
    except Malformed as e:
        raise ImageDecodeError(f"{src}: {e}", src) from None
    if hdr is None:
        return None
    _check_header(hdr, max_pixels, src)
    # Structural defects come after the limits, so a bomb is reported as too large.
    defect = hdr.defect or (hdr.verify() if hdr.verify else None)
    if defect:
        raise ImageDecodeError(f"{src}: {defect}", src)
    return hdr


def _to_uint8_rgb(arr: np.ndarray, src: str, bgr: bool, premultiplied: bool = False,
                  swap: bool = True) -> np.ndarray:
    """Any decoded/array image → contiguous RGB uint8 HxWx3; a 4th channel is alpha, flattened
    over white (`flatten_alpha`)."""
    if arr.dtype == np.uint16:
        # Rounded 16→8-bit scale (65535 → 255, 257·k → k), without a wider temporary copy.
        arr = cv2.convertScaleAbs(arr, alpha=255.0 / 65535.0)
    elif arr.dtype in (np.float32, np.float64):
        arr = np.clip(np.nan_to_num(arr) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ImageDecodeError(f"{src}: unsupported pixel type {arr.dtype} (need uint8 or uint16)", src)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ImageDecodeError(f"{src}: unsupported array shape {arr.shape} (need HxW, HxWx3 or HxWx4)", src)
    if arr.shape[2] == 4:
        arr = flatten_alpha(arr, premultiplied)
    if bgr and swap:  # swap=False keeps OpenCV's BGR order (the caller swaps what it keeps)
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(arr)


def _metadata_orientation(types: Any, meta: Any) -> tuple[int | None, int | None]:
    """(EXIF orientation, XMP orientation) from OpenCV's metadata blocks."""
    exif = xmp = None
    if types is None:
        return None, None
    for t, m in zip(types, meta):
        blob = np.asarray(m).tobytes()
        if int(t) == cv2.IMAGE_METADATA_EXIF:
            exif = exif_orientation(blob)
        elif int(t) == cv2.IMAGE_METADATA_XMP:
            xmp = xmp_orientation(blob)
    return exif, xmp


def _opencv(data: bytes, hdr: Header, src: str, swap: bool = True) -> np.ndarray | None:
    """Decode with OpenCV, orientation applied (RGB, or BGR with ``swap=False``); None when
    OpenCV cannot decode the file."""
    buf = np.frombuffer(data, np.uint8)
    # IMREAD_COLOR applies EXIF orientation but drops alpha; IMREAD_UNCHANGED keeps alpha (and
    # 16-bit samples) and applies no orientation, which is then applied here.
    flags = cv2.IMREAD_UNCHANGED if hdr.alpha else cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH
    try:
        if hasattr(cv2, "imdecodeWithMetadata"):
            arr, types, meta = cv2.imdecodeWithMetadata(buf, flags)
        else:  # OpenCV < 4.12: no metadata; EXIF orientation of images with alpha is not applied
            arr, types, meta = cv2.imdecode(buf, flags), None, None
    except cv2.error:
        return None
    if arr is None or arr.size == 0 or arr.dtype.kind == "i":
        return None  # signed samples (TIFF SampleFormat 2): Pillow maps them, behind the same checks
    _check_pixels(arr.shape[1], arr.shape[0], hdr.width * hdr.height, src)
    rgb = _to_uint8_rgb(arr, src, bgr=True, premultiplied=hdr.premultiplied, swap=swap)
    exif, xmp = _metadata_orientation(types, meta)
    if hdr.fmt == "tiff":  # libtiff's reader applies the Orientation tag in every mode
        return rgb
    if hdr.alpha:
        return apply_orientation(rgb, exif or xmp or hdr.orientation)
    # IMREAD_COLOR applied the EXIF orientation; XMP and AVIF irot/imir are left to do.
    return rgb if exif else apply_orientation(rgb, xmp or hdr.orientation)


_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WEBP", "bmp": "BMP",
                "tiff": "TIFF", "pnm": "PPM", "avif": "AVIF", "jpeg2000": "JPEG2000"}


def _pillow(data: bytes, hdr: Header, max_pixels: int, src: str) -> np.ndarray | None:
    """Decode with Pillow where OpenCV could not, behind the same limits; None without Pillow."""
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        img = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[hdr.fmt]])
    except Image.DecompressionBombError as e:  # only when max_pixels exceeds Pillow's own limit
        raise ImageTooLargeError(f"{src}: Pillow's limit (PIL.Image.MAX_IMAGE_PIXELS) refuses it: {e}",
                                 src) from None
    except Exception:  # Pillow cannot read it either: OpenCV's verdict stands
        return None
    # Pillow's view of the size must agree with the header that passed the limits.
    if img.width > hdr.width or img.height > hdr.height:
        raise ImageDecodeError(f"{src}: {hdr.fmt} decoder sees {img.width}x{img.height}, the header "
                               f"{hdr.width}x{hdr.height}: inconsistent file", src)
    try:
        return _from_pil(img, max_pixels, src)
    except ImageTooLargeError:
        raise
    except ImageDecodeError:  # Pillow cannot decode it either: OpenCV's verdict stands
        return None


def inspect_bytes(data: bytes, max_pixels: int, src: str) -> Header:
    """The `Header` of encoded ``data`` once its structure, size and decoding cost pass every check
    (the gate every decode engine sits behind, nvImageCodec included); typed errors naming ``src``
    otherwise. ``Header.notes`` are the warnings a decode of it carries."""
    if len(data) == 0:
        raise ImageDecodeError(f"{src}: empty input (0 bytes)", src)
    hdr = _checked_header(data, max_pixels, src)
    if hdr is None:
        raise ImageDecodeError(f"{src}: not a recognised image (supported: {_DECODABLE})", src)
    return hdr


def _decode_bytes(data: bytes, max_pixels: int, src: str,
                  swap: bool = True) -> tuple[np.ndarray, bool, list[str]]:
    return decode_inspected(data, inspect_bytes(data, max_pixels, src), max_pixels, src, swap)


def decode_inspected(data: bytes, hdr: Header, max_pixels: int, src: str,
                     swap: bool = True) -> tuple[np.ndarray, bool, list[str]]:
    """`decode_image` of encoded ``data`` whose `Header` ``hdr`` came from `inspect_bytes`: the
    checks are not run a second time (the PNG inflate check alone can cost as much as a decode)."""
    rgb, is_bgr = _opencv(data, hdr, src, swap), not swap
    if rgb is None:
        rgb, is_bgr = _pillow(data, hdr, max_pixels, src), False
    if rgb is None:
        raise ImageDecodeError(f"{src}: cannot decode {hdr.fmt} data (truncated or corrupt)", src)
    return rgb, is_bgr, list(hdr.notes)


def _from_pil(img: Any, max_pixels: int, src: str) -> np.ndarray:
    from PIL import Image, ImageOps  # only reached when the caller already has Pillow

    _check_pixels(img.width, img.height, max_pixels, src)
    try:
        if img.tell() != 0:  # first frame; n_frames would walk every frame of the file
            img.seek(0)
        img = ImageOps.exif_transpose(img)
        if img.mode == "F":  # float samples in [0, 1], scaled like a float array
            return _to_uint8_rgb(np.asarray(img), src, bgr=False)
        if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            arr = np.asarray(img)
            if arr.dtype != np.uint16:  # mode "I" is int32 holding 16-bit data
                arr = np.clip(arr, 0, 65535).astype(np.uint16)
            return _to_uint8_rgb(arr, src, bgr=False)
        transparent = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
        return _to_uint8_rgb(np.asarray(img.convert("RGBA" if transparent else "RGB")), src, bgr=False)
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{src}: {e}", src) from None
    except Exception as e:  # Pillow's plugins raise many types (RuntimeError, struct.error, ...)
        raise ImageDecodeError(f"{src}: cannot decode PIL image: {type(e).__name__}: {e}", src) from None


def _check_pil_file(img: Any, max_pixels: int, src: str) -> None:
    """A PIL image still backed by its file decodes lazily, with Pillow's decoders and none of
    their limits: hold the file's structure to the same checks first."""
    fp = getattr(img, "fp", None)
    if fp is None or not hasattr(fp, "seek"):
        return  # already decoded (or built in memory): nothing left to guard
    try:
        pos = fp.tell()
        fp.seek(0)
        data = fp.read(file_byte_limit(max_pixels) + 1)
        fp.seek(pos)
    except (OSError, ValueError):
        return
    if len(data) > file_byte_limit(max_pixels):
        raise ImageTooLargeError(f"{src}: file is over the limit of {file_byte_limit(max_pixels):,} bytes", src)
    _checked_header(data, max_pixels, src)


def decode_image(src: Any, max_pixels: int = MAX_PIXELS, *, name: str | None = None,
                 rgb: bool = True) -> tuple[np.ndarray, bool, list[str]]:
    """`load_image`, plus (as the 2nd item) whether the pixels are in OpenCV's BGR order — only with
    ``rgb=False``, which skips the full-frame swap of OpenCV decodes — and (3rd) the warnings
    decoding raised (e.g. a file missing only its end marker), which the `Detector` carries into
    `Prediction.warnings`.
    """
    label = _name(src, name)
    if isinstance(src, np.ndarray):
        if src.dtype.kind == "f":
            # A float array's scale cannot be known ([0, 1] or [0, 255] both occur): guessing scored
            # the same picture 0.26 or 0.10, so the caller says it by converting.
            raise UnsupportedInputError(
                f"{label}: float arrays ({src.dtype}) are not accepted: their value range is ambiguous; "
                "convert to uint8 first, e.g. (a * 255).round().clip(0, 255).astype(np.uint8) for values "
                "in [0, 1], or a.round().clip(0, 255).astype(np.uint8) for values in [0, 255]", source=label)
        if src.ndim >= 2:
            _check_pixels(src.shape[1], src.shape[0], max_pixels, label)
        return _to_uint8_rgb(src, label, bgr=False), False, []
    if isinstance(src, (bytes, bytearray, memoryview)):
        return _decode_bytes(bytes(src), max_pixels, label, swap=rgb)
    if isinstance(src, (str, os.PathLike)):
        data = read_image_file(src, file_byte_limit(max_pixels), label)
        return _decode_bytes(data, max_pixels, label, swap=rgb)
    if type(src).__module__.startswith("PIL.") and hasattr(src, "convert"):
        _check_pil_file(src, max_pixels, label)
        return _from_pil(src, max_pixels, label), False, []
    raise ImageDecodeError(f"{label}: unsupported input type {type(src).__name__}", label)


def load_image(src: Any, max_pixels: int = MAX_PIXELS, *, name: str | None = None) -> np.ndarray:
    """Load any supported input as an RGB uint8 H×W×3 array.

    ``src`` may be a path (str / os.PathLike) to a regular file, encoded bytes, a numpy array (H×W,
    H×W×3 RGB or H×W×4 RGBA; uint8 or uint16) or a PIL image. Orientation is applied as Pillow's
    ``exif_transpose`` does (EXIF, else XMP, else the container's own: TIFF tag, AVIF irot/imir),
    grayscale expanded, transparency composited over white, 16-bit scaled to 8-bit, CMYK
    converted; for animated or multi-page files the first frame is used. Where OpenCV cannot decode
    a file that Pillow can (if installed), Pillow decodes it behind the same limits.

    Before any decoder runs, the file's structure is validated and refused when it is corrupt,
    truncated inside its pixel data, or would cost more than the limits allow: more than
    ``max_pixels`` pixels, a decoder allocation over 8 bytes per allowed pixel, too many JPEG
    scans, frames, pages or segments (`nsnet_sdk.pipeline.header`). Paths that are not regular
    files (FIFOs, devices) are refused without being opened. ``name`` labels the input in errors.

    Raises:
        ImageDecodeError: the input cannot be read or is not a supported, intact image.
        ImageTooLargeError: the image, its decoding cost or its file exceeds the limits.
    """
    return decode_image(src, max_pixels, name=name)[0]


def load_image_native(src: Any, max_pixels: int = MAX_PIXELS, *,
                      name: str | None = None) -> tuple[np.ndarray, bool]:
    """(pixels, is_bgr): :func:`load_image` without the full-frame BGR→RGB swap of OpenCV decodes.

    Patch selection is channel-order blind (R+G+B), so the Detector cuts the mosaic from the decode
    buffer and lets ``normalize(..., bgr=True)`` put the channels in order for the 49 tiles only.
    """
    return decode_image(src, max_pixels, name=name, rgb=False)[:2]
