"""Decoding: any input (path, bytes, array, PIL image) → RGB uint8, refusing bombs from the header
before a pixel buffer is allocated. The folder scan that picks image files by name is `scan`."""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import ImageDecodeError, ImageTooLargeError
from .config import MAX_PIXELS

__all__ = ["IMAGE_SUFFIXES", "image_size", "load_image", "load_image_native"]

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
    """(format, width, height) read from an encoded image's header, or None if unrecognised.

    Only the header is parsed, so a decompression bomb can be refused before any pixel buffer is
    allocated. Formats without a parser here are not decoded at all (see :func:`load_image`).
    """
    try:
        return _sniff(memoryview(data))
    except (struct.error, IndexError, ValueError):
        return None


def _sniff(b: memoryview) -> tuple[str, int, int] | None:
    head = bytes(b[:32])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        w, h = struct.unpack(">II", b[16:24])
        return "png", w, h
    if head.startswith(b"\xff\xd8"):
        return _sniff_jpeg(b)
    if head[:6] in (b"GIF87a", b"GIF89a"):
        w, h = struct.unpack("<HH", b[6:10])
        return "gif", w, h
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _sniff_webp(b)
    if head[:2] == b"BM":
        w, h = struct.unpack("<ii", b[18:26])
        return "bmp", abs(w), abs(h)
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return _sniff_tiff(b)
    if head[:1] == b"P" and head[1:2] in b"123456":
        return _sniff_pnm(bytes(b[:1024]))
    if head[4:8] == b"ftyp" and (b"avif" in head[8:32] or b"avis" in head[8:32]):
        return _sniff_avif(bytes(b[: 1 << 20]))
    if head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n"):
        i = bytes(b[: 1 << 16]).find(b"ihdr")
        if i < 0:
            return None
        h, w = struct.unpack(">II", b[i + 4 : i + 12])
        return "jpeg2000", w, h
    if head[:4] == b"\xff\x4f\xff\x51":  # raw JPEG 2000 codestream: SIZ marker first
        xsiz, ysiz, xo, yo = struct.unpack(">IIII", b[8:24])
        return "jpeg2000", xsiz - xo, ysiz - yo
    return None


def _sniff_avif(head: bytes) -> tuple[str, int, int] | None:
    # Every image item carries an 'ispe' (image spatial extents) property in the leading meta box;
    # the largest one (a grid's full canvas, not its tiles or thumbnail) is what the decoder allocates.
    sizes, i = [], head.find(b"ispe")
    while i >= 0:
        sizes.append(struct.unpack(">II", head[i + 8 : i + 16]))
        i = head.find(b"ispe", i + 4)
    if not sizes:
        return None
    w, h = max(sizes, key=lambda wh: wh[0] * wh[1])
    return "avif", w, h


def _sniff_jpeg(b: memoryview) -> tuple[str, int, int] | None:
    i, n = 2, len(b)
    while i + 4 <= n:
        if b[i] != 0xFF:
            return None
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD9)):  # standalone markers carry no length
            i += 2
            continue
        (length,) = struct.unpack(">H", b[i + 2 : i + 4])
        # SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", b[i + 5 : i + 9])
            return "jpeg", w, h
        if marker == 0xDA:  # start of scan before any frame header
            return None
        i += 2 + length
    return None


def _sniff_webp(b: memoryview) -> tuple[str, int, int] | None:
    chunk = bytes(b[12:16])
    if chunk == b"VP8X":
        w = int.from_bytes(b[24:27], "little") + 1
        h = int.from_bytes(b[27:30], "little") + 1
        return "webp", w, h
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", b[26:30])
        return "webp", w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":
        bits = int.from_bytes(b[21:25], "little")
        return "webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _sniff_tiff(b: memoryview) -> tuple[str, int, int] | None:
    e = "<" if bytes(b[:2]) == b"II" else ">"
    (ifd,) = struct.unpack(e + "I", b[4:8])
    (count,) = struct.unpack(e + "H", b[ifd : ifd + 2])
    dims: dict[int, int] = {}
    for k in range(count):
        tag, typ, _, value = struct.unpack(e + "HHI4s", b[ifd + 2 + 12 * k : ifd + 14 + 12 * k])
        if tag in (256, 257):
            dims[tag] = struct.unpack(e + ("H" if typ == 3 else "I"), value[: 2 if typ == 3 else 4])[0]
    if 256 in dims and 257 in dims:
        return "tiff", dims[256], dims[257]
    return None


def _sniff_pnm(head: bytes) -> tuple[str, int, int] | None:
    tokens: list[bytes] = []
    for line in head[2:].splitlines():
        tokens += line.split(b"#", 1)[0].split()
        if len(tokens) >= 2:
            return "pnm", int(tokens[0]), int(tokens[1])
    return None


def _to_uint8_rgb(arr: np.ndarray, src: str, bgr: bool, swap: bool = True) -> np.ndarray:
    """Any decoded/array image → contiguous RGB uint8 HxWx3 (BGR kept when ``bgr and not swap``)."""
    if arr.dtype == np.uint16:
        # Rounded 16→8-bit scale: 65535 → 255, 257·k → k.
        arr = ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
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
    if bgr and swap:
        return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(arr[:, :, :3])


