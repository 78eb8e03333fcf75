"""End to end on the synthetic task: train nsnet-tiny, evaluate, resume, calibrate, LoRA.

The task: "fake" = an image upsampled by a 2× transposed convolution (checkerboard fingerprint),
"real" = procedurally generated photo-like scenes (training/synthetic.py). Held-out images only.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from nsnet_sdk.pipeline import load_image, preprocess
from training.evaluate import PERTURBATIONS
from training.evaluate import main as evaluate_main
from nsnet_sdk.model import NSNet
from training.synthetic import write_dataset

from _training_util import tiny_run

EPOCHS = 10  # training.train's default --epochs: the trained fixture runs at the default lr and epochs
TRAIN_FLAGS = ("--cache-features", "--batch-size", "32", "--seed", "0")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = write_dataset(tmp_path_factory.mktemp("synth"), ["tconv"], n_train=64, n_val=32, seed=0, progress=False)
    # Two unreadable training files: counted and skipped, never fatal.
    (root / "tconv" / "train" / "ai" / "zz_truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (root / "tconv" / "train" / "nature" / "zz_empty.jpg").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def trained(synth, tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("run") / "run", *TRAIN_FLAGS, data=synth, epochs=None)


@pytest.fixture(scope="module")
def report(trained, synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert evaluate_main(["--ckpt", str(trained), "--data", str(synth), "--out", str(out), "--quiet"]) == 0
    return out


def test_reaches_90_percent_on_held_out_images(report) -> None:
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics) == {"overall", "per_generator"}
    overall = metrics["overall"]
    assert set(overall) == {"acc", "ap", "real_acc", "fake_acc", "n"}
    assert overall["n"] == 64  # the val split: 32 real + 32 fake, none seen in training
    assert overall["acc"] >= 0.90, overall
    assert metrics["per_generator"]["tconv"] == dict(overall, seen=True)


def test_report_files(report) -> None:
    table = (report / "table.md").read_text()
    assert "| tconv (seen) |" in table and "| **mean** |" in table
    for name in ("roc.png", "pr.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((report / "summary.json").read_text())
    assert summary["skipped"] == 0 and summary["threshold"] == 0.5


def test_run_directory_contents(trained) -> None:
    meta = json.loads((trained / "nsnet.json").read_text())
    assert meta["training"]["epochs"] == EPOCHS
    assert meta["training"]["lr"] == 1e-3  # the default for a frozen backbone (head only)
    assert meta["data"]["skipped"] == 2 and meta["data"]["n_images"] == 128
    assert meta["data"]["generators"] == ["tconv"]
    lines = [json.loads(ln) for ln in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [ln["epoch"] for ln in lines] == list(range(1, EPOCHS + 1))
    assert all({"loss", "supcon", "bce", "train_acc", "val_acc", "val_ap"} <= set(ln) for ln in lines)
    assert lines[-1]["loss"] < lines[0]["loss"]


def test_checkpoint_scores_like_the_evaluation(trained, synth, report) -> None:
    """The saved weights + the SDK's preprocessing reproduce the evaluated accuracy."""
    model = NSNet.from_checkpoint(trained)
    paths = sorted((synth / "tconv" / "val").rglob("*.png"))
    x = torch.from_numpy(np.stack([preprocess(load_image(p)) for p in paths]))
    with torch.no_grad():
        pred = (torch.sigmoid(model(x)) >= 0.5).numpy()
    labels = np.array([p.parent.name == "ai" for p in paths])
    acc = float(np.mean(pred == labels))
    assert acc == pytest.approx(json.loads((report / "metrics.json").read_text())["overall"]["acc"])


def test_resume_continues_exactly(synth, tmp_path) -> None:
    straight = tiny_run(tmp_path / "straight", *TRAIN_FLAGS, data=synth, epochs=4)
    resumed = tiny_run(tmp_path / "resumed", *TRAIN_FLAGS, data=synth, epochs=2)
    tiny_run(tmp_path / "resumed", *TRAIN_FLAGS, "--resume", data=synth, epochs=4)
    a = load_file(str(straight / "nsnet.safetensors"))
    b = load_file(str(resumed / "nsnet.safetensors"))
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    assert len((resumed / "metrics.jsonl").read_text().splitlines()) == 4



