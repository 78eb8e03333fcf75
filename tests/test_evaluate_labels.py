"""``python -m training.evaluate --labels``: metrics of reviewed rows at a model's operating point,
computed from the labels' own scores (nothing is scored again)."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("onnx")


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_labels_metrics_at_the_models_band(tmp_path, capsys):
    from sklearn.metrics import average_precision_score

    from _sdk_util import build_stand_in_onnx, contract_metadata
    from nsnet_sdk.artifact import model_sha256
    from training.evaluate import main

    band = {"t_real": 0.3, "t_fake": 0.7, "fpr": 0.05, "fnr": 0.05, "source": "test"}
    model = build_stand_in_onnx(tmp_path / "m.onnx", metadata=contract_metadata(threshold=0.6)
                                | {"nsnet.verdict_band": json.dumps(band)})
    sha = model_sha256(model)
    rng = np.random.default_rng(4)
    real, fake = rng.beta(2, 5, 300), rng.beta(5, 2, 200)
    rows = [{"source": f"r{i}.png", "sha256": f"{i:064x}", "model_sha256": sha, "prob_fake": float(p),
             "label": "real", "note": "", "time": "2026-12-01T00:00:00Z"} for i, p in enumerate(real)]
    rows += [{"source": f"f{i}.png", "sha256": f"{1000 + i:064x}", "model_sha256": sha, "prob_fake": float(p),
              "label": "ai-generated", "note": "", "time": "2026-12-01T00:00:00Z"} for i, p in enumerate(fake)]
    rows.append(dict(rows[0], sha256="e" * 64, label="skip"))
    labels = _write(tmp_path / "labels.jsonl", rows)
    capsys.readouterr()
    assert main(["--labels", str(labels), "--model", str(model), "--out", str(tmp_path / "rep")]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == json.loads((tmp_path / "rep" / "labels_metrics.json").read_text())
    assert got["threshold"] == 0.6 and got["band"] == band and got["n"] == 500 and got["left_out"]["skip"] == 1
    acc = (np.sum(real < 0.6) + np.sum(fake >= 0.6)) / 500
    assert got["acc"] == pytest.approx(acc)
    assert got["ap"] == pytest.approx(average_precision_score([0] * 300 + [1] * 200, np.r_[real, fake]))
    assert got["fpr"]["rate"] == pytest.approx(np.mean(real >= 0.6)) and got["fpr"]["n"] == 300
    assert got["band_fpr"]["rate"] == pytest.approx(np.mean(real >= 0.7))
    assert got["band_fnr"]["rate"] == pytest.approx(np.mean(fake < 0.3))
    lo, hi = got["fpr"]["ci95"]
    assert lo <= got["fpr"]["rate"] <= hi
    # Labels scored by another model are refused.
    _write(tmp_path / "other.jsonl", [dict(rows[0], model_sha256="0" * 64)])
    with pytest.raises(SystemExit, match="another model"):
        main(["--labels", str(tmp_path / "other.jsonl"), "--model", str(model)])
    with pytest.raises(SystemExit):  # --labels does not mix with a checkpoint evaluation
        main(["--labels", str(labels), "--ckpt", str(tmp_path), "--data", str(tmp_path)])
