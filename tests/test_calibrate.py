"""The two-threshold verdict band: its rates hold on the calibration scores, each threshold is the
extreme one that does, and `nsnet calibrate` stores it where `Detector` reads it."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from nsnet_sdk.calibrate import calibrate_band

probs = st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=60)
rates = st.floats(0, 0.5)


@settings(max_examples=300, deadline=None)
@given(probs, probs, rates, rates)
def test_band_meets_its_rates_with_the_extreme_thresholds(real, fake, fpr, fnr):
    b = calibrate_band(real, fake, fpr=fpr, fnr=fnr)
    r, f = np.asarray(real), np.asarray(fake)
    assert 0 <= b["t_real"] <= b["t_fake"] <= 1
    assert np.mean(r >= b["t_fake"]) <= fpr + 1e-12 or b["t_fake"] == 1.0 and r.max() == 1.0
    assert np.mean(f < b["t_real"]) <= fnr + 1e-12
    assert b["real_flagged"] == np.mean(r >= b["t_fake"]) and b["fake_missed"] == np.mean(f < b["t_real"])
    if b["t_real"] < b["t_fake"]:  # an open band: neither threshold could move towards the other
        below = np.nextafter(b["t_fake"], -np.inf)
        assert np.mean(r >= below) > fpr
        above = np.nextafter(b["t_real"], np.inf)
        assert np.mean(f < above) > fnr


def test_overlapping_scores_open_an_uncertain_band():
    rng = np.random.default_rng(0)
    real, fake = rng.beta(2, 5, 2000), rng.beta(5, 2, 2000)
    b = calibrate_band(real, fake, fpr=0.01, fnr=0.05, source="test")
    assert b["t_real"] < b["t_fake"]
    assert b["real_flagged"] <= 0.01 and b["fake_missed"] <= 0.05
    assert b["real_uncertain"] > 0.1 and b["fake_uncertain"] > 0.1
    assert b["source"] == "test" and b["n_real"] == b["n_fake"] == 2000


def test_separated_scores_close_the_band_between_them():
    b = calibrate_band([0.1, 0.2, 0.3], [0.7, 0.8, 0.9], fpr=0.0, fnr=0.0)
    assert b["t_real"] == b["t_fake"]
    assert 0.3 < b["t_fake"] <= 0.7
    assert b["real_uncertain"] == b["fake_uncertain"] == 0.0


@pytest.mark.parametrize("kw,msg", [
    ({"real": [], "fake": [0.5]}, "no scored real"),
    ({"real": [0.5], "fake": [float("nan")]}, "fake scores"),
    ({"real": [0.5], "fake": [0.5], "fpr": 1.0}, "fpr"),
])
def test_bad_calibration_input_is_refused(kw, msg):
    args = {"fpr": 0.01, "fnr": 0.05} | kw
    with pytest.raises(ValueError, match=msg):
        calibrate_band(args.pop("real"), args.pop("fake"), **args)


def test_cli_calibrate_stores_the_band_the_detector_uses(tmp_path, capsys):
    pytest.importorskip("onnx")
    from _sdk_util import build_stand_in_onnx, textured, write_png

    from nsnet_sdk import Detector, InputOptions
    from nsnet_sdk.cli import main

    model = build_stand_in_onnx(tmp_path / "m.onnx")
    for label, seeds in (("real", range(0, 12)), ("fake", range(12, 24))):
        (tmp_path / label).mkdir()
        for s in seeds:
            write_png(tmp_path / label / f"{s}.png", textured(96, 96 + 8 * s, seed=s))
    out = tmp_path / "calibrated.onnx"
    capsys.readouterr()
    assert main(["calibrate", "-m", str(model), "--real", str(tmp_path / "real"), "--fake",
                 str(tmp_path / "fake"), "--fpr", "0.1", "--fnr", "0.1", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    with Detector(model, options=InputOptions(workers=0)) as det:
        real = [p.prob_fake for p in det.predict(sorted((tmp_path / "real").iterdir()))]
        fake = [p.prob_fake for p in det.predict(sorted((tmp_path / "fake").iterdir()))]
        assert all(p.verdict is None for p in det.predict(sorted((tmp_path / "real").iterdir())))
    expect = calibrate_band(real, fake, fpr=0.1, fnr=0.1)
    assert (printed["t_real"], printed["t_fake"]) == (expect["t_real"], expect["t_fake"])
    with Detector(out, options=InputOptions(workers=0)) as det:
        preds = det.predict(sorted((tmp_path / "real").iterdir()) + sorted((tmp_path / "fake").iterdir()))
        band = det.meta.band
    assert (band.t_real, band.t_fake) == (expect["t_real"], expect["t_fake"])
    for p in preds:
        want = ("ai-generated" if p.prob_fake >= band.t_fake else "real" if p.prob_fake < band.t_real
                else "uncertain")
        assert p.verdict == want
    with Detector(model, options=InputOptions(workers=0)) as det:  # --out wrote a copy; the original is untouched
        assert det.meta.band is None


# -- what a band achieves, with its uncertainty -------------------------------------------------------

@pytest.mark.parametrize("k,n", [(0, 10), (1, 10), (5, 10), (10, 10), (3, 32), (0, 1000), (7, 20_000), (19_990, 20_000)])
def test_clopper_pearson_matches_the_beta_quantiles(k, n):
    beta = pytest.importorskip("scipy.stats").beta
    from nsnet_sdk.calibrate import clopper_pearson

    lo, hi = clopper_pearson(k, n)
    assert lo == pytest.approx(0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1), abs=1e-9)
    assert hi == pytest.approx(1.0 if k == n else beta.ppf(0.975, k + 1, n - k), abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(probs, probs, rates, rates)
def test_achieved_rates_lie_in_their_intervals(real, fake, fpr, fnr):
    b = calibrate_band(real, fake, fpr=fpr, fnr=fnr)
    for rate, (lo, hi) in ((b["real_flagged"], b["real_flagged_ci"]), (b["fake_missed"], b["fake_missed_ci"])):
        assert 0 <= lo <= rate <= hi <= 1
    assert b["confidence"] == 0.95


def test_too_few_real_images_for_the_rate_is_said():
    rng = np.random.default_rng(3)
    small = calibrate_band(rng.random(32), rng.random(500), fpr=0.01, fnr=0.05)
    assert any("32 real images are too few for --fpr 0.01" in w for w in small["warnings"])
    assert small["real_flagged_ci"][1] > 0.1  # 0 of 32 flagged still allows a rate above 10 %
    big = calibrate_band(rng.random(1000), rng.random(200), fpr=0.01, fnr=0.05)
    assert big["warnings"] == []


# -- nsnet calibrate --labels, and what it leaves in the model card ------------------------------------

@pytest.fixture()
def scored(tmp_path):
    """A stand-in model, 24 images scored by it, and one 10x10 image (its score says little)."""
    pytest.importorskip("onnx")
    from _sdk_util import build_stand_in_onnx, textured, write_png

    from nsnet_sdk import Detector, InputOptions

    model = build_stand_in_onnx(tmp_path / "m.onnx")
    files = []
    for label, seeds in (("real", range(0, 12)), ("fake", range(12, 24))):
        (tmp_path / label).mkdir()
        for s in seeds:
            files.append((label, tmp_path / label / f"{s}.png"))
            write_png(files[-1][1], textured(96, 96 + 8 * s, seed=s))
    write_png(tmp_path / "real" / "tiny.png", textured(10, 10, seed=99))
    with Detector(model, options=InputOptions(workers=0)) as det:
        preds = {str(p.source): p for p in det.predict([f for _, f in files])}
    return {"model": model, "files": files, "preds": preds, "root": tmp_path}


def _labels_file(path, scored, model_sha, labels):
    import hashlib

    with open(path, "w") as f:
        for (truth, file), lab in zip(scored["files"], labels):
            lab = lab or {"real": "real", "fake": "ai-generated"}[truth]
            day = {"real": 14, "ai-generated": 22, "skip": 30}[lab]  # skips are not calibration data
            f.write(json.dumps({"source": str(file), "sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
                                "model_sha256": model_sha, "prob_fake": scored["preds"][str(file)].prob_fake,
                                "label": lab, "note": "", "time": f"2026-11-{day}T00:00:00Z"}) + "\n")
    return path


def test_calibrate_from_labels_sets_the_band_from_the_reviewed_scores(scored, tmp_path, capsys):
    from nsnet_sdk import Detector, InputOptions
    from nsnet_sdk.cli import main
    from nsnet_sdk.artifact import model_sha256

    sha = model_sha256(scored["model"])
    labels = ["skip"] + [None] * (len(scored["files"]) - 1)  # the first file skipped, the rest as they are
    lab = _labels_file(tmp_path / "labels.jsonl", scored, sha, labels)
    out = tmp_path / "cal.onnx"
    capsys.readouterr()
    assert main(["calibrate", "-m", str(scored["model"]), "--labels", str(lab), "--fpr", "0.1", "--fnr", "0.1",
                 "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    real = [scored["preds"][str(f)].prob_fake for t, f in scored["files"][1:] if t == "real"]
    fake = [scored["preds"][str(f)].prob_fake for t, f in scored["files"][1:] if t == "fake"]
    expect = calibrate_band(real, fake, fpr=0.1, fnr=0.1)
    assert (printed["t_real"], printed["t_fake"], printed["n_real"], printed["n_fake"]) == (
        expect["t_real"], expect["t_fake"], 11, 12)
    assert printed["real_flagged_ci"] == expect["real_flagged_ci"] and printed["warnings"] == expect["warnings"]
    with Detector(out, options=InputOptions(workers=0)) as det:
        band, card = det.meta.band, det.meta.model_card
    assert (band.t_real, band.t_fake) == (expect["t_real"], expect["t_fake"])
    cal = card["calibration"]
    assert (cal["n_real"], cal["n_fake"], cal["source"]) == (11, 12, f"labels={lab}")
    assert cal["date_range"] == ["2026-11-14T00:00:00Z", "2026-11-22T00:00:00Z"]
    # The calibrated copy has the same weights: it accepts the labels of the model it came from.
    assert cal["model_sha256"] == sha
    assert main(["calibrate", "-m", str(out), "--labels", str(lab), "--fpr", "0.1", "--fnr", "0.1"]) == 0
    # Labels scored by another model are refused; the model is not written.
    other = _labels_file(tmp_path / "other.jsonl", scored, "f" * 64, [None] * len(scored["files"]))
    assert main(["calibrate", "-m", str(scored["model"]), "--labels", str(other), "--out",
                 str(tmp_path / "no.onnx")]) == 1
    assert "another model" in capsys.readouterr().err and not (tmp_path / "no.onnx").exists()


def test_calibrate_keeps_the_threshold_source_and_leaves_out_low_information(scored, tmp_path, capsys):
    from nsnet_sdk import Detector, InputOptions
    from nsnet_sdk.cli import main

    with Detector(scored["model"], options=InputOptions(workers=0)) as det:
        before = det.meta.model_card.get("threshold_source")
    out = tmp_path / "cal.onnx"
    capsys.readouterr()
    root = scored["root"]
    assert main(["calibrate", "-m", str(scored["model"]), "--real", str(root / "real"), "--fake", str(root / "fake"),
                 "--fpr", "0.1", "--fnr", "0.1", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed["n_real"] == 12 and printed["left_out"] == 1  # tiny.png is not calibration data
    assert "1 input left out: their score says little" in captured.err
    assert "12 real images are too few for --fpr 0.1" in captured.err
    with Detector(out, options=InputOptions(workers=0)) as det:
        card = det.meta.model_card
    # The band does not change the single threshold, so how that was chosen stays as it was.
    assert card.get("threshold_source") == before
    assert card["calibration"]["left_out"] == 1 and card["calibration"]["date_range"] is None
    assert card["calibration"]["real_flagged_ci"] == printed["real_flagged_ci"]
