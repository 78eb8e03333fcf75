"""`nsnet detect` in its default in-process decoding when a native decoder crash kills the process:
the run dies, ``--resume`` records the input that killed it as one error row and scores every other
input, and a further ``--resume`` changes nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _decode_util import png_chunk
from _sdk_util import build_stand_in_onnx, stand_in_logit, textured, write_png

from nsnet_sdk.results import INFLIGHT
from nsnet_sdk.pipeline import load_image, preprocess

ROOT = Path(__file__).resolve().parent.parent
MARK = b"nsnet-test: abort in the decoder"

# Loaded at start-up by every interpreter of the child runs (decode worker processes included):
# decoding bytes that hold MARK calls abort() inside the decoder, as a native decoder crash would.
# `nsnet detect` hands the decoder the bytes it read (named by position), so the mark is in the
# file, not in its name.
_CRASH_HOOK = f"""
import ctypes
from nsnet_sdk.pipeline import decode as _decode

_decode_bytes = _decode._decode_bytes


def _crashing(data, max_pixels, src, swap=True):
    if {MARK!r} in bytes(data):
        ctypes.CDLL(None).abort()
    return _decode_bytes(data, max_pixels, src, swap)


_decode._decode_bytes = _crashing
"""


def _crashing_png(path: Path) -> Path:
    """A good PNG with MARK in a text chunk after IHDR: the hook aborts on it."""
    data = write_png(path, textured(64, 64, 1)).read_bytes()
    path.write_bytes(data[:33] + png_chunk(b"tEXt", b"Comment\0" + MARK) + data[33:])
    return path


def _detect(model: Path, paths: list[Path], out: Path, hook: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "nsnet_sdk.cli", "detect", *map(str, paths), "--model",
                           str(model), "--jsonl", str(out), "--batch-size", "2", "-q", *extra],
                          env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.parametrize("workers", ["1", "0"])
def test_resume_after_a_decoder_crash_records_the_culprit_and_scores_the_rest(tmp_path, workers):
    model = build_stand_in_onnx(tmp_path / "m.onnx")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_CRASH_HOOK)
    paths = [write_png(tmp_path / f"g{i:02d}.png", textured(64 + 8 * i, 96, 20 + i)) for i in range(9)]
    paths.insert(5, _crashing_png(tmp_path / "bad.png"))
    out = tmp_path / "out.jsonl"

    first = _detect(model, paths, out, hook, "--workers", workers)
    assert first.returncode != 0  # the crash took the process: no ordinary exit status
    written = {r["source"] for r in _rows(out)}
    assert str(paths[5]) not in written and len(written) < len(paths)

    second = _detect(model, paths, out, hook, "--workers", workers, "--resume")
    assert second.returncode == 0, second.stderr[-2000:]
    rows = _rows(out)
    assert sorted(r["source"] for r in rows) == sorted(map(str, paths))  # one row per input
    for row in rows:
        if row["source"] == str(paths[5]):
            assert row["logit"] is None and "decoder crashed" in row["error"] and str(paths[5]) in row["error"]
        else:
            assert row["error"] is None, row
            x = preprocess(load_image(row["source"]))[None]
            assert row["logit"] == pytest.approx(float(stand_in_logit(x)[0]), abs=1e-4), row["source"]
    assert not (tmp_path / ("out.jsonl" + INFLIGHT)).exists()

    before = out.read_bytes()
    third = _detect(model, paths, out, hook, "--workers", workers, "--resume")
    assert third.returncode == 0, third.stderr[-2000:]
    assert out.read_bytes() == before


def test_a_run_that_ends_normally_leaves_no_journal(tmp_path):
    model = build_stand_in_onnx(tmp_path / "m.onnx")
    paths = [write_png(tmp_path / f"g{i}.png", textured(64, 80, i)) for i in range(3)]
    out = tmp_path / "out.jsonl"
    stale = tmp_path / ("out.jsonl" + INFLIGHT)
    stale.write_text(json.dumps(str(paths[0])) + "\n")  # another run's: --overwrite ignores it
    r = _detect(model, paths, out, tmp_path, "--overwrite")
    assert r.returncode == 0, r.stderr[-2000:]
    assert [row["error"] for row in _rows(out)] == [None] * 3
    assert not stale.exists()
