"""Issue 5 §4: every input yields exactly one result. A bad-input corpus built here, file by file,
run through the Detector; nothing may crash or hang, errors are typed and name the input, and
every odd-but-valid image is scored as the picture it shows."""
from __future__ import annotations

import io
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from _sdk_util import build_stand_in_onnx, textured, write_png
from nsnet_sdk import Detector, ImageDecodeError, ImageTooLargeError
from nsnet_sdk.preprocess import load_image


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR (valid CRC) claims width×height RGB, with a tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _jpeg(rgb: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def _palette_frame(seed: int, h: int = 64, w: int = 80) -> tuple[Image.Image, np.ndarray]:
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    idx = rng.integers(0, 16, (h, w), dtype=np.uint8)
    img = Image.fromarray(idx, "P")
    img.putpalette(palette.tobytes() + bytes(3 * 240))
    return img, palette[idx]


def build_corpus(d: Path) -> list[tuple[object, object]]:
    """[(input, expectation)]: expectation is an error class, or the RGB array the input shows
    (scored exactly as that array), or ("approx", array) for lossy colour conversions."""
    c: list[tuple[object, object]] = []
    c.append((d / "missing.jpg", ImageDecodeError))
    (d / "a_directory.jpg").mkdir()
    c.append((d / "a_directory.jpg", ImageDecodeError))
    (d / "zero.png").write_bytes(b"")
    c.append((d / "zero.png", ImageDecodeError))
    pic = textured(120, 160, seed=1)
    jpg = _jpeg(pic)
    (d / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    c.append((d / "truncated.jpg", ImageDecodeError))
    png = cv2.imencode(".png", pic[..., ::-1])[1].tobytes()
    (d / "truncated.png").write_bytes(png[: len(png) // 2])
    c.append((d / "truncated.png", ImageDecodeError))
    (d / "noise.bin").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    c.append((d / "noise.bin", ImageDecodeError))
    (d / "notes.jpg").write_text("this is a text file, not a JPEG\n" * 20)
    c.append((d / "notes.jpg", ImageDecodeError))
    (d / "vector.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
                                  '<rect width="64" height="64" fill="red"/></svg>')
    c.append((d / "vector.svg", ImageDecodeError))

    f0, rgb0 = _palette_frame(1)
    f1, _ = _palette_frame(2)
    f0.save(d / "animated.gif", save_all=True, append_images=[f1], duration=100, loop=0)
    c.append((d / "animated.gif", rgb0))
    p0, p1 = textured(70, 90, seed=3), textured(70, 90, seed=4)
    Image.fromarray(p0).save(d / "pages.tiff", save_all=True, append_images=[Image.fromarray(p1)])
    c.append((d / "pages.tiff", p0))
    eight = textured(96, 128, seed=5)
    write_png(d / "sixteen.png", eight.astype(np.uint16) * 257)
    c.append((d / "sixteen.png", eight))
    Image.fromarray(pic).convert("CMYK").save(d / "cmyk.jpg", "JPEG", quality=95)
    c.append((d / "cmyk.jpg", ("approx", pic)))
    gray = textured(100, 90, seed=6)[..., 1]
    write_png(d / "gray.png", gray)
    c.append((d / "gray.png", np.repeat(gray[..., None], 3, axis=2)))
    rgba = np.dstack([textured(80, 100, seed=7), np.linspace(0, 255, 80 * 100).reshape(80, 100)
                      .astype(np.uint8)])
    write_png(d / "rgba.png", rgba)
    c.append((d / "rgba.png", rgba[..., :3]))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: display = stored rotated 90° clockwise
    upright = textured(64, 96, seed=8)
    (d / "rotated.jpg").write_bytes(_jpeg(upright, exif=exif.tobytes()))
    stored = cv2.imread(str(d / "rotated.jpg"), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    c.append((d / "rotated.jpg", np.ascontiguousarray(np.rot90(stored[..., ::-1], k=-1))))
    for name, (h, w) in {"one.png": (1, 1), "thirtyone.png": (31, 31), "strip.png": (20, 5000)}.items():
        arr = textured(h, w, seed=h + w)
        write_png(d / name, arr)
        c.append((d / name, arr))
    (d / "bomb.png").write_bytes(png_claiming(30000, 30000))
    c.append((d / "bomb.png", ImageTooLargeError))
    return c


@pytest.fixture(scope="module")
def det(tmp_path_factory) -> Detector:
    return Detector(build_stand_in_onnx(tmp_path_factory.mktemp("m") / "m.onnx"), workers=2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("corpus"))


def _check(det, pred, expect, label):
    if isinstance(expect, type):
        assert not pred.ok and pred.prob_fake is None and pred.is_fake is None, (label, pred)
        assert pred.error.startswith(expect.__name__ + ": "), (label, pred.error)
        return
    assert pred.ok, (label, pred.error)
    if isinstance(expect, tuple):  # lossy CMYK round trip: pixels checked in test_odd_pictures
        assert np.isfinite(pred.logit) and 0.0 <= pred.prob_fake <= 1.0, (label, pred)
    else:
        ref = det.predict(expect)
        assert pred.logit == pytest.approx(ref.logit, abs=1e-6), (label, pred, ref)


def test_whole_corpus_in_one_call_gives_one_result_per_input(det, corpus):
    inputs = [i for i, _ in corpus]
    preds = det.predict(inputs, batch_size=4)
    assert len(preds) == len(corpus)
    assert [p.source for p in preds] == [str(i) for i in inputs]
    for (src, expect), pred in zip(corpus, preds):
        _check(det, pred, expect, src)
        if not pred.ok:
            assert Path(src).name in pred.error, "the error must name the input"


def test_same_results_from_bytes_as_from_paths(det, corpus):
    files = [(p, e) for p, e in corpus if Path(p).is_file()]
    preds = det.predict([Path(p).read_bytes() for p, _ in files], batch_size=3)
    assert [p.source for p in preds] == [f"<bytes #{i}>" for i in range(len(files))]
    for (src, expect), pred in zip(files, preds):
        _check(det, pred, expect, src)


def test_each_bad_input_alone_raises_its_typed_error(det, corpus):
    for src, expect in corpus:
        if isinstance(expect, type):
            with pytest.raises(expect, match=Path(src).name):
                det.predict(src)


def test_odd_pictures_are_the_picture_they_show(det, corpus):
    """First GIF frame / TIFF page, not the second; rotation applied; alpha ignored."""
    gif, tiff = det.predict([p for p, _ in corpus if Path(p).suffix in (".gif", ".tiff")])
    assert gif.logit != pytest.approx(det.predict(_palette_frame(2)[1]).logit, abs=1e-4)
    assert tiff.logit != pytest.approx(det.predict(textured(70, 90, seed=4)).logit, abs=1e-4)
    rotated = next(p for p, _ in corpus if Path(p).name == "rotated.jpg")
    unrotated = cv2.imread(str(rotated), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)[..., ::-1]
    assert det.predict(rotated).logit != pytest.approx(det.predict(unrotated).logit, abs=1e-4)
    # CMYK converted, not inverted or read as 4-channel garbage: close to the source picture
    cmyk = next(p for p, _ in corpus if Path(p).name == "cmyk.jpg")
    decoded = load_image(cmyk).astype(np.int16)
    assert np.abs(decoded - textured(120, 160, seed=1)).mean() < 6


def test_decompression_bomb_is_refused_before_allocation(tmp_path, det):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(30000, 30000))  # 2.7 GB of RGB if it were decoded
    code = textwrap.dedent(f"""
        import resource
        from nsnet_sdk import Detector
        d = Detector({str(det.model_path)!r}, workers=2)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        data = open({str(bomb)!r}, "rb").read()
        preds = d.predict([{str(bomb)!r}, data] * 3)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print([p.error.split(":")[0] for p in preds], (after - before) // 1024)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    errors, grown_mb = r.stdout.rsplit("]", 1)
    assert errors.count("ImageTooLargeError") == 6, r.stdout
    assert int(grown_mb) < 200, f"peak RSS grew by {grown_mb} MB on a 2.7 GB claim"