def test_resume_continues_exactly_end_to_end(tmp_path) -> None:
    """Without --cache-features every epoch re-reads (and re-shuffles) the images: the shuffle of
    an epoch must not depend on how many epochs this process ran before it."""
    data = write_dataset(tmp_path / "data", ["tconv"], n_train=8, n_val=0, size=64, seed=0, progress=False)
    flags = ("--batch-size", "4", "--lr", "1e-3", "--seed", "0", "--threads", "1")
    straight = tiny_run(tmp_path / "straight", *flags, data=data, epochs=2)
    tiny_run(tmp_path / "resumed", *flags, data=data, epochs=1)
    resumed = tiny_run(tmp_path / "resumed", *flags, "--resume", data=data, epochs=2)
    a = load_file(str(straight / "nsnet.safetensors"))
    b = load_file(str(resumed / "nsnet.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_drops_log_records_of_an_epoch_without_checkpoint(tmp_path) -> None:
    data = write_dataset(tmp_path / "data", ["tconv"], n_train=4, n_val=2, size=64, seed=0, progress=False)
    flags = ("--cache-features", "--batch-size", "4", "--threads", "1")
    run = tiny_run(tmp_path / "run", *flags, data=data, epochs=2)
    log_path = run / "metrics.jsonl"
    # The run died after logging epoch 3, before its checkpoint; the last line is torn.
    log_path.write_text(log_path.read_text() + json.dumps({"epoch": 3, "loss": 9.0}) + "\n" + '{"epoch": 4, "lo')
    tiny_run(run, *flags, "--resume", data=data, epochs=3)
    records = [json.loads(ln) for ln in log_path.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3] and records[2]["loss"] != 9.0

@pytest.fixture(scope="module")
def own_reals(tmp_path_factory):
    """A plain folder of real images (no dataset layout), none of them in ``synth``."""
    other = write_dataset(tmp_path_factory.mktemp("other"), ["tconv"], n_train=0, n_val=16, seed=7, progress=False)
    folder = tmp_path_factory.mktemp("own_reals")
    for p in sorted((other / "tconv" / "val" / "nature").glob("*.png")):
        shutil.copy(p, folder / p.name)
    (folder / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff")  # reported as skipped, not fatal
    return folder


def test_calibrate_fpr_leaves_the_checkpoint_alone_by_default(trained, synth, own_reals, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = (run / "nsnet.json").read_bytes()
    out = tmp_path / "rep"
    assert evaluate_main(["--ckpt", str(run), "--data", str(synth), "--out", str(out), "--quiet",
                          "--calibrate-fpr", "0.1", "--calibration", str(own_reals)]) == 0
    assert (run / "nsnet.json").read_bytes() == before
    cal = json.loads((out / "calibration.json").read_text())
    assert cal["n_real"] == 16 and cal["skipped"] == 1 and list(cal["skipped_files"]) == [str(own_reals / "zz_broken.jpg")]
    assert cal["written_to"] is None and cal["previous_threshold"] == 0.5 and not cal["on_eval_data"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["threshold"] == cal["threshold"] != 0.5 and summary["threshold_calibrated"]
    # the threshold really gives FPR <= 0.1 on those reals
    model = NSNet.from_checkpoint(run)
    x = torch.from_numpy(np.stack([preprocess(load_image(p)) for p in sorted(own_reals.glob("*.png"))]))
    with torch.no_grad():
        probs = torch.sigmoid(model(x)).numpy()
    # (the threshold sits just above one real's score: allow for batch-size rounding between the two paths)
    assert np.mean(probs >= cal["threshold"] + 1e-5) <= 0.1


def test_calibration_leaves_out_images_whose_score_says_little(trained, synth, own_reals, tmp_path) -> None:
    """A 10x10 real image (its few pixels repeated to fill the mosaic) must not set the threshold."""
    import cv2

    reals = tmp_path / "reals"
    shutil.copytree(own_reals, reals)
    assert cv2.imwrite(str(reals / "tiny.png"), np.full((10, 10, 3), 200, np.uint8))
    out = tmp_path / "rep"
    assert evaluate_main(["--ckpt", str(trained), "--data", str(synth), "--out", str(out), "--quiet",
                          "--calibrate-fpr", "0.1", "--calibration", str(reals)]) == 0
    cal = json.loads((out / "calibration.json").read_text())
    assert cal["n_real"] == 16 and cal["left_out_low_information"] == 1 and cal["skipped"] == 2
    assert "left out of calibration" in cal["skipped_files"][str(reals / "tiny.png")]


def test_write_threshold_stores_it_in_the_checkpoint(trained, synth, own_reals, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    out = tmp_path / "rep"
    assert evaluate_main(["--ckpt", str(run), "--data", str(synth), "--out", str(out), "--quiet",
                          "--calibrate-fpr", "0.1", "--calibration", str(own_reals), "--write-threshold"]) == 0
    meta = json.loads((run / "nsnet.json").read_text())
    cal = json.loads((out / "calibration.json").read_text())
    assert meta["threshold"] == cal["threshold"] != 0.5 and cal["written_to"] == str(run / "nsnet.json")
    assert meta["calibration"]["fpr"] == 0.1 and meta["calibration"]["n_real"] == 16
    assert meta["calibration"]["skipped"] == 1
    card = meta["model_card"]
    assert card["threshold"] == meta["threshold"] and card["threshold_source"] == f"calibrated at FPR 0.1 on {own_reals}"


@pytest.mark.parametrize("where", ["same", "inside"])
def test_calibrating_on_the_evaluated_data_needs_saying_so(trained, synth, tmp_path, where) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    cal = synth if where == "same" else synth / "tconv"
    argv = ["--ckpt", str(run), "--data", str(synth), "--out", str(tmp_path / "rep"), "--quiet",
            "--calibrate-fpr", "0.1", "--calibration", str(cal)]
    with pytest.raises(SystemExit) as e:
        evaluate_main(argv)
    assert e.value.code == 2 and not (tmp_path / "rep").exists()
    with pytest.raises(SystemExit) as e:  # no calibration folder at all
        evaluate_main(argv[:-2])
    assert e.value.code == 2
    assert evaluate_main(argv + ["--calibrate-on-eval-data"]) == 0
    doc = json.loads((tmp_path / "rep" / "calibration.json").read_text())
    assert doc["on_eval_data"] and doc["n_real"] == 32
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert metrics["overall"]["real_acc"] >= 0.9  # FPR <= 0.1 on the calibration reals (= these reals)
    assert json.loads((run / "nsnet.json").read_text())["threshold"] == 0.5


def test_missing_calibration_folder_is_a_usage_error(trained, synth, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        evaluate_main(["--ckpt", str(trained), "--data", str(synth), "--out", str(tmp_path / "rep"), "--quiet",
                       "--calibrate-fpr", "0.1", "--calibration", str(tmp_path / "missing")])
    assert e.value.code == 2 and "--calibration" in capsys.readouterr().err


def test_robustness_tables(trained, synth, tmp_path) -> None:
    out = tmp_path / "rob"
    assert evaluate_main(["--ckpt", str(trained), "--data", str(synth), "--out", str(out), "--quiet",
                          "--robustness"]) == 0
    rob = json.loads((out / "robustness.json").read_text())
    assert list(rob) == list(PERTURBATIONS) == ["jpeg95", "jpeg75", "jpeg50", "blur1", "blur2", "down0.5"]
    assert all(r["overall"]["n"] == 64 for r in rob.values())
    clean = json.loads((out / "metrics.json").read_text())["overall"]
    # Blur wipes out a 2-pixel-period checkerboard: the perturbation really reached the pixels.
    assert rob["blur2"]["overall"]["fake_acc"] != clean["fake_acc"] or rob["blur2"]["overall"]["ap"] != clean["ap"]
    table = (out / "table.md").read_text()
    assert all(f"### {name}" in table for name in ["clean", *PERTURBATIONS])



def test_robustness_warns_once_per_unreadable_file(trained, synth, tmp_path, caplog) -> None:
    import logging

    data = tmp_path / "data"
    shutil.copytree(synth / "tconv" / "val", data / "tconv" / "val")
    (data / "tconv" / "val" / "ai" / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00")
    with caplog.at_level(logging.WARNING, logger="training"):
        assert evaluate_main(["--ckpt", str(trained), "--data", str(data), "--out", str(tmp_path / "rob"),
                              "--quiet", "--robustness"]) == 0
    warned = [r for r in caplog.records if "zz_broken.png" in r.getMessage()]
    assert len(warned) == 1
    assert json.loads((tmp_path / "rob" / "summary.json").read_text())["skipped"] == 1
    assert all(r["overall"]["n"] == 64 for r in json.loads((tmp_path / "rob" / "robustness.json").read_text()).values())

def test_lora_end_to_end_with_augmentation(synth, tmp_path) -> None:
    run = tiny_run(tmp_path / "lora", "--lora-rank", "2", "--batch-size", "16", "--lr", "1e-3",
                   "--jpeg-prob", "0.5", "--blur-prob", "0.5", "--generators", "tconv", data=synth, epochs=1)
    init = tiny_run(tmp_path / "init")
    trained, start = load_file(str(run / "nsnet.safetensors")), load_file(str(init / "nsnet.safetensors"))
    assert set(trained) == set(start), "LoRA must be merged into the plain weights"
    changed = [k for k in start if k.startswith("visual.transformer") and not torch.equal(trained[k], start[k])]
    assert changed, "LoRA training must change the transformer weights"
    assert torch.equal(trained["visual.conv1.weight"], start["visual.conv1.weight"])  # not adapted
    assert (run / "train_state.safetensors").is_file()
    tiny_run(run, "--lora-rank", "2", "--batch-size", "16", "--resume", data=synth, epochs=2)
    assert json.loads((run / "nsnet.json").read_text())["training"]["epochs"] == 2
    NSNet.from_checkpoint(run)