def _check_pixels(w: int, h: int, max_pixels: int, src: str) -> None:
    if w * h > max_pixels:
        raise ImageTooLargeError(
            f"{src}: image is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
            "(raise max_pixels to accept it)",
            src,
        )
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"{src}: image header declares an empty size {w}x{h}", src)


def _decode_bytes(data: bytes, max_pixels: int, src: str, swap: bool = True) -> np.ndarray:
    if len(data) == 0:
        raise ImageDecodeError(f"{src}: empty input (0 bytes)", src)
    info = image_size(data)
    if info is None:
        raise ImageDecodeError(f"{src}: not a recognised image (supported: {_DECODABLE})", src)
    fmt, w, h = info
    _check_pixels(w, h, max_pixels, src)
    # IMREAD_COLOR applies EXIF orientation, expands gray, drops alpha and converts CMYK;
    # ANYDEPTH keeps 16-bit samples so they are scaled, not truncated.
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    except cv2.error as e:
        raise ImageDecodeError(f"{src}: cannot decode {fmt}: {str(e).strip().splitlines()[-1]}", src) from None
    if arr is None or arr.size == 0:
        raise ImageDecodeError(f"{src}: cannot decode {fmt} data (truncated or corrupt)", src)
    _check_pixels(arr.shape[1], arr.shape[0], max_pixels, src)
    return _to_uint8_rgb(arr, src, bgr=True, swap=swap)


def _from_pil(img: Any, max_pixels: int, src: str) -> np.ndarray:
    from PIL import ImageOps  # only reached when the caller already has Pillow

    _check_pixels(img.width, img.height, max_pixels, src)
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            arr = np.asarray(img)
            if arr.dtype != np.uint16:  # mode "I" is int32 holding 16-bit data
                arr = np.clip(arr, 0, 65535).astype(np.uint16)
            return _to_uint8_rgb(arr, src, bgr=False)
        return _to_uint8_rgb(np.asarray(img.convert("RGB")), src, bgr=False)
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageDecodeError(f"{src}: cannot decode PIL image: {e}", src) from None


def load_image(src: Any, max_pixels: int = MAX_PIXELS, *, name: str | None = None) -> np.ndarray:
    """Load any supported input as an RGB uint8 H×W×3 array.

    ``src`` may be a path (str / os.PathLike), encoded bytes, a numpy array (H×W, H×W×3 RGB or
    H×W×4 RGBA; uint8 or uint16) or a PIL image. EXIF orientation is applied, grayscale expanded,
    alpha dropped, 16-bit scaled to 8-bit, CMYK converted; for animated or multi-page files the
    first frame is used. Encoded images larger than ``max_pixels`` are refused from their header,
    before decoding. ``name`` labels the input in error messages.

    Raises:
        ImageDecodeError: the input cannot be read or is not a supported image.
        ImageTooLargeError: the image has more than ``max_pixels`` pixels.
    """
    return _load(src, max_pixels, name, rgb=True)[0]


def load_image_native(src: Any, max_pixels: int = MAX_PIXELS, *,
                      name: str | None = None) -> tuple[np.ndarray, bool]:
    """(pixels, is_bgr): :func:`load_image` without the full-frame BGR→RGB swap of OpenCV decodes.

    Patch selection is channel-order blind (R+G+B), so the Detector cuts the mosaic from the decode
    buffer and lets ``normalize(..., bgr=True)`` put the channels in order for the 49 tiles only.
    """
    return _load(src, max_pixels, name, rgb=False)


def _load(src: Any, max_pixels: int, name: str | None, rgb: bool) -> tuple[np.ndarray, bool]:
    label = _name(src, name)
    if isinstance(src, np.ndarray):
        if src.ndim >= 2:
            _check_pixels(src.shape[1], src.shape[0], max_pixels, label)
        return _to_uint8_rgb(src, label, bgr=False), False
    if isinstance(src, (bytes, bytearray, memoryview)):
        return _decode_bytes(bytes(src), max_pixels, label, swap=rgb), not rgb
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        try:
            # A compressed file can't exceed raw 16-bit RGB at the pixel limit by much; refusing
            # larger files keeps a huge non-image from being read into memory.
            if path.stat().st_size > 6 * max_pixels + (64 << 20):
                raise ImageTooLargeError(f"{label}: file is {path.stat().st_size:,} bytes, too large", label)
            data = path.read_bytes()
        except IsADirectoryError:
            raise ImageDecodeError(f"{label}: is a directory, not an image file", label) from None
        except FileNotFoundError:
            raise ImageDecodeError(f"{label}: no such file", label) from None
        except OSError as e:
            raise ImageDecodeError(f"{label}: cannot read: {e.strerror or e}", label) from None
        except ValueError as e:  # a NUL byte or an unencodable name: the OS never saw the path
            raise ImageDecodeError(f"{label}: cannot read: {e}", label) from e
        return _decode_bytes(data, max_pixels, label, swap=rgb), not rgb
    if type(src).__module__.startswith("PIL.") and hasattr(src, "convert"):
        return _from_pil(src, max_pixels, label), False
    raise ImageDecodeError(f"{label}: unsupported input type {type(src).__name__}", label)
