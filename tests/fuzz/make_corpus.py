"""Writes the fuzzing seed corpus: one small file per format and variant `load_image` accepts,
and one small hostile file per limit it enforces.

Usage, from the repository root: ``PYTHONPATH=$PWD:$PWD/tests python tests/fuzz/make_corpus.py
OUT_DIR``. Each file gets a leading selector byte for
the harness (even: bytes path, odd: Pillow path); both variants are written. With
``--provenance``: the metadata seeds for `fuzz_provenance.py` instead (no selector byte).
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def _pil(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def seeds() -> dict[str, bytes]:
    """name → encoded image, every format and the odd variants the decoders branch on."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 40, 3), np.uint8)
    img = Image.fromarray(rgb)
    rgba = Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (24, 40), np.uint8)]))
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [Image.fromarray(np.full((16, 16, 3), v, np.uint8)) for v in (0, 120, 250)]
    out = {
        "baseline.jpg": _pil(img, "JPEG", quality=80),
        "progressive.jpg": _pil(img, "JPEG", progressive=True, exif=exif.tobytes()),
        "cmyk.jpg": _pil(img.convert("CMYK"), "JPEG"),
        "gray.jpg": _pil(img.convert("L"), "JPEG"),
        "rgb.png": _pil(img, "PNG"),
        "rgba.png": _pil(rgba, "PNG"),
        "palette.png": _pil(img.quantize(8), "PNG", transparency=2),
        "interlaced.png": _pil(img, "PNG", interlace=1),
        "apng.png": _pil(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "anim.gif": _pil(frames[0], "GIF", save_all=True, append_images=frames[1:], transparency=0),
        "lossy.webp": _pil(img, "WEBP"),
        "lossless.webp": _pil(rgba, "WEBP", lossless=True),
        "anim.webp": _pil(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
        "rgb.bmp": _pil(img, "BMP"),
        "palette.bmp": _pil(img.quantize(16), "BMP"),
        "strips.tif": _pil(img, "TIFF"),
        "tiled.tif": _pil(img, "TIFF", tile=(16, 16)) if _tiles_ok() else _pil(img, "TIFF"),
        "lzw.tif": _pil(rgba, "TIFF", compression="tiff_lzw"),
        "pages.tif": _pil(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        "bilevel.pbm": _pil(img.convert("1"), "PPM"),
        "gray.pgm": _pil(img.convert("L"), "PPM"),
        "rgb.ppm": _pil(img, "PPM"),
        "ascii.ppm": b"P3\n2 2\n255\n0 0 0 255 0 0\n0 255 0 0 0 255\n",
        "ascii.pbm": b"P1\n3 2\n0 1 0\n1 0 1\n",
    }
    for ext in (".avif", ".jp2"):
        ok, enc = cv2.imencode(ext, rng.integers(0, 256, (64, 64, 3), np.uint8))
        if ok:
            out["opencv" + ext] = enc.tobytes()
    try:
        out["rotated.avif"] = _pil(img, "AVIF", exif=exif.tobytes())
    except (KeyError, OSError, ValueError):
        pass
    return out


def hostile_seeds() -> dict[str, bytes]:
    """Small refused files (tests/_decode_util.py, so tests/ must be on PYTHONPATH), so that
    mutations start next to every limit."""
    import _decode_util as u
    from test_decode_fuzz_findings import APNG_MISORDERED, APNG_SEGFAULT

    apng = {f"apng-{k.replace(' ', '-')}.png": v for k, v in APNG_MISORDERED.items()}
    return {**apng, "idat-4gb.png": u.png_idat_says_4gb(), "apng-segfault.png": APNG_SEGFAULT,
            "jpeg-700-bytes.jpg": u.jpeg_with_size(11000, 9000, keep=700),
            "jpeg-200-scans.jpg": u.jpeg_many_scans(200, side=64),
            "gif-outside.gif": u.gif_frame_outside_screen(), "webp-canvas.webp": u.webp_canvas(16384, 16384),
            "bmp-rle.bmp": u.bmp_rle_with_size(50000, 50000), "pnm-short.ppm": u.pnm_header_only(900, 900),
            "tiff-dup.tif": u.tiff_duplicate_size((20000, 20000), (16, 16)),
            "tiff-tiles.tif": u.tiff_tiles((64, 64), (16384, 12288)),
            "tiff-pages.tif": u.tiff_many_pages(20), "avif-ispe.avif": u.avif_with_ispe(40000, 40000),
            "jp2-siz.jp2": u.jp2_with_siz(40000, 40000)}


def provenance_seeds() -> dict[str, bytes]:
    """Small files carrying each kind of metadata the provenance walk reads, in every container."""
    import struct
    import zlib

    from benchmarks.provenance_samples import jpeg_bytes, jpeg_with_app1, png_bytes, png_chunk, png_with, xmp_packet

    ai = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
    xmp = "http://ns.adobe.com/xap/1.0/\x00".encode("latin-1")
    exif = (b"II*\x00\x08\x00\x00\x00\x01\x00" + struct.pack("<HHI", 0x0131, 2, 10) + struct.pack("<I", 26)
            + b"\x00\x00\x00\x00" + b"Midjourney")
    small_png, small_jpg = png_bytes(size=8), jpeg_bytes(size=8)
    tiff_info = {305: "DALL-E", 700: xmp_packet(ai)}
    img = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    return {
        "xmp-attr.jpg": jpeg_with_app1(xmp + xmp_packet(ai), small_jpg),
        "xmp-elem.jpg": jpeg_with_app1(xmp + xmp_packet(ai, attribute=False, tool="ComfyUI"), small_jpg),
        "exif.jpg": jpeg_with_app1(b"Exif\x00\x00" + exif, small_jpg),
        "c2pa.jpg": small_jpg[:2] + b"\xff\xeb\x00\x14JP\x00\x01jumb\x00\x00c2pa\x00\x00" + small_jpg[2:],
        "text.png": png_with(png_chunk(b"tEXt", b"parameters\x00steps: 20"), base=small_png),
        "ztxt.png": png_with(png_chunk(b"zTXt", b"prompt\x00\x00" + zlib.compress(b"{}")), base=small_png),
        "itxt-xmp.png": png_with(png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp_packet(ai)),
                                 base=small_png),
        "exif.png": png_with(png_chunk(b"eXIf", exif), png_chunk(b"caBX", b"jumb"), base=small_png),
        "xmp.webp": _pil(img, "WEBP", xmp=xmp_packet(ai, attribute=False)),
        "exif.webp": _pil(img, "WEBP", exif=b"Exif\x00\x00" + exif),
        "tags.tif": _pil(img, "TIFF", tiffinfo=tiff_info),
    }


def _tiles_ok() -> bool:
    try:
        _pil(Image.new("RGB", (16, 16)), "TIFF", tile=(16, 16))
        return True
    except (TypeError, ValueError, OSError):
        return False


def write(out_dir: str | Path) -> list[Path]:
    """Write every seed twice (selector byte 0 and 1) under ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in {**seeds(), **hostile_seeds()}.items():
        for sel in (0, 1):
            p = out / f"{sel}-{name}"
            p.write_bytes(bytes([sel]) + data)
            paths.append(p)
    return paths


def write_provenance(out_dir: str | Path) -> list[Path]:
    """Write the provenance seeds under ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in provenance_seeds().items():
        (out / name).write_bytes(data)
        paths.append(out / name)
    return paths


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--provenance"]
    if len(args) != 1:
        sys.exit("usage: python tests/fuzz/make_corpus.py [--provenance] OUT_DIR")
    paths = write_provenance(args[0]) if "--provenance" in sys.argv else write(args[0])
    print(f"wrote {len(paths)} seeds to {args[0]}")
