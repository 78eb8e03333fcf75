"""load_image: every input kind, orientation, bit depth, and refusal of bad or huge inputs."""
from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from nsnet_sdk.errors import ImageDecodeError, ImageTooLargeError, NSNetError
from nsnet_sdk.pipeline import image_size, load_image

from _decode_util import png_header_only


def photo(h=60, w=90, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1)
    return np.clip(img + rng.integers(-5, 6, (h, w, 3)), 0, 255).astype(np.uint8)


def encode(pil: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    pil.save(buf, fmt, **kw)
    return buf.getvalue()


def test_every_input_kind_gives_the_same_pixels(tmp_path):
    rgb = photo()
    png = encode(Image.fromarray(rgb), "PNG")
    path = tmp_path / "a.png"
    path.write_bytes(png)
    for src in (rgb, png, bytearray(png), memoryview(png), str(path), path, Image.fromarray(rgb)):
        out = load_image(src)
        assert out.dtype == np.uint8 and out.flags.c_contiguous
        np.testing.assert_array_equal(out, rgb)


def test_array_variants():
    rgb = photo()
    gray = rgb[:, :, 0]
    np.testing.assert_array_equal(load_image(gray), np.repeat(gray[:, :, None], 3, 2))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    np.testing.assert_array_equal(load_image(rgba), rgb)  # opaque alpha: colours unchanged
    u16 = rgb.astype(np.uint16) * 257
    np.testing.assert_array_equal(load_image(u16), rgb)
    with pytest.raises(ImageDecodeError):
        load_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ImageDecodeError):
        load_image(np.zeros((4, 4, 3), np.int64))


def test_sixteen_bit_png_is_scaled_not_truncated():
    rgb = photo()
    u16 = rgb.astype(np.uint16) * 257 + 100  # low byte set: truncation would differ from scaling
    ok, enc = cv2.imencode(".png", u16[:, :, ::-1])
    assert ok
    out = load_image(enc.tobytes())
    np.testing.assert_array_equal(out, np.round(u16 / 257.0).astype(np.uint8))


def test_grayscale_rgba_webp_bmp_tiff_files():
    rgb = photo()
    gray = Image.fromarray(rgb).convert("L")
    np.testing.assert_array_equal(load_image(encode(gray, "PNG")), np.repeat(np.asarray(gray)[:, :, None], 3, 2))
    rgba = Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]))
    np.testing.assert_array_equal(load_image(encode(rgba, "PNG")), rgb)
    np.testing.assert_array_equal(load_image(encode(Image.fromarray(rgb), "WEBP", lossless=True)), rgb)
    np.testing.assert_array_equal(load_image(encode(Image.fromarray(rgb), "BMP")), rgb)
    np.testing.assert_array_equal(load_image(encode(Image.fromarray(rgb), "TIFF")), rgb)


def test_cmyk_jpeg_is_converted_to_rgb():
    rgb = photo()
    data = encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)
    out = load_image(data)
    assert out.shape == rgb.shape
    want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    assert np.abs(out.astype(int) - want).mean() < 4


def test_exif_orientation_is_applied():
    rgb = photo(40, 100)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = encode(Image.fromarray(rgb), "JPEG", quality=95, exif=exif.tobytes())
    out = load_image(data)
    assert out.shape == (100, 40, 3)
    want = np.rot90(rgb, k=-1)
    assert np.abs(out.astype(int) - want.astype(int)).mean() < 4
    pil = Image.open(io.BytesIO(data))
    assert np.abs(load_image(pil).astype(int) - want.astype(int)).mean() < 4


