"""`python -m demo` end to end on a reduced dataset, checked through the artifacts it leaves.

One module-scoped run (small N, cheap corpus) feeds every assertion; the failure paths run the
demo in-process with a step replaced, so they cost no training.
"""
from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from demo import run as demo_run  # the repository root is on pytest's path (pyproject: pythonpath)
from training.synthetic import GENERATORS

REPO = Path(__file__).resolve().parents[1]

N, N_VAL, HELD = 8, 4, "nearest"
STEPS = ["synthesise", "train", "export", "verify", "detect", "evaluate", "report"]
SEEN = [g for g in GENERATORS if g != HELD]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "demo", "--out", str(out), "--n", str(N), "--n-val", str(N_VAL),
         "--held-out", HELD, "--epochs", "3", "--prompt-bank", "coco"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"demo failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return {"out": out, "stdout": proc.stdout, "report": json.loads((out / "demo.json").read_text())}


def test_every_step_ran_and_is_timed(demo):
    rep = demo["report"]
    assert [s["name"] for s in rep["steps"]] == STEPS
    assert all(s["ok"] and s["seconds"] >= 0 for s in rep["steps"])
    assert rep["failed"] is None
    for i in range(1, 5):
        assert f"[{i}/4]" in demo["stdout"]


def test_says_it_is_a_demonstration_and_gives_real_commands(demo):
    text = demo["stdout"]
    assert "NOT a detector of real AI-generated images" in text
    for needle in ("--backbone ViT-L-14 --pretrained openai", "GenImage", "AIGIBench",
                   "UniversalFakeDetect", "-m export.to_trt", "nsnet detect", "training.weights fetch",
                   "--calibrate-fpr"):
        assert needle in text, needle


def test_held_out_generator_has_no_training_images(demo):
    data = demo["out"] / "data"
    assert list((data / HELD).glob("train/**/*.png")) == []
    for cls in ("ai", "nature"):
        assert len(list((data / HELD / "val" / cls).glob("*.png"))) == N_VAL
        for g in SEEN:
            assert len(list((data / g / "train" / cls).glob("*.png"))) == N
            assert len(list((data / g / "val" / cls).glob("*.png"))) == N_VAL
    meta = json.loads((demo["out"] / "run" / "nsnet.json").read_text())
    assert sorted(meta["data"]["generators"]) == sorted(SEEN)
    assert meta["backbone"] == "nsnet-tiny"
    assert meta["training"]["epochs"] == 3
    assert len((demo["out"] / "run" / "metrics.jsonl").read_text().splitlines()) == 3


def test_onnx_is_the_trained_checkpoint_and_verified(demo):
    import onnx

    run, onnx_path = demo["out"] / "run", demo["out"] / "onnx" / "nsnet.onnx"
    md = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    assert md["nsnet.format"] == "nsnet-onnx/1"
    assert md["nsnet.backbone"] == "nsnet-tiny"
    assert md["nsnet.source_sha256"] == hashlib.sha256((run / "nsnet.safetensors").read_bytes()).hexdigest()
    parity = json.loads((demo["out"] / "onnx" / "parity.json").read_text())
    assert parity["n"] == 2 * N_VAL  # the held-out generator's images
    assert parity["rows"] and all(r["passes"] for r in parity["rows"])


def test_detect_rows_match_inputs_and_the_pytorch_model(demo):
    import torch

    from nsnet_sdk.pipeline import PatchConfig, load_image, preprocess_batch
    from nsnet_sdk.model import NSNet

    inputs = sorted((demo["out"] / "data" / HELD / "val").rglob("*.png"))
    rows = [json.loads(line) for line in (demo["out"] / "detect" / f"{HELD}.jsonl").read_text().splitlines()]
    assert sorted(r["source"] for r in rows) == [str(p) for p in inputs]
    assert all({"source", "prob_fake", "is_fake", "error"} <= set(r) and r["error"] is None for r in rows)
    with open(demo["out"] / "detect" / f"{HELD}.csv", newline="") as fh:
        assert sorted(r["source"] for r in csv.DictReader(fh)) == [str(p) for p in inputs]

    # The rows are the trained model's scores: recompute them with the PyTorch checkpoint.
    model = NSNet.from_checkpoint(demo["out"] / "run")
    meta = json.loads((demo["out"] / "run" / "nsnet.json").read_text())
    by_src = {r["source"]: r for r in rows}
    x = preprocess_batch([load_image(p) for p in inputs], PatchConfig.from_dict(meta["preprocess"]))
    with torch.no_grad():
        ref = torch.sigmoid(model(torch.from_numpy(x))).numpy()
    got = np.array([by_src[str(p)]["prob_fake"] for p in inputs])
    np.testing.assert_allclose(got, ref, atol=1e-4)

    # The accuracy the demo printed is the one these rows give (labels from the ai/nature folders).
    acc = np.mean([by_src[str(p)]["is_fake"] == (p.parent.name == "ai") for p in inputs])
    assert demo["report"]["detect"] == {"rows": len(inputs), "errors": 0, "acc": pytest.approx(acc)}


