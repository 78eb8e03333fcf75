"""One corpus of inputs for the input pipeline's executor-parity tests: hostile files (bombs,
truncations, non-regular paths), every colour rule (alpha, tRNS, grey, palette, 16-bit, CMYK),
orientation by EXIF / XMP / container, progressive JPEG, and every input kind (path, bytes, array,
PIL image). Built from small generated files; nothing large is stored."""
from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

import _decode_util as u
from _sdk_util import textured
from test_decode_fuzz_findings import APNG_UNKNOWN_CHUNK


def _jpeg(rgb: np.ndarray, **kw) -> bytes:
    return u.encode(Image.fromarray(rgb), "JPEG", quality=92, **kw)


def _png(arr: np.ndarray, mode: str | None = None, **kw) -> bytes:
    return u.encode(Image.fromarray(arr, mode) if mode else Image.fromarray(arr), "PNG", **kw)


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an APP1 EXIF segment whose IFD0 holds only Orientation."""
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    app1 = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def _with_xmp_orientation(jpeg: bytes, orientation: int) -> bytes:
    xmp = (b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF "
           b"xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'><rdf:Description "
           b"xmlns:tiff='http://ns.adobe.com/tiff/1.0/' tiff:Orientation=\"%d\"/></rdf:RDF></x:xmpmeta>"
           % orientation)
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(xmp) + 2) + xmp + jpeg[2:]


def _cut_scan(jpeg: bytes, keep: int) -> bytes:
    """The JPEG with its coded data cut to ``keep`` bytes and EOI appended: it ends early."""
    sos = jpeg.find(b"\xff\xda")
    start = sos + 2 + struct.unpack(">H", jpeg[sos + 2 : sos + 4])[0]
    return jpeg[: start + keep] + b"\xff\xd9"


def _png_with_raw_profile_exif(rgb: np.ndarray, orientation: int) -> bytes:
    """EXIF orientation carried the ImageMagick way: a ``Raw profile type exif`` text chunk."""
    from PIL import PngImagePlugin

    exif = Image.Exif()
    exif[0x0112] = orientation
    raw = exif.tobytes()
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", "\nexif\n%8d\n%s\n" % (len(raw), raw.hex()))
    return u.encode(Image.fromarray(rgb), "PNG", pnginfo=info)


def _png_with_exif(rgb: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return u.encode(Image.fromarray(rgb), "PNG", exif=exif)


def _tiff_oriented(rgb: np.ndarray, orientation: int) -> bytes:
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = orientation
    return u.encode(img, "TIFF", exif=exif)


def encoded_corpus() -> dict[str, bytes]:
    """name → encoded file."""
    rgb = textured(150, 200, 7)
    small = textured(10, 12, 3)
    grey = textured(120, 90, 4)[..., 0]
    rgba = np.dstack([textured(96, 128, 5), np.tile(np.linspace(0, 255, 128, dtype=np.uint8), (96, 1))])
    la = np.dstack([grey[:96, :80], np.full((96, 80), 90, np.uint8)])
    pal = Image.fromarray(rgb).quantize(64)
    pal_trns = pal.copy()
    pal_trns.info["transparency"] = 3
    png = _png(rgb)
    jpg = _jpeg(rgb)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    out = {
        "jpeg": jpg,
        "jpeg-444": _jpeg(rgb, subsampling=0),
        "jpeg-grey": _jpeg(grey),
        "jpeg-progressive": _jpeg(rgb, progressive=True),
        "jpeg-exif-rot90": _with_exif_orientation(jpg, 6),
        "jpeg-exif-mirror": _with_exif_orientation(jpg, 2),
        "jpeg-xmp-rot90": _with_xmp_orientation(jpg, 6),
        # two EXIF blocks: nvImageCodec's EXIF orientation crashed the process on this one
        "jpeg-exif-twice": _with_exif_orientation(_with_exif_orientation(jpg, 3), 6),
        "jpeg-exif-bad-directory": jpg[:2] + b"\xff\xe1\x00\x18Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x13\x88"
                                   b"\x01\x12\x00\x03" + jpg[2:],
        "png-exif-rot90": _png_with_exif(rgb, 6),
        "png-raw-profile-exif-rot90": _png_with_raw_profile_exif(rgb, 6),
        "jpeg-cmyk": u.encode(cmyk, "JPEG", quality=92),
        "jpeg-small": _jpeg(small),
        "png": png,
        "png-small": _png(small),
        "png-grey": _png(grey),
        "png-palette": u.encode(pal, "PNG"),
        "png-palette-trns": u.encode(pal_trns, "PNG"),
        "png-rgba": _png(rgba),
        "png-grey-alpha": _png(la, "LA"),
        "png-16bit": cv2.imencode(".png", (rgb.astype(np.uint16) * 257)[..., ::-1])[1].tobytes(),
        "png-no-iend": png[: png.rfind(b"IEND") - 4],
        "webp": cv2.imencode(".webp", rgb[..., ::-1], [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes(),
        "bmp": cv2.imencode(".bmp", rgb[..., ::-1])[1].tobytes(),
        "gif": u.encode(pal, "GIF"),
        "tiff-orientation-6": _tiff_oriented(rgb, 6),
        # hostile: refused from their structure by every executor
        "jpeg-11000x9000-in-702-bytes": u.jpeg_with_size(11000, 9000, keep=700),
        "jpeg-ends-early-with-eoi": _cut_scan(jpg, 40),
        "jpeg-3000-scans": u.jpeg_many_scans(3000, side=256),
        "png-deflate-bomb": u.png_deflate_bomb(256),
        "png-idat-says-4gb": u.png_idat_says_4gb(),
        "png-header-only-30000x30000": u.png_header_only(30000, 30000),
        "apng-12k-frames": u.apng_many_frames(12_000),
        "apng-unknown-chunk-crashes-opencv": APNG_UNKNOWN_CHUNK,
        "avif-grid-16384-behind-1024-ispe": u.avif_grid(),
        "jpeg2000-65535-tiles": u.jp2_tiles(),
        "jpeg-arithmetic-8-bytes": u.jpeg_arithmetic(),
        "tiff-strip-150-scan-jpeg": u.tiff_jpeg_strip(),
        "garbage": b"this is not an image at all",
        "empty": b"",
    }
    return out


def build_inputs(folder: Path) -> dict[str, object]:
    """name → one input of every kind: each encoded file as a path and as bytes, plus arrays, a
    PIL image, non-regular and missing paths, and an unsupported object."""
    folder.mkdir(parents=True, exist_ok=True)
    inputs: dict[str, object] = {}
    for name, data in encoded_corpus().items():
        path = folder / f"{name}.img"
        path.write_bytes(data)
        inputs[f"path:{name}"] = str(path)
        inputs[f"bytes:{name}"] = data
    fifo = folder / "fifo.jpg"
    os.mkfifo(fifo)
    inputs["path:fifo"] = str(fifo)
    inputs["path:directory"] = str(folder)
    inputs["path:missing"] = str(folder / "missing.png")
    rgb = textured(80, 100, 9)
    inputs["array:rgb"] = rgb
    inputs["array:grey"] = rgb[..., 1].copy()
    inputs["array:rgba"] = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    inputs["array:uint16"] = rgb.astype(np.uint16) * 257
    inputs["array:float32"] = rgb.astype(np.float32)
    inputs["array:tiny"] = rgb[:5, :7].copy()
    inputs["pil:rgb"] = Image.fromarray(rgb)
    inputs["pil:file-backed-jpeg"] = Image.open(io.BytesIO(_jpeg(rgb)))
    inputs["object:int"] = 42
    return inputs
