"""Paths that are not regular files are refused without blocking or reading; truncated files are
refused, or scored with a warning when only their end marker is missing."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nsnet_sdk.errors import ImageDecodeError, ImageTooLargeError
from nsnet_sdk.pipeline import load_image
from nsnet_sdk.pipeline.decode import decode_image
from nsnet_sdk.pipeline.read import file_byte_limit

from _decode_util import encode, noise

ROOT = Path(__file__).resolve().parent.parent

# load_image in a fresh process capped at 2 GB of address space and 20 s: a decoder that blocks
# or reads without end fails the test instead of hanging or exhausting the machine.
_GUARDED = r"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from nsnet_sdk.pipeline import load_image
try:
    load_image(sys.argv[1])
    print("DECODED")
except Exception as e:
    print(type(e).__name__, e)
"""


def guarded_load(path: str) -> str:
    try:
        proc = subprocess.run([sys.executable, "-c", _GUARDED, path], capture_output=True, text=True,
                              timeout=20, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return "TIMEOUT"
    return proc.stdout.strip() or proc.stderr.strip()[-300:]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    out = guarded_load(str(fifo))
    assert out.startswith("ImageDecodeError") and "FIFO" in out and str(fifo) in out, out


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_dev_zero_and_links_to_it_are_refused_unread(tmp_path):
    link = tmp_path / "zero.png"
    link.symlink_to("/dev/zero")
    for path in ("/dev/zero", str(link)):
        out = guarded_load(path)
        assert out.startswith("ImageDecodeError") and "character device" in out, out


def test_oversized_file_is_refused_from_its_size(tmp_path):
    big = tmp_path / "big.png"
    limit = file_byte_limit(1000)
    with open(big, "wb") as f:  # sparse: nothing is written, only the size is large
        f.truncate(limit + 1)
    with pytest.raises(ImageTooLargeError, match="big.png"):
        load_image(big, max_pixels=1000)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_detector_scores_the_good_file_next_to_a_fifo(tmp_path):
    pytest.importorskip("onnxruntime")
    from _sdk_util import build_stand_in_onnx

    from nsnet_sdk import Detector, InputOptions

    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    good = tmp_path / "good.png"
    good.write_bytes(encode(Image.fromarray(noise(64, 64)), "PNG"))
    det = Detector(build_stand_in_onnx(tmp_path / "m.onnx"), options=InputOptions(workers=1))
    result: list = []
    worker = threading.Thread(target=lambda: result.extend(det.predict([str(fifo), str(good)])), daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), "predict blocked on the FIFO"
    assert [p.source for p in result] == [str(fifo), str(good)]
    assert result[0].error and "FIFO" in result[0].error
    assert result[1].ok


def test_jpeg_declaring_more_than_its_data_covers_is_refused():
    from _decode_util import jpeg_with_size

    with pytest.raises(ImageDecodeError, match="truncated"):
        load_image(jpeg_with_size(11000, 9000, keep=700))
    data = encode(Image.fromarray(noise(200, 200)), "JPEG")
    for cut in (data[:-2], data[: len(data) // 2]):  # no EOI; half the scan missing
        with pytest.raises(ImageDecodeError, match="truncated"):
            load_image(cut)


def test_png_missing_only_iend_is_scored_with_a_warning():
    rgb = noise(40, 50)
    data = encode(Image.fromarray(rgb), "PNG")
    cut = data[: data.rfind(b"IEND") - 4]
    out, _, warnings = decode_image(cut)
    np.testing.assert_array_equal(out, rgb)  # the pixel data was complete
    assert len(warnings) == 1 and "truncated" in warnings[0] and "IEND" in warnings[0]
    assert decode_image(data)[2] == []
    with pytest.raises(ImageDecodeError, match="truncated"):  # pixel data itself cut short
        load_image(data[: len(data) // 2] + data[data.rfind(b"IEND") - 4 :])


def test_gif_missing_only_its_trailer_is_scored_with_a_warning():
    frames = [Image.fromarray(np.full((16, 16, 3), v, np.uint8)) for v in (10, 200)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    out, _, warnings = decode_image(data[:-1])
    assert out.shape == (16, 16, 3) and abs(int(out.mean()) - 10) <= 2
    assert any("trailer" in w for w in warnings)
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_image(data[:40])


def test_truncation_warning_reaches_the_prediction(tmp_path):
    pytest.importorskip("onnxruntime")
    from _sdk_util import build_stand_in_onnx

    from nsnet_sdk import Detector, InputOptions

    data = encode(Image.fromarray(noise(64, 64)), "PNG")
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: data.rfind(b"IEND") - 4])
    whole = tmp_path / "whole.png"
    whole.write_bytes(data)
    with Detector(build_stand_in_onnx(tmp_path / "m.onnx"), options=InputOptions(workers=0)) as det:
        p_cut, p_whole = det.predict([str(cut), str(whole)])
    assert p_cut.ok and any("IEND" in w for w in p_cut.warnings)
    assert p_whole.ok and p_whole.warnings == ()
    assert p_cut.prob_fake == p_whole.prob_fake  # same pixels, same score: only flagged


def test_lazy_pil_image_is_held_to_the_same_checks():
    from _decode_util import jpeg_many_scans, png_deflate_bomb

    for data, match in ((jpeg_many_scans(3000), "scans"), (png_deflate_bomb(256), "inflates beyond")):
        img = Image.open(io.BytesIO(data))  # Pillow reads the header only; decoding is lazy
        t = time.perf_counter()
        with pytest.raises(ImageDecodeError, match=match):
            load_image(img)
        assert time.perf_counter() - t < 1.0
    ok = Image.open(io.BytesIO(encode(Image.fromarray(noise(20, 30)), "PNG")))
    np.testing.assert_array_equal(load_image(ok), noise(20, 30))
