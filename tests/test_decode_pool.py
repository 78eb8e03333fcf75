"""The Detector's decode paths: the mosaic cut from the BGR decode buffer gives the same tensor as
the public RGB path, and the process pool keeps order and one result per input, bad inputs too."""
from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from _sdk_util import build_stand_in_onnx, stand_in_logit, survivors, textured, write_png

from nsnet_sdk import Detector, InputOptions
from nsnet_sdk.pipeline.executors import prepare_into
from nsnet_sdk.errors import UnsupportedInputError
from nsnet_sdk.pipeline import DEFAULT, MAX_PIXELS, load_image, preprocess
from nsnet_sdk.pipeline.decode import load_image_native


def sources(tmp: Path) -> dict[str, object]:
    rgb = textured(300, 420, 1)
    jpg = tmp / "photo.jpg"
    assert cv2.imwrite(str(jpg), rgb[..., ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, 90])
    rgba = np.dstack([textured(200, 260, 2), np.full((200, 260), 200, np.uint8)])
    buf = io.BytesIO()
    from PIL import Image

    Image.fromarray(textured(100, 150, 5)).save(buf, format="PNG")
    return {
        "jpeg": jpg,
        "png": write_png(tmp / "rgb.png", textured(257, 333, 3)),
        "rgba": write_png(tmp / "rgba.png", rgba),
        "gray": write_png(tmp / "gray.png", textured(128, 96, 4)[..., 0].copy()),
        "png16": write_png(tmp / "deep.png", (textured(70, 90, 6).astype(np.uint16) * 257)),
        "bytes": jpg.read_bytes(),
        "array": textured(64, 500, 7),
        "pil": Image.open(io.BytesIO(buf.getvalue())),
    }


def test_bgr_mosaic_path_gives_the_public_rgb_tensor(tmp_path):
    for kind, src in sources(tmp_path).items():
        img, bgr = load_image_native(src)
        rgb = load_image(src)
        # Encoded inputs really skip the full-frame swap: the buffer is the decoder's BGR.
        assert bgr == (kind in ("jpeg", "png", "rgba", "gray", "png16", "bytes")), kind
        np.testing.assert_array_equal(img[..., ::-1] if bgr else img, rgb)
        out = np.full((3, 224, 224), np.nan, np.float32)
        assert prepare_into(src, kind, DEFAULT, MAX_PIXELS, out) == (None, ())
        np.testing.assert_array_equal(out, preprocess(rgb), err_msg=kind)
        if isinstance(src, np.ndarray):  # an OpenCV-order array: same tensor, no full-frame swap
            out2 = np.full_like(out, np.nan)
            assert prepare_into(src[..., ::-1].copy(), kind, DEFAULT, MAX_PIXELS, out2, bgr=True)[0] is None
            np.testing.assert_array_equal(out2, out)


def test_prepare_into_names_the_input_in_typed_errors(tmp_path):
    out = np.empty((3, 224, 224), np.float32)
    err, _ = prepare_into(b"not an image", "junk.bin", DEFAULT, MAX_PIXELS, out)
    assert err is not None and err.source == "junk.bin" and "junk.bin" in str(err)
    err, _ = prepare_into(str(tmp_path / "a\0b.png"), "nul", DEFAULT, MAX_PIXELS, out)
    assert err is not None and err.source == "nul"
    err, _ = prepare_into(42, "<int #0>", DEFAULT, MAX_PIXELS, out)
    assert isinstance(err, UnsupportedInputError) and err.source == "<int #0>"
    err, notes = prepare_into(textured(20, 300, 1), "small", DEFAULT, MAX_PIXELS, out)
    assert err is None and len(notes) == 1 and "20" in notes[0]


class _KillsWorker:
    """Unpickling this ends the process that does it: a decoder crash, as from a bad native library."""

    def __reduce__(self):
        return (os._exit, (3,))


