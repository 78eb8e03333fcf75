"""Bombs and slow files in every accepted format are refused from their structure: each costs less
than 50 MB of memory growth and less than a second, measured in a fresh process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

# name → (builder expression over tests/_decode_util as `u`, expected error class, message part)
CASES = {
    # memory: a small file declaring a huge allocation
    "png-idat-length-4gb": ("u.png_idat_says_4gb()", "ImageDecodeError", "declares 4,294,967,040 bytes"),
    "png-size": ("u.png_header_only(30000, 30000)", "ImageTooLargeError", "30000x30000"),
    "jpeg-size": ("u.jpeg_with_size(60000, 60000)", "ImageTooLargeError", "60000x60000"),
    "gif-frame-outside-screen": ("u.gif_frame_outside_screen(65535, 65535)", "ImageTooLargeError", "65535x65535"),
    "webp-canvas": ("u.webp_canvas(16384, 16384)", "ImageTooLargeError", "16384x16384"),
    "bmp-rle-size": ("u.bmp_rle_with_size(50000, 50000)", "ImageTooLargeError", "50000x50000"),
    "bmp-header-only": ("u.bmp_header_only(9000, 9000)", "ImageDecodeError", "truncated"),
    "tiff-duplicate-size-tags": ("u.tiff_duplicate_size((20000, 20000), (64, 64))", "ImageDecodeError",
                                 "repeats the ImageWidth tag"),
    "tiff-huge-tiles": ("u.tiff_tiles((64, 64), (16384, 12288))", "ImageDecodeError", "tiles of 16384x12288"),
    "tiff-size": ("u.tiff_size(40000, 40000)", "ImageTooLargeError", "40000x40000"),
    "pnm-header-only": ("u.pnm_header_only(9000, 9000)", "ImageDecodeError", "truncated"),
    "pnm-size": ("u.pnm_header_only(50000, 50000)", "ImageTooLargeError", "50000x50000"),
    "avif-ispe": ("u.avif_with_ispe(40000, 40000)", "ImageTooLargeError", "40000x40000"),
    "jpeg2000-codestream-size": ("u.jp2_with_siz(40000, 40000)", "ImageTooLargeError", "40000x40000"),
    "jpeg2000-allocation": ("u.jp2_with_siz(9000, 9000)", "ImageTooLargeError", "would allocate"),
    "jpeg2000-components": ("u.jp2_with_siz(64, 64, components=16384)", "ImageDecodeError", "16384 components"),
    "avif-grid-canvas": ("u.avif_grid(16384, 1024)", "ImageTooLargeError", "16384x16384"),
    "jpeg2000-65535-tiles": ("u.jp2_tiles(255, 257, 1)", "ImageTooLargeError", "would allocate"),
    # time: a small file declaring thousands of passes, frames or pages
    "jpeg-3000-scans": ("u.jpeg_many_scans(3000)", "ImageDecodeError", "more than 100 scans"),
    "png-deflate-bomb": ("u.png_deflate_bomb(256)", "ImageDecodeError", "inflates beyond"),
    "png-150k-chunks": ("u.png_many_chunks(150_000)", "ImageDecodeError", "more than 100,000 chunks"),
    "apng-12k-frames": ("u.apng_many_frames(12_000)", "ImageDecodeError", "more than 10,000"),
    "gif-20k-frames": ("u.gif_many_frames(20_000)", "ImageDecodeError", "more than 10,000 frames"),
    "tiff-12k-pages": ("u.tiff_many_pages(12_000)", "ImageDecodeError", "more than 10,000 pages"),
    "tiff-jpeg-strip-150-scans": ("u.tiff_jpeg_strip(150)", "ImageDecodeError", "more than 100 scans"),
    # truncation: the 11000x9000 JPEG carrying 700 bytes
    "jpeg-truncated-700-bytes": ("u.jpeg_with_size(11000, 9000, keep=700)", "ImageDecodeError", "truncated"),
    "jpeg-arithmetic-8-bytes": ("u.jpeg_arithmetic(10000, 10000, 8)", "ImageDecodeError", "truncated"),
}

_RUNNER = r"""
import json, resource, sys, time
import _decode_util as u
from nsnet_sdk.pipeline import load_image
for name, expr in json.loads(sys.argv[1]).items():
    data = eval(expr)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    try:
        load_image(data, name=name)
        err, msg = None, ""
    except Exception as e:
        err, msg = type(e).__name__, str(e)
    print(json.dumps({"name": name, "seconds": time.perf_counter() - t, "bytes": len(data),
                      "grown_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before,
                      "error": err, "message": msg}), flush=True)
"""


@pytest.fixture(scope="module")
def outcomes() -> dict[str, dict]:
    """Every case decoded once, in one fresh process (peak RSS is measured around each call)."""
    exprs = {name: expr for name, (expr, _, _) in CASES.items()}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(exprs)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {r["name"]: r for r in rows}


@pytest.mark.parametrize("name", list(CASES))
def test_bomb_is_refused_at_baseline_memory_and_quickly(outcomes, name):
    _, error, message = CASES[name]
    assert name in outcomes, f"{name}: the measuring process died before reporting this case"
    r = outcomes[name]
    assert r["error"] == error and message in r["message"], r
    assert name in r["message"]  # the error names its input
    assert r["grown_kb"] < 50_000, f"{name}: memory grew by {r['grown_kb'] // 1024} MB"
    assert r["seconds"] < 1.0, f"{name}: took {r['seconds']:.2f} s"
    assert r["bytes"] < 2_000_000  # the point: a small file
