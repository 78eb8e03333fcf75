"""`load_image` agrees with Pillow as a reference decoder: orientation (EXIF, XMP, TIFF tag, AVIF
irot/imir), transparency (composited over white), and files only Pillow can decode."""
from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image, ImageOps, PngImagePlugin, features

from nsnet_sdk.errors import ImageDecodeError
from nsnet_sdk.pipeline import load_image

from _decode_util import encode, noise


def pillow_reference(data: bytes) -> np.ndarray:
    """What a careful Pillow user gets: orientation applied, transparency composited over white."""
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, img.convert("RGBA")).convert("RGB"))
    if img.mode == "F":
        return np.repeat(np.clip(np.asarray(img) * 255 + 0.5, 0, 255).astype(np.uint8)[:, :, None], 3, 2)
    return np.asarray(img.convert("RGB"))


def assert_agrees(data: bytes, tol: float = 0.0) -> None:
    want = pillow_reference(data)
    got = load_image(data)
    assert got.shape == want.shape
    diff = np.abs(got.astype(int) - want.astype(int))
    if tol == 0:
        assert diff.max() <= 1, diff.max()  # compositing may round differently by one level
    else:
        assert diff.mean() < tol, diff.mean()  # lossy codecs: the two libraries' decoders differ slightly


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _xmp(orientation: int) -> str:
    return ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
            f'tiff:Orientation="{orientation}"/></rdf:RDF></x:xmpmeta>')


ORIENTATIONS = range(1, 9)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_exif_orientation_in_every_container(orientation):
    img = Image.fromarray(noise(30, 50))
    rgba = Image.fromarray(np.dstack([noise(30, 50), noise(30, 50, seed=1)[:, :, 0]]))
    assert_agrees(encode(img, "PNG", exif=_exif(orientation)))
    assert_agrees(encode(rgba, "PNG", exif=_exif(orientation)))
    assert_agrees(encode(img, "WEBP", lossless=True, exif=_exif(orientation)))
    assert_agrees(encode(rgba, "WEBP", lossless=True, exif=_exif(orientation)))
    assert_agrees(encode(img, "JPEG", quality=95, exif=_exif(orientation)), tol=3)
    assert_agrees(encode(img, "TIFF", exif=_exif(orientation)))
    assert_agrees(encode(rgba, "TIFF", exif=_exif(orientation)))


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_xmp_orientation_applies_when_exif_has_none(orientation):
    img = Image.fromarray(noise(30, 50))
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", _xmp(orientation))
    assert_agrees(encode(img, "PNG", pnginfo=info))
    # EXIF wins over XMP, as in Pillow
    assert_agrees(encode(img, "PNG", pnginfo=info, exif=_exif(1 if orientation != 1 else 6)))


@pytest.mark.skipif(not features.check("avif"), reason="Pillow built without AVIF")
@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_avif_irot_imir_are_applied(orientation):
    # Pillow writes an EXIF orientation as the container's irot/imir properties.
    data = encode(Image.fromarray(noise(32, 48)), "AVIF", quality=100, exif=_exif(orientation))
    assert_agrees(data, tol=6)


ALPHA_CASES = {
    "png-rgba": lambda im, a: encode(Image.fromarray(np.dstack([im, a])), "PNG"),
    "png-la": lambda im, a: encode(Image.fromarray(np.dstack([im, a])).convert("LA"), "PNG"),
    "png-palette-transparency": lambda im, a: encode(Image.fromarray(im).quantize(16), "PNG", transparency=3),
    "webp-rgba": lambda im, a: encode(Image.fromarray(np.dstack([im, a])), "WEBP", lossless=True),
    "gif-transparency": lambda im, a: encode(Image.fromarray(im).quantize(16), "GIF", transparency=3),
    "tiff-rgba": lambda im, a: encode(Image.fromarray(np.dstack([im, a])), "TIFF"),
}