def mixed_inputs(tmp: Path) -> tuple[list[object], list[bool]]:
    good = [write_png(tmp / f"g{i}.png", textured(96 + 40 * i, 160 + 30 * i, 10 + i)) for i in range(7)]
    (tmp / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (tmp / "text.png").write_text("hello")
    inputs = [good[0], tmp / "missing.png", good[1], good[2], tmp / "bad.jpg", textured(80, 80, 1),
              good[3], b"", good[4], tmp / "text.png", good[5], lambda: None, good[6]]
    ok = [True, False, True, True, False, True, True, False, True, False, True, False, True]
    return inputs, ok


@pytest.mark.parametrize("decode", ["threads", "processes"])
def test_order_and_one_result_per_input_with_bad_inputs_mixed_in(tmp_path, decode):
    model = build_stand_in_onnx(tmp_path / "m.onnx")
    inputs, ok = mixed_inputs(tmp_path)
    from multiprocessing import shared_memory

    created: list[str] = []  # the names of the shared buffers this run creates (other jobs may create their own)
    real_init = shared_memory.SharedMemory.__init__

    def recording_init(self, name=None, create=False, size=0, **kw):
        real_init(self, name, create, size, **kw)
        if create:
            created.append(self.name.lstrip("/"))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(shared_memory.SharedMemory, "__init__", recording_init)
        with Detector(model, options=InputOptions(workers=2, batch_size=3, executor=decode)) as det:
            preds = det.predict(inputs)
    assert len(preds) == len(inputs)
    for i, (p, src, good) in enumerate(zip(preds, inputs, ok)):
        assert (p.error is None) == good, (i, p)
        want_name = os.fsdecode(src) if isinstance(src, Path) else None
        if want_name:
            assert p.source == want_name
        if good:  # the score of exactly this input, so a reordering anywhere would show
            x = preprocess(load_image(src))[None]
            assert p.logit == pytest.approx(float(stand_in_logit(x)[0]), abs=1e-4)
    assert bool(created) == (decode == "processes")
    if os.path.isdir("/dev/shm"):
        assert set(created) & set(os.listdir("/dev/shm")) == set()  # the shared buffers are unlinked


@pytest.mark.parametrize("channels", ["rgb", "bgr"])
def test_processes_give_the_same_predictions_as_threads(tmp_path, channels):
    model = build_stand_in_onnx(tmp_path / "m.onnx")
    inputs, _ = mixed_inputs(tmp_path)
    inputs = inputs[:11] + [textured(20, 90, 3)]  # the lambda is refused differently (not picklable)
    with Detector(model, options=InputOptions(workers=2, batch_size=4, channels=channels)) as det:
        a = det.predict(inputs)
    with Detector(model, options=InputOptions(workers=2, batch_size=4, executor="processes", channels=channels)) as det:
        b = det.predict(inputs)
    key = lambda p: (p.source, p.logit if p.error is None else None, type(p.error), p.warnings)  # noqa: E731
    assert [key(p) for p in a] == [key(p) for p in b]
    assert b[-1].warnings  # the small image's warning crosses the process boundary


def test_a_crashed_decode_worker_fails_its_inputs_not_the_run(tmp_path):
    model = build_stand_in_onnx(tmp_path / "m.onnx")
    good = [write_png(tmp_path / f"g{i}.png", textured(64, 64, i)) for i in range(8)]
    inputs = good[:2] + [_KillsWorker()] + good[2:]
    with Detector(model, options=InputOptions(workers=1, batch_size=1, executor="processes")) as det:
        preds = det.predict(inputs)
    assert len(preds) == len(inputs)
    assert preds[2].error is not None
    assert preds[0].error is None and preds[-1].error is None  # a fresh pool took over


def test_decode_mode_is_validated(tmp_path):
    model = build_stand_in_onnx(tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="executor"):
        Detector(model, options=InputOptions(executor="fibers"))


# Loaded at start-up by every interpreter of the child run below (its workers included): decoding a
# file whose name starts with "crash" calls abort() inside the decoder, as a native decoder crash would.
_CRASH_HOOK = """
import ctypes, os
from nsnet_sdk.pipeline import decode as _decode

_decode_bytes = _decode._decode_bytes


def _crashing(data, max_pixels, src, swap=True):
    if os.path.basename(src).startswith("crash"):
        ctypes.CDLL(None).abort()
    return _decode_bytes(data, max_pixels, src, swap)


_decode._decode_bytes = _crashing
"""

_RUN_BATCH = """
import json, sys
from nsnet_sdk import Detector, InputOptions
model, *paths = sys.argv[1:]
with Detector(model, options=InputOptions(workers=2, batch_size=4, executor="processes")) as det:
    preds = det.predict(paths)
print(json.dumps([[p.source, p.logit, None if p.error is None else str(p.error)] for p in preds]))
"""


def test_a_decoder_that_aborts_costs_only_its_own_input(tmp_path):
    """abort() in a worker's decoder: every other input of the batch, those sharing the dead
    worker's task included, is scored exactly as without the crash; each crashing input is one error."""
    import json
    import subprocess
    import sys

    model = build_stand_in_onnx(tmp_path / "m.onnx")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_CRASH_HOOK)
    paths = [write_png(tmp_path / f"g{i:02d}.png", textured(64 + 8 * i, 96, 20 + i)) for i in range(10)]
    paths.insert(3, write_png(tmp_path / "crash-a.png", textured(64, 64, 1)))
    paths.insert(9, write_png(tmp_path / "crash-b.png", textured(64, 64, 2)))
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(root), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", _RUN_BATCH, str(model), *map(str, paths)], env=env,
                       capture_output=True, text=True, timeout=300, cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(r.stdout.strip().splitlines()[-1])
    assert [row[0] for row in rows] == [str(p) for p in paths]
    for (source, logit, error), path in zip(rows, paths):
        if path.name.startswith("crash"):
            assert logit is None and "decoder crashed" in error, (source, error)
        else:
            assert error is None, (source, error)
            x = preprocess(load_image(path))[None]
            assert logit == pytest.approx(float(stand_in_logit(x)[0]), abs=1e-4), source