def test_first_frame_of_animated_gif_and_multipage_tiff():
    frames = [Image.fromarray(np.full((32, 48, 3), v, np.uint8)) for v in (10, 200, 90)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = load_image(gif.getvalue())
    assert out.shape == (32, 48, 3) and abs(int(out.mean()) - 10) <= 2
    tif = io.BytesIO()
    frames[1].save(tif, "TIFF", save_all=True, append_images=[frames[0], frames[2]])
    out = load_image(tif.getvalue())
    assert out.shape == (32, 48, 3) and np.all(out == 200)


@pytest.mark.parametrize(
    "data,what",
    [
        (b"", "empty"),
        (b"hello, this is text and not an image at all", "text"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>', "svg"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 10, "truncated jpeg"),
    ],
)
def test_bad_bytes_raise_decode_error(data, what):
    with pytest.raises(ImageDecodeError) as e:
        load_image(data, name=f"input-{what}")
    assert f"input-{what}" in str(e.value) and e.value.source == f"input-{what}"


def test_truncated_files_raise_decode_error(tmp_path):
    rgb = photo(200, 200)
    for fmt in ("JPEG", "PNG"):
        data = encode(Image.fromarray(rgb), fmt)
        p = tmp_path / f"cut.{fmt.lower()}"
        p.write_bytes(data[: len(data) // 3])
        with pytest.raises(ImageDecodeError) as e:
            load_image(p)
        assert str(p) in str(e.value)


def test_paths_that_are_not_image_files(tmp_path):
    with pytest.raises(ImageDecodeError, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageDecodeError, match="directory"):
        load_image(tmp_path)
    txt = tmp_path / "notes.jpg"
    txt.write_text("just text")
    with pytest.raises(ImageDecodeError, match="notes.jpg"):
        load_image(txt)
    with pytest.raises(ImageDecodeError):
        load_image(12345)


def test_header_sizes_are_read_without_decoding():
    rgb = photo(33, 77)
    for fmt, kw in (("PNG", {}), ("JPEG", {}), ("GIF", {}), ("BMP", {}), ("TIFF", {}), ("WEBP", {}),
                    ("WEBP", {"lossless": True}), ("PPM", {})):
        info = image_size(encode(Image.fromarray(rgb), fmt, **kw))
        assert info is not None and info[1:] == (77, 33), (fmt, kw, info)
    assert image_size(b"not an image") is None
    for ext in (".avif", ".jp2"):  # formats Pillow may not write: encode with OpenCV
        ok, enc = cv2.imencode(ext, rgb[:, :, ::-1])
        assert ok, ext
        assert image_size(enc.tobytes())[1:] == (77, 33), ext
        np.testing.assert_allclose(load_image(enc.tobytes()).astype(int), rgb.astype(int), atol=40)


def test_avif_and_jpeg2000_headers_guard_memory_too():
    rgb = photo(33, 77)
    ok, enc = cv2.imencode(".jp2", rgb[:, :, ::-1])
    data = bytearray(enc.tobytes())
    i = data.find(b"ihdr")
    data[i + 4 : i + 12] = struct.pack(">II", 40000, 40000)  # claim 40000×40000
    with pytest.raises(ImageTooLargeError, match="40000x40000"):
        load_image(bytes(data))
    ok, enc = cv2.imencode(".avif", rgb[:, :, ::-1])
    data = bytearray(enc.tobytes())
    i = data.find(b"ispe")
    data[i + 8 : i + 16] = struct.pack(">II", 40000, 40000)
    with pytest.raises(ImageTooLargeError, match="40000x40000"):
        load_image(bytes(data))


def test_decompression_bomb_refused_before_allocation():
    bomb = png_header_only(30000, 30000)
    with pytest.raises(ImageTooLargeError, match="30000x30000"):
        load_image(bomb)
    assert issubclass(ImageTooLargeError, NSNetError)
    # In a fresh process, peak memory stays far below the 2.7 GB the header asks for.
    code = (
        "import resource, sys\n"
        "from nsnet_sdk.pipeline import load_image\n"
        "from nsnet_sdk.errors import ImageTooLargeError\n"
        f"data = {bomb!r}\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    load_image(data)\nexcept ImageTooLargeError:\n    pass\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    grown_kb = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert grown_kb < 50_000
    # Within the limit, a header-only file is a decode error, not a crash.
    with pytest.raises(ImageDecodeError):
        load_image(png_header_only(64, 64))


def test_max_pixels_is_configurable():
    data = encode(Image.fromarray(photo(100, 100)), "PNG")
    with pytest.raises(ImageTooLargeError):
        load_image(data, max_pixels=9_999)
    assert load_image(data, max_pixels=10_000).shape == (100, 100, 3)
    with pytest.raises(ImageTooLargeError):
        load_image(photo(100, 100), max_pixels=100)


def test_unopenable_path_names_are_decode_errors():
    for bad in ("with\x00nul.png", "lone\udcffsurrogate.png"):
        with pytest.raises(ImageDecodeError):
            load_image(bad)