@pytest.mark.parametrize("kind", list(ALPHA_CASES))
def test_transparency_is_composited_over_white_like_pillow(kind):
    im, a = noise(30, 50), noise(30, 50, seed=2)[:, :, 0]
    a[:5] = 0  # some fully transparent rows: their hidden colour must not show
    a[5:10] = 255
    data = ALPHA_CASES[kind](im, a)
    assert_agrees(data)
    # the Pillow input path follows the same rule
    np.testing.assert_array_equal(load_image(Image.open(io.BytesIO(data))), load_image(data))


def test_sixteen_bit_rgba_png_is_composited_over_white():
    cv2 = pytest.importorskip("cv2")
    im, a = noise(20, 30).astype(np.uint16) * 257, noise(20, 30, seed=3)[:, :, 0].astype(np.uint16) * 257
    ok, enc = cv2.imencode(".png", np.dstack([im[:, :, ::-1], a]))
    assert_agrees(enc.tobytes())


def test_rgba_array_follows_the_same_rule():
    im, a = noise(10, 12), noise(10, 12, seed=4)[:, :, 0]
    want = pillow_reference(encode(Image.fromarray(np.dstack([im, a])), "PNG"))
    np.testing.assert_array_equal(load_image(np.dstack([im, a])), want)


ODD_FILES = {
    "tiff-float": lambda im: encode(Image.fromarray(im[:, :, 0].astype(np.float32) / 255), "TIFF"),
    "tiff-int32": lambda im: encode(Image.fromarray(im[:, :, 0].astype(np.int32) * 100), "TIFF"),
    "tiff-1bit-group4": lambda im: encode(Image.fromarray(im).convert("1"), "TIFF", compression="group4"),
    "tiff-ycbcr-jpeg": lambda im: encode(Image.fromarray(im), "TIFF", compression="jpeg"),
    "tiff-tiled": lambda im: encode(Image.fromarray(im), "TIFF", tiffinfo={322: 16, 323: 16}),
    "tiff-palette": lambda im: encode(Image.fromarray(im).quantize(16), "TIFF"),
    "bmp-1bit": lambda im: encode(Image.fromarray(im).convert("1"), "BMP"),
    "bmp-palette": lambda im: encode(Image.fromarray(im).quantize(16), "BMP"),
    "png-1bit": lambda im: encode(Image.fromarray(im).convert("1"), "PNG"),
    "gif-gray": lambda im: encode(Image.fromarray(im).convert("L"), "GIF"),
    "pbm": lambda im: encode(Image.fromarray(im).convert("1"), "PPM"),
}


@pytest.mark.parametrize("kind", list(ODD_FILES))
def test_odd_files_decode_like_pillow(kind):
    data = ODD_FILES[kind](noise(40, 60))
    if kind == "tiff-int32":  # Pillow's "I" → RGB clips at 255; both sides read 16-bit data scaled
        got = load_image(data)
        want = np.clip(np.asarray(Image.open(io.BytesIO(data))), 0, 65535)
        want = ((want.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        np.testing.assert_array_equal(got, np.repeat(want[:, :, None], 3, 2))
        return
    assert_agrees(data, tol=3 if "jpeg" in kind else 0)


def test_pillow_fallback_stays_behind_the_limits():
    data = ODD_FILES["tiff-float"](noise(40, 60))  # OpenCV cannot decode float TIFF
    from nsnet_sdk.errors import ImageTooLargeError

    with pytest.raises(ImageTooLargeError):
        load_image(data, max_pixels=40 * 60 - 1)


def test_without_pillow_the_opencv_error_stands(monkeypatch):
    data = ODD_FILES["tiff-float"](noise(40, 60))
    assert load_image(data).shape == (40, 60, 3)  # decoded through Pillow
    monkeypatch.setitem(sys.modules, "PIL", None)  # `from PIL import Image` now fails
    with pytest.raises(ImageDecodeError, match="cannot decode tiff"):
        load_image(data)