def test_table_marks_only_the_held_out_generator_unseen(demo):
    ev = demo["out"] / "eval"
    metrics = json.loads((ev / "metrics.json").read_text())
    assert set(metrics["per_generator"]) == set(GENERATORS)
    assert metrics["per_generator"][HELD]["n"] == 2 * N_VAL
    table = (ev / "table.md").read_text()
    marked = [line for line in table.splitlines() if line.startswith("|") and "(unseen)" in line]
    assert len(marked) == 1 and marked[0].split("|")[1].strip() == f"{HELD} (unseen)"
    assert all(f"| {g} (seen) |" in table for g in SEEN)
    assert f"{HELD} (unseen)" in demo["stdout"]
    assert {g: v["seen"] for g, v in demo["report"]["evaluate"].items()} == {g: g != HELD for g in GENERATORS}


def test_ends_with_the_review_report_of_the_held_out_images(demo):
    path = demo["out"] / "report" / "report.html"
    assert demo["stdout"].rstrip().splitlines()[-1] == f"review report: {path}"
    page = path.read_text()
    n = len(list((demo["out"] / "data" / HELD / "val").rglob("*.png")))
    assert f"<b>{n:,}</b>total" in page
    assert page.count('<div class="card">') == min(12, n) and page.count("<svg viewBox") == min(12, n)
    assert demo["report"]["report"] == {"path": str(path), "bytes": path.stat().st_size}


# What each printed command reads that an earlier one writes (by its module or nsnet subcommand):
# the commands run in that order, those with nothing left to wait for side by side (two cores).
NEEDS = {"training.synthetic": (), "training.train": (), "export.to_onnx": ("training.train",),
         "training.evaluate": ("training.train",), "export.verify": ("export.to_onnx",),
         "detect": ("export.to_onnx",), "report": ("detect",)}


def _tool_of(argv: list[str]) -> str:
    """The module after ``-m`` or the nsnet subcommand of a printed command."""
    return argv[argv.index("-m") + 1] if "-m" in argv else argv[1]


def test_printed_step_commands_run_as_printed(demo, tmp_path):
    """Each `$ ...` line the demo printed, re-run in a shell from the repo root, succeeds (the train
    command carries --overwrite, so it replaces the demo's run rather than being refused)."""
    import shlex

    cmds = [ln[2:] for ln in demo["stdout"].splitlines() if ln.startswith("$ ")]
    assert len(cmds) == len(STEPS) + 1  # synthesise prints two
    pending = []
    for i, cmd in enumerate(cmds):
        argv = shlex.split(cmd)
        tool = _tool_of(argv)
        assert tool in NEEDS, f"a printed command this test does not know the inputs of: {cmd}"
        if tool == "training.synthetic":  # re-writing the data would only cost time; point it elsewhere
            argv[argv.index("-m") + 2] = str(tmp_path / f"data{i}")
            cmd = shlex.join(argv)
        pending.append((tool, cmd))
    done: set[str] = set()
    while pending:
        wave = [(t, c) for t, c in pending if set(NEEDS[t]) <= done]
        assert wave, f"commands waiting on a step that never runs: {pending}"
        procs = [(t, c, subprocess.Popen(c, shell=True, cwd=REPO, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True)) for t, c in wave]
        try:
            for tool, cmd, proc in procs:
                out, err = proc.communicate(timeout=300)
                assert proc.returncode == 0, f"{cmd}\n{out[-2000:]}\n{err[-2000:]}"
        finally:
            for *_, proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
        pending = [p for p in pending if p not in wave]
        done |= {t for t, _ in wave}
    assert done == set(NEEDS)


def test_failing_step_is_named_and_exits_1(tmp_path, monkeypatch, capsys):
    import training.synthetic

    def boom(argv):
        raise SystemExit("error: disk full")

    monkeypatch.setattr(training.synthetic, "main", boom)
    out = tmp_path / "out"
    assert demo_run.main(["--out", str(out)]) == 1
    assert "step 'synthesise' failed: error: disk full" in capsys.readouterr().err
    rep = json.loads((out / "demo.json").read_text())
    assert rep["failed"] == "synthesise" and rep["steps"][-1] == {"name": "synthesise", "seconds": rep["steps"][-1]["seconds"], "ok": False}


def test_refuses_a_foreign_output_folder_and_clears_its_own(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(SystemExit) as e:
        demo_run.main(["--out", str(foreign)])
    assert e.value.code == 2 and (foreign / "keep.txt").read_text() == "user data"

    ours = tmp_path / "ours"
    demo_run._prepare_out(ours)
    (ours / "data").mkdir()
    (ours / "data" / "old.png").write_bytes(b"x")
    (ours / "notes.txt").write_text("kept")
    demo_run._prepare_out(ours)
    assert not (ours / "data").exists() and (ours / "notes.txt").exists()
