"""The model card every artifact carries, the two-threshold verdict band, the random-weights
warning and threshold re-stamping (metadata only, weights untouched, never in place by surprise)."""
from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from _sdk_util import build_stand_in_onnx, contract_metadata, textured, tiny_export, write_engine_pair
from nsnet_sdk import Detector, InputOptions, ModelLoadError, RandomWeightsWarning
from nsnet_sdk.artifact import read_model_meta, read_onnx_metadata, read_sidecar
from nsnet_sdk.restamp import restamp
from nsnet_sdk.cli import main as nsnet

BAND = {"t_real": 0.3, "t_fake": 0.6, "fpr": 0.05, "fnr": 0.1, "source": "calibrated on /data/cal"}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def card_metadata(**card) -> dict[str, str]:
    return dict(contract_metadata(), **{"nsnet.model_card": json.dumps(card)})


# -- model card --------------------------------------------------------------------------------

def test_run_directory_and_its_export_carry_the_model_card():
    tiny = tiny_export()
    doc = json.loads((tiny["run"] / "nsnet.json").read_text())
    card = doc["model_card"]
    assert card["backbone"] == "nsnet-tiny" and card["pretrained"] == "none"
    assert card["source_sha256"] == sha256(tiny["run"] / "nsnet.safetensors")
    assert card["threshold"] == doc["threshold"] and card["threshold_source"] == "default 0.5"
    assert datetime.fromisoformat(card["created"]).tzinfo is not None
    assert card["training_data"]["n_images"] == doc["data"]["n_images"]
    exported = json.loads(read_onnx_metadata(tiny["onnx"])["nsnet.model_card"])
    assert exported["source_sha256"] == sha256(tiny["run"] / "nsnet.safetensors")
    assert {k: exported[k] for k in ("backbone", "pretrained", "training_data", "threshold_source")} == \
        {k: card[k] for k in ("backbone", "pretrained", "training_data", "threshold_source")}


