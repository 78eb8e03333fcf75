"""`nsnet batch` on a local 2-CPU Ray: one Parquet row per input with `nsnet detect`'s values, a
killed actor costs nothing, `--resume` finishes a stopped job, inputs expand like the issue says."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _ray_util import REPO, local_ray
from _sdk_util import build_stand_in_onnx, textured, write_png
from test_sdk_inputs import png_claiming
from nsnet_sdk.batch import ROW_FIELDS, run_batch
from nsnet_sdk.batch_inputs import expand_inputs
from nsnet_sdk.cli import main
from nsnet_sdk.results import unescape_text

N_FILES = 300


@pytest.fixture(scope="module")
def ray_local():
    pytest.importorskip("pyarrow")
    yield from local_ray()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_stand_in_onnx(tmp_path_factory.mktemp("m") / "nsnet.onnx")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, set[str]]:
    """N_FILES files in nested folders: tiny pictures plus corrupt, empty and bomb files.
    Returns (root, names of the bad files)."""
    root = tmp_path_factory.mktemp("imgs")
    bad: set[str] = set()
    for i in range(N_FILES):
        sub = root / f"d{i % 3}" / ("deep" if i % 7 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        if i % 50 == 1:
            (sub / f"corrupt{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
            bad.add(str(sub / f"corrupt{i}.jpg"))
        elif i % 50 == 2:
            (sub / f"empty{i}.png").write_bytes(b"")
            bad.add(str(sub / f"empty{i}.png"))
        elif i % 50 == 3:
            (sub / f"bomb{i}.png").write_bytes(png_claiming(40000, 40000))
            bad.add(str(sub / f"bomb{i}.png"))
        else:
            write_png(sub / f"img{i}.png", textured(36 + i % 5, 40 + i % 7, seed=i))
    return root, bad


def read_rows(out: Path) -> list[dict]:
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for f in sorted(out.glob("*.parquet")):
        rows.extend(pq.read_table(f).to_pylist())
    return rows


def detect_rows(model: Path, folder: Path, tmp: Path) -> dict[str, dict]:
    out = tmp / "detect.jsonl"
    assert main(["detect", str(folder), "-r", "--model", str(model), "--jsonl", str(out), "-q"]) == 0
    return {r["source"]: r for r in map(json.loads, out.read_text().splitlines())}


def test_every_input_one_row_with_detect_values(ray_local, model, folder, tmp_path):
    root, bad = folder
    summary = run_batch([str(root)], model, tmp_path / "out", workers=2, batch_size=16)
    rows = read_rows(tmp_path / "out")
    assert len(rows) == N_FILES == summary.scored + summary.errors
    assert set(rows[0]) == set(ROW_FIELDS)
    by_path = {r["path"]: r for r in rows}
    assert len(by_path) == N_FILES
    assert {p for p, r in by_path.items() if r["error"]} == bad
    assert summary.errors == len(bad) and len(summary.per_worker) == 2

    ref = detect_rows(model, root, tmp_path)
    assert set(ref) == set(by_path)
    for path, r in by_path.items():
        want = ref[path]
        for k in ("error", "is_fake", "warnings", "verdict", "threshold", "model_sha256"):
            assert r[k] == want[k], (path, k)
        if want["error"] is None:
            assert abs(r["prob_fake"] - want["prob_fake"]) <= 1e-6, path
            assert abs(r["logit"] - want["logit"]) <= 1e-5, path
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert {r["model_sha256"] for r in rows} == {sha}
    assert any("ImageTooLargeError" in (r["error"] or "") for r in rows)


def test_killed_actor_loses_and_duplicates_nothing(ray_local, model, folder, tmp_path):
    root, bad = folder
    killed: list[int] = []
    after_kill = []

    def kill_first_worker(rows: list[dict]) -> None:
        workers = [r["worker"] for r in rows if r.get("worker")]
        if workers and not killed:
            pid = int(workers[0].rsplit(":", 1)[1])
            os.kill(pid, signal.SIGKILL)  # the actor's process dies as in a crash or OOM kill
            killed.append(pid)
        elif killed:
            after_kill.extend(rows)

    run_batch([str(root)], model, tmp_path / "out", workers=2, batch_size=8,
              on_rows=kill_first_worker)
    assert killed and after_kill, "the kill did not happen while rows were still to come"
    rows = read_rows(tmp_path / "out")
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == N_FILES
    assert {r["path"] for r in rows if r["error"]} == bad  # nothing lost into an error row


def test_resume_finishes_a_stopped_job(ray_local, model, folder, tmp_path, capsys):
    root, _ = folder
    out = tmp_path / "out"
    first = run_batch([str(root)], model, out, workers=2, batch_size=16, limit=180)
    assert first.scored + first.errors == 180 == len(read_rows(out))

    argv = ["batch", str(root), "--model", str(model), "--out", str(out), "--workers", "2"]
    with pytest.raises(SystemExit) as e:  # results present and no --resume: a usage error
        main(argv)
    assert e.value.code == 2
    assert len(read_rows(out)) == 180

    assert main(argv + ["--resume"]) == 0
    summary = capsys.readouterr().err
    assert "180 already done" in summary and "images/s" in summary
    paths = [r["path"] for r in read_rows(out)]
    assert len(paths) == len(set(paths)) == N_FILES


def test_inputs_expand_from_globs_and_listings(folder, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, _ = folder
    every, _ = expand_inputs([str(root)])
    assert len(every) == N_FILES
    pngs, _ = expand_inputs([str(root / "**" / "*.png")])
    assert set(pngs) == {p for p in every if p.endswith(".png")}
    missing = str(tmp_path / "gone.png")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a comment\n{every[0]}\n\n{every[1]}\ns3://bucket/key.jpg\n{missing}\n")
    table = tmp_path / "list.parquet"
    pq.write_table(pa.table({"path": [every[2], every[0]]}), table)
    got, _ = expand_inputs([str(listing), str(table)])
    assert got == [every[0], every[1], "s3://bucket/key.jpg", missing, every[2]]  # each once


def test_missing_and_special_inputs_are_rows_not_failures(ray_local, model, folder, tmp_path):
    root, bad = folder
    good = [p for p in expand_inputs([str(root)])[0] if p not in bad][:3]
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # reading it would block forever
    odd = os.fsdecode(bytes(tmp_path) + b"/bad\xffname.png")  # not UTF-8: any name is read
    Path(odd).write_bytes(Path(good[0]).read_bytes())
    inputs = good + [str(tmp_path / "gone.png"), str(fifo), str(tmp_path), odd]
    listing = tmp_path / "inputs.txt"
    listing.write_bytes(b"\n".join(os.fsencode(p) for p in inputs))
    summary = run_batch([str(listing)], model, tmp_path / "out", workers=1, batch_size=4)
    rows = {unescape_text(r["path"]): r for r in read_rows(tmp_path / "out")}
    assert set(rows) == set(inputs) and summary.scored == 4 and summary.errors == 3
    assert all(rows[p]["error"] is None for p in good + [odd])
    assert "\\xff" in rows[odd]["path"]
    assert "not a regular file" in rows[str(fifo)]["error"]
    assert "no such file" in rows[str(tmp_path / "gone.png")]["error"]


def test_import_and_help_do_not_import_ray():
    code = ("import sys, nsnet_sdk.cli as c\n"
            "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print([m for m in ('ray', 'pyarrow', 'fastapi') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
