"""A native decoder crash inside `nsnet batch` costs one error row: every other input is scored as
`nsnet detect` scores it and the job ends, in process and on Ray actors alike.

The crash is real: a ``sitecustomize`` loaded by every interpreter of the job (the driver, its
decode workers, the local Ray's workers, which inherit the driver's environment) makes the decoder
call abort() on any file carrying a marker, as a segfaulting native decoder would."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _ray_util import REPO
from _sdk_util import build_stand_in_onnx, survivors, textured, write_png
from benchmarks.provenance_samples import png_bytes, png_chunk, png_with
from nsnet_sdk.cli import main
from nsnet_sdk.results import unescape_text

MARKER = b"nsnet-test-abort"

_CRASH_HOOK = f"""
import ctypes
from nsnet_sdk.pipeline import decode as _decode

_decode_bytes = _decode._decode_bytes


def _crashing(data, *args, **kwargs):
    if {MARKER!r} in bytes(data):
        ctypes.CDLL(None).abort()
    return _decode_bytes(data, *args, **kwargs)


_decode._decode_bytes = _crashing
"""

_DRIVER = """
import json, sys
from nsnet_sdk.batch import run_batch
src, model, out, engine = sys.argv[1:]
s = run_batch([src], model, out, batch_size=4, workers=1, use_ray=engine == "ray",
              ray_init={"num_cpus": 1, "object_store_memory": 100 * 2**20})
print(json.dumps([s.scored, s.errors, sorted(s.per_worker)]))  # (per_worker: Ray only)
"""


def read_rows(out: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    rows = [r for f in sorted(out.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    keyed = {unescape_text(r["path"]): r for r in rows}
    assert len(keyed) == len(rows), "an input has more than one row"
    return keyed


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    pytest.importorskip("pyarrow")
    tmp = tmp_path_factory.mktemp("crash")
    model = build_stand_in_onnx(tmp / "m.onnx")
    src = tmp / "in"
    src.mkdir()
    for i in range(10):
        write_png(src / f"g{i:02d}.png", textured(48 + 4 * i, 64, seed=30 + i))
    # valid pictures, which decode everywhere but under the hook
    (src / "g03-abort.png").write_bytes(png_with(png_chunk(b"tEXt", b"Comment\x00" + MARKER)))
    (src / "g07-abort.png").write_bytes(png_with(png_chunk(b"tEXt", b"Comment\x00" + MARKER),
                                                 base=png_bytes(5)))
    hook = tmp / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_CRASH_HOOK)
    out = tmp / "detect.jsonl"
    assert main(["detect", str(src), "--model", str(model), "--jsonl", str(out), "-q"]) == 0  # no hook here
    ref = {r["source"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(ref) == 12 and all(r["error"] is None for r in ref.values())
    return {"model": model, "src": src, "hook": hook, "ref": ref}


@pytest.mark.parametrize("engine", ["in-process", "ray"])
def test_a_decoder_abort_costs_one_row_and_the_job_ends(job, tmp_path, engine):
    if engine == "ray":
        pytest.importorskip("ray", reason="needs the [ray] extra (pip install 'nsnet-sdk[ray]')")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(job["hook"]), str(REPO)]),
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    try:
        r = subprocess.run([sys.executable, "-c", _DRIVER, str(job["src"]), str(job["model"]), str(out),
                            engine],
                           env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("the job did not end within 240 s (a crashing input restarted its worker again "
                    "and again)")
    assert r.returncode == 0, r.stderr[-3000:]
    scored, errors, workers = json.loads(r.stdout.strip().splitlines()[-1])
    assert (scored, errors) == (10, 2)
    # in process and in each Ray actor alike: the decode worker process died, its input was tried
    # again alone, and only that input is an error (the actor and the rest of its batch go on)
    cause = "ImageDecodeError: {}: the decoder crashed the process decoding this input"
    rows = read_rows(out)
    assert set(rows) == set(job["ref"])
    for path, row in rows.items():
        if "abort" in Path(path).name:
            assert row["prob_fake"] is None and row["error"].startswith(cause.format(path)), row
            continue
        want = job["ref"][path]
        assert row["error"] is None, row
        assert row["prob_fake"] == pytest.approx(want["prob_fake"], abs=1e-6), path
        assert row["logit"] == pytest.approx(want["logit"], abs=1e-5), path
        assert row["warnings"] == want["warnings"], path


_KILLED = """
import os, signal, sys
import psutil
from nsnet_sdk.batch import run_batch
def on_rows(rows):
    # the decode workers are running: print them, then die as an OOM kill or `kill -9` would
    print(" ".join(str(p.pid) for p in psutil.Process().children(recursive=True)), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
run_batch([sys.argv[1]], sys.argv[2], sys.argv[3], batch_size=2, use_ray=False, on_rows=on_rows)
"""


def test_a_killed_driver_leaves_no_decode_worker(job, tmp_path):
    """Decode workers blocked on their queue would outlive a SIGKILLed driver (each holds the
    queue's other end), with their shared batch buffers: each ends when its parent is gone."""
    pytest.importorskip("psutil")
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # no crash hook here
    # output to files: a pipe would also wait for every process that inherited it
    with open(tmp_path / "pids", "w") as out, open(tmp_path / "err", "w") as err:
        proc = subprocess.run([sys.executable, "-c", _KILLED, str(job["src"]), str(job["model"]),
                               str(tmp_path / "out")], env=env, cwd=REPO, stdout=out, stderr=err,
                              timeout=120)
    assert proc.returncode == -9, (tmp_path / "err").read_text()[-2000:]
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert pids, "no decode worker was running"

    assert survivors(pids, within_s=30) == []
