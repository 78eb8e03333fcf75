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