def test_save_checkpoint_fills_data_counts_and_last_validation_figures(tmp_path):
    import training  # noqa: F401  (registers nsnet-tiny)
    from nsnet_sdk.model import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(tiny_export()["run"])
    run = tmp_path / "run"
    run.mkdir()
    epochs = [{"epoch": 1, "loss": 0.9, "val_auc": 0.61, "val_acc": 0.55},
              {"epoch": 2, "loss": 0.7, "val_auc": 0.83, "val_acc": 0.74}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    data = {"n_images": 30, "skipped": 0, "generators": ["real", "sdv4"], "n_real": 10, "n_fake": 20,
            "generator_counts": {"real": 10, "sdv4": 20}}
    save_checkpoint(model, run, dict(meta, data=data, model_card={}))
    card = json.loads((run / "nsnet.json").read_text())["model_card"]
    assert card["training_data"]["generator_counts"] == {"real": 10, "sdv4": 20}
    assert card["validation"] == {"auc": 0.83, "acc": 0.74, "epoch": 2}
    assert card["source_sha256"] == sha256(run / "nsnet.safetensors")


def test_calibration_record_sets_the_threshold_source(tmp_path):
    from nsnet_sdk.model.checkpoint import update_meta

    run = Path(shutil.copytree(tiny_export()["run"], tmp_path / "run"))
    update_meta(run, threshold=0.42, calibration={"fpr": 0.05, "data": "/cal/real", "n_real": 9})
    meta = read_model_meta(run)
    assert meta.threshold == 0.42 and meta.model_card["threshold"] == 0.42
    assert meta.model_card["threshold_source"] == "calibrated at FPR 0.05 on /cal/real"


def test_nsnet_info_prints_the_card_in_both_forms(capsys):
    onnx = tiny_export()["onnx"]
    assert nsnet(["info", str(onnx), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model_card"] == json.loads(read_onnx_metadata(onnx)["nsnet.model_card"])
    assert nsnet(["info", str(onnx)]) == 0
    out = capsys.readouterr().out
    assert "model card:" in out and "threshold_source" in out and info["model_card"]["source_sha256"] in out


def test_random_backbone_warns_once_per_model(tmp_path):
    rnd = build_stand_in_onnx(tmp_path / "rnd.onnx", metadata=card_metadata(pretrained="none",
                                                                             source_sha256="ab" * 32))
    real = build_stand_in_onnx(tmp_path / "real.onnx", metadata=card_metadata(pretrained="openai",
                                                                              source_sha256="cd" * 32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Detector(rnd, options=InputOptions(workers=0)).close()
        Detector(rnd, options=InputOptions(workers=0)).close()
        Detector(real, options=InputOptions(workers=0)).close()
    hits = [w for w in caught if issubclass(w.category, RandomWeightsWarning)]
    assert len(hits) == 1 and "rnd.onnx" in str(hits[0].message)


def test_cli_notes_a_random_backbone_in_one_stderr_line(tmp_path, capsys):
    rnd = build_stand_in_onnx(tmp_path / "rnd.onnx", metadata=card_metadata(pretrained="none",
                                                                             source_sha256="ef" * 32))
    assert nsnet(["info", str(rnd)]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("nsnet: warning:") and "random weights" in err[0]


# -- verdict band ------------------------------------------------------------------------------

def test_band_sets_three_way_verdicts_and_absent_band_leaves_none(tmp_path):
    banded = build_stand_in_onnx(tmp_path / "b.onnx", metadata=dict(
        contract_metadata(), **{"nsnet.verdict_band": json.dumps(BAND)}))
    plain = build_stand_in_onnx(tmp_path / "p.onnx")
    images = [textured(64 + 9 * i, 80 + 7 * i, seed=i) for i in range(24)]
    with Detector(banded, options=InputOptions(workers=0)) as det:
        assert det.meta.band is not None and det.meta.band.to_dict() == BAND
        preds = det.predict(images)
    want = ["ai-generated" if p.prob_fake >= BAND["t_fake"] else "real" if p.prob_fake < BAND["t_real"]
            else "uncertain" for p in preds]
    assert [p.verdict for p in preds] == want
    assert len(set(want)) >= 2, "the stand-in's scores should straddle the band; pick other images"
    with Detector(plain, options=InputOptions(workers=0)) as det:
        assert det.meta.band is None and all(p.verdict is None for p in det.predict(images))


# -- re-stamping -------------------------------------------------------------------------------

def _graph_bytes(path: Path) -> bytes:
    import onnx

    return onnx.load(str(path)).graph.SerializeToString()


def test_restamp_onnx_rewrites_metadata_only(tmp_path):
    src = Path(shutil.copy(tiny_export()["onnx"], tmp_path / "m.onnx"))
    before = src.read_bytes()
    out = restamp(src, threshold=0.7, band=BAND, source="calibrated at FPR 0.01 on /x", out=tmp_path / "n.onnx")
    assert src.read_bytes() == before, "the source model must be untouched"
    assert _graph_bytes(out) == _graph_bytes(src)
    old, new = read_onnx_metadata(src), read_onnx_metadata(out)
    assert float(new["nsnet.threshold"]) == 0.7 and json.loads(new["nsnet.verdict_band"]) == BAND
    card = json.loads(new["nsnet.model_card"])
    assert card["threshold"] == 0.7 and card["threshold_source"] == "calibrated at FPR 0.01 on /x"
    assert {k: v for k, v in new.items() if k not in ("nsnet.threshold", "nsnet.model_card", "nsnet.verdict_band")} \
        == {k: v for k, v in old.items() if k not in ("nsnet.threshold", "nsnet.model_card")}
    imgs = [textured(90, 120, seed=s) for s in range(3)]
    with Detector(src, options=InputOptions(workers=0)) as a, Detector(out, options=InputOptions(workers=0)) as b:
        assert b.threshold == 0.7
        np.testing.assert_array_equal([p.logit for p in a.predict(imgs)], [p.logit for p in b.predict(imgs)])


def test_restamp_refuses_in_place_without_overwrite(tmp_path):
    src = build_stand_in_onnx(tmp_path / "m.onnx")
    before = src.read_bytes()
    for out in (None, src, tmp_path / "." / "m.onnx"):
        with pytest.raises(ModelLoadError, match="in place"):
            restamp(src, threshold=0.2, source="x", out=out)
    other = build_stand_in_onnx(tmp_path / "other.onnx")
    with pytest.raises(ModelLoadError, match="exists"):
        restamp(src, threshold=0.2, source="x", out=other)
    assert src.read_bytes() == before
    restamp(src, threshold=0.2, source="x", overwrite=True)
    assert read_model_meta(src).threshold == 0.2


def test_restamp_run_directory_and_engine_sidecar(tmp_path):
    run = tiny_export()["run"]
    new = restamp(run, threshold=0.35, source="hand", out=tmp_path / "run2")
    assert (new / "nsnet.safetensors").read_bytes() == (run / "nsnet.safetensors").read_bytes()
    meta = read_model_meta(new)
    assert meta.threshold == 0.35 and meta.model_card["threshold_source"] == "hand"
    assert read_model_meta(run).threshold == 0.5
    eng = write_engine_pair(tmp_path / "m.engine", contract_metadata())
    blob = eng.read_bytes()
    restamp(eng, threshold=0.9, band=BAND, source="hand", overwrite=True)
    side = read_sidecar(eng)
    assert eng.read_bytes() == blob and float(side["nsnet.threshold"]) == 0.9
    assert side["nsnet.trt.max_batch"] == "32" and read_model_meta(eng).band.t_fake == BAND["t_fake"]


def test_cli_set_threshold_needs_out_or_in_place(tmp_path, capsys):
    src = build_stand_in_onnx(tmp_path / "m.onnx")
    with pytest.raises(SystemExit) as e:
        nsnet(["info", str(src), "--set-threshold", "0.8"])
    assert e.value.code == 2
    assert read_model_meta(src).threshold == 0.5
    assert nsnet(["info", str(src), "--set-threshold", "0.8", "--out", str(tmp_path / "n.onnx"),
                  "--threshold-source", "calibrated at FPR 0.02 on /cal"]) == 0
    meta = read_model_meta(tmp_path / "n.onnx")
    assert meta.threshold == 0.8 and meta.model_card["threshold_source"] == "calibrated at FPR 0.02 on /cal"