_KILLED_OWNER = """
import os, signal, sys
import psutil
from nsnet_sdk import Detector, InputOptions
det = Detector(sys.argv[1], options=InputOptions(workers=2, executor="processes")).keep_workers()
det.predict([sys.argv[2]])  # the worker pool is up and kept
print(" ".join(str(p.pid) for p in psutil.Process().children()), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # as an OOM kill or `kill -9` would end it
"""


def test_decode_workers_end_with_a_killed_owner(tmp_path):
    """A worker waits on a task queue whose write end it holds itself, so it never sees the
    SIGKILLed owner go: without its parent watch it waited forever (held memory, held the
    owner's output pipe). Every worker is gone soon after the owner is."""
    import subprocess
    import sys

    psutil = pytest.importorskip("psutil")
    model = build_stand_in_onnx(tmp_path / "m.onnx")
    img = write_png(tmp_path / "a.png", textured(64, 64, 0))
    repo = Path(__file__).resolve().parents[1]
    with open(tmp_path / "pids", "w") as out, open(tmp_path / "err", "w") as err:
        proc = subprocess.run([sys.executable, "-c", _KILLED_OWNER, str(model), str(img)],
                              env={**os.environ, "PYTHONPATH": str(repo)}, stdout=out, stderr=err,
                              timeout=120)
    assert proc.returncode == -9, (tmp_path / "err").read_text()[-2000:]
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    workers = []
    for pid in pids:
        try:
            if "spawn_main" in " ".join(psutil.Process(pid).cmdline()):
                workers.append(pid)
        except psutil.NoSuchProcess:
            pass
    assert len(workers) >= 1, pids

    assert survivors(workers, within_s=30) == [], "decode workers outlived their SIGKILLed owner"
