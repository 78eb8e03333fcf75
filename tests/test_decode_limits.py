"""Limits a format could lie past: each file below declares one cost in the field a naive reader
checks and carries another where the decoder looks (a grid's canvas, tile count, arithmetic-coded
data, a JPEG inside a TIFF strip, metadata segments), or spends memory outside the decoder (alpha
flattening). Each is refused, or decoded within the budget, by the same checks as every other
file."""
from __future__ import annotations

import tracemalloc

import _decode_util as u
import numpy as np
import pytest
from PIL import Image

from nsnet_sdk.errors import ImageDecodeError, ImageTooLargeError
from nsnet_sdk.pipeline import load_image
from nsnet_sdk.pipeline.orient import flatten_alpha
from nsnet_sdk.pipeline.sniff import read_header


def test_avif_grid_canvas_is_taken_from_the_grid_not_the_ispe():
    hdr = read_header(u.avif_grid(16384, 1024))
    assert (hdr.width, hdr.height) == (16384, 16384)
    with pytest.raises(ImageTooLargeError, match="16384x16384"):
        load_image(u.avif_grid(16384, 1024))


def test_jpeg2000_tile_count_is_part_of_the_allocation():
    """65,535 tiles of one pixel on a 255x257 image: 76 bytes that cost OpenJPEG 898 MB."""
    with pytest.raises(ImageTooLargeError, match="would allocate"):
        load_image(u.jp2_tiles(255, 257, 1))
    assert load_image(u.jp2_tiles(64, 64, 64)).shape == (64, 64, 3)  # one tile: the usual layout


@pytest.mark.parametrize("sof", [0xC9, 0xCA])
def test_arithmetic_coded_jpeg_with_almost_no_data_is_truncated(sof):
    data = bytearray(u.jpeg_arithmetic(10000, 10000, 8))
    data[data.find(b"\xff\xc9") + 1] = sof  # SOF9 sequential, SOF10 progressive
    with pytest.raises(ImageDecodeError, match="truncated.*arithmetic"):
        load_image(bytes(data))


def test_a_jpeg_strip_inside_a_tiff_is_held_to_the_jpeg_scan_limit():
    with pytest.raises(ImageDecodeError, match="more than 100 scans"):
        load_image(u.tiff_jpeg_strip(150))


def test_a_pillow_written_jpeg_tiff_still_decodes():
    rgb = u.noise(48, 64)
    got = load_image(u.encode(Image.fromarray(rgb), "TIFF", compression="jpeg"))
    assert got.shape == rgb.shape and np.abs(got.astype(int) - rgb).mean() < 40


def test_jpeg_metadata_segments_count_against_the_decode_budget():
    """10 MB of APP segments in a 64x64 JPEG: OpenCV copies them (630 MB cost 2.39 GB), so at a
    1 Mpx limit (a 24 MB budget) the file is too large although its pixels are not."""
    with pytest.raises(ImageTooLargeError, match="would allocate"):
        load_image(u.jpeg_with_app_segments(10 << 20), max_pixels=1_000_000)
    assert load_image(u.jpeg_with_app_segments(64 << 10), max_pixels=1_000_000).shape == (64, 64, 3)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_png_and_webp_metadata_count_against_the_decode_budget(fmt):
    """The same class in the other containers OpenCV reads metadata from: 10 MB of text / EXIF."""
    from PIL import PngImagePlugin

    img = Image.fromarray(u.noise(64, 64))
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        for k in range(10):
            info.add_text(f"k{k}", "x" * (1 << 20))
        big, small = u.encode(img, "PNG", pnginfo=info), u.encode(img, "PNG")
    else:
        big, small = u.encode(img, "WEBP", exif=b"Exif\x00\x00" + b"\x00" * (10 << 20)), u.encode(img, "WEBP")
    with pytest.raises(ImageTooLargeError, match="would allocate"):
        load_image(big, max_pixels=1_000_000)
    assert load_image(small, max_pixels=1_000_000).shape == (64, 64, 3)


@pytest.mark.parametrize("premultiplied", [False, True])
def test_alpha_flattening_allocates_little_beyond_its_output(premultiplied):
    """Whole-image uint16 temporaries made a 100 Mpx RGBA cost 2.6 GB; flattening now allocates
    its RGB output and block-sized temporaries only (numpy reports every array to tracemalloc),
    with the exact same pixels as the formula applied to the whole image."""
    rgba = np.random.default_rng(1).integers(0, 256, (2000, 1500, 4), np.uint8)
    tracemalloc.start()
    try:
        out = flatten_alpha(rgba, premultiplied)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * out.nbytes
    a, c = rgba[:, :, 3:4].astype(np.uint16), rgba[:, :, :3].astype(np.uint16)
    want = np.minimum(c + (255 - a), 255) if premultiplied else (c * a + 255 * (255 - a) + 127) // 255
    np.testing.assert_array_equal(out, want.astype(np.uint8))
