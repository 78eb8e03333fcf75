"""Well-formed TIFF variants that Pillow (and often OpenCV) decode and that the checks used to
refuse: BigTIFF, 12-bit greyscale, signed 8- and 16-bit samples, planar configuration with an alpha
plane. Each is generated here (numpy + struct) and must decode to the pixels it holds, behind the
same structural checks and budget as any TIFF."""
from __future__ import annotations

import numpy as np
import pytest
from _decode_util import noise, pack_bits, tiff_raw

from nsnet_sdk.errors import ImageDecodeError, ImageTooLargeError
from nsnet_sdk.pipeline import load_image
from nsnet_sdk.pipeline.sniff import read_header

W, H = 40, 30


def _rgb_tags(spp: int = 3, bits: int = 8, planar: int = 1) -> list:
    return [(256, 4, [W]), (257, 4, [H]), (258, 3, [bits] * spp), (259, 3, [1]), (262, 3, [2]),
            (277, 3, [spp]), (278, 4, [H]), (284, 3, [planar])]


def _grey_tags(bits: int, signed: bool = False) -> list:
    tags = [(256, 4, [W]), (257, 4, [H]), (258, 3, [bits]), (259, 3, [1]), (262, 3, [1]), (277, 3, [1]),
            (278, 4, [H])]
    return tags + [(339, 3, [2])] if signed else tags


def test_bigtiff_is_read_with_its_64_bit_offsets():
    rgb = noise(H, W, 3)
    data = tiff_raw(W, H, _rgb_tags(), [rgb.tobytes()], big=True)
    assert data[:4] == b"II+\x00"
    np.testing.assert_array_equal(load_image(data), rgb)
    hdr = read_header(data)
    assert (hdr.fmt, hdr.width, hdr.height) == ("tiff", W, H)


def test_bigtiff_is_held_to_the_pixel_limit():
    tags = [(256, 4, [40000]), (257, 4, [40000])] + _rgb_tags()[2:]
    with pytest.raises(ImageTooLargeError, match="40000x40000"):
        load_image(tiff_raw(40000, 40000, tags, [b"\x00" * 64], big=True))


def test_12_bit_greyscale_decodes_scaled_to_8_bit():
    grey = np.random.default_rng(3).integers(0, 4096, (H, W))
    got = load_image(tiff_raw(W, H, _grey_tags(12), [pack_bits(grey, 12)]))
    assert got.shape == (H, W, 3)
    np.testing.assert_allclose(got[..., 0].astype(float), grey * 255 / 4095, atol=1.5)


@pytest.mark.parametrize("bits", [8, 16])
def test_signed_samples_decode_as_pillow_reads_them(bits):
    """OpenCV returns int8/int16 arrays, which the checks refused; Pillow reads signed 8-bit as
    its bytes and signed 16-bit as int32, which is then clipped to 0..65535 and scaled."""
    import io

    from PIL import Image

    dtype = np.dtype("i1") if bits == 8 else np.dtype("<i2")
    info = np.iinfo(dtype)
    grey = np.random.default_rng(bits).integers(info.min, info.max, (H, W), endpoint=True).astype(dtype)
    data = tiff_raw(W, H, _grey_tags(bits, signed=True), [grey.tobytes()])
    got = load_image(data)
    pil = np.asarray(Image.open(io.BytesIO(data))).astype(np.int64)
    want = pil if bits == 8 else np.clip(pil, 0, 65535) * 255 / 65535
    assert got.shape == (H, W, 3)
    np.testing.assert_allclose(got[..., 0], want, atol=0.51)


def test_planar_configuration_with_an_alpha_plane():
    rgba = np.random.default_rng(8).integers(0, 256, (H, W, 4)).astype(np.uint8)
    tags = _rgb_tags(4, 8, planar=2) + [(338, 3, [2])]  # unassociated alpha
    got = load_image(tiff_raw(W, H, tags, [rgba[..., k].tobytes() for k in range(4)]))
    c, a = rgba[..., :3].astype(int), rgba[..., 3:].astype(int)
    want = (c * a + 255 * (255 - a) + 127) // 255  # composited over white
    np.testing.assert_allclose(got, want, atol=1)  # libtiff premultiplies, rounding once more


@pytest.mark.parametrize("spp", [3, 4])
def test_planar_16_bit_samples_are_refused_not_scored_as_garbage(spp):
    """OpenCV 5.1 and Pillow both assemble separate 16-bit planes into wrong pixels."""
    x = (np.random.default_rng(spp).integers(0, 256, (H, W, spp)) * 257).astype("<u2")
    tags = _rgb_tags(spp, 16, planar=2) + ([(338, 3, [2])] if spp == 4 else [])
    with pytest.raises(ImageDecodeError, match="separate planes"):
        load_image(tiff_raw(W, H, tags, [x[..., k].tobytes() for k in range(spp)]))
