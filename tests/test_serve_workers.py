"""`Detector.keep_workers`, which a service replica decodes with: worker processes started once
serve every later call, and a worker that a crashing input killed is replaced for the next call."""
from __future__ import annotations

import pytest
from _sdk_util import build_stand_in_onnx, stand_in_logit, textured, write_png
from test_decode_pool import _KillsWorker

from nsnet_sdk import Detector, InputOptions
from nsnet_sdk.pipeline import load_image, preprocess


def _pids(det: Detector) -> set[int]:
    (decoder,) = det._kept.values()
    return set(decoder._pool._processes)


def test_kept_workers_serve_later_calls_and_survive_a_crash(tmp_path):
    model = build_stand_in_onnx(tmp_path / "m.onnx")
    good = [write_png(tmp_path / f"g{i}.png", textured(64 + 8 * i, 80, i)) for i in range(4)]
    opts = InputOptions(workers=1, batch_size=4, executor="processes")
    with Detector(model, options=opts).keep_workers() as det:
        first = det.predict(good[:2])
        pids = _pids(det)
        assert det.predict(good[2:]) and _pids(det) == pids  # the same worker process
        crashed = det.predict([good[0], _KillsWorker()])  # the pool breaks at the end of a call
        after = det.predict(good)
    assert [p.error is None for p in first + crashed] == [True, True, True, False]
    for p, path in zip(after, good):  # the next call got a working pool: every input scored
        assert p.error is None, p.error
        assert p.logit == pytest.approx(float(stand_in_logit(preprocess(load_image(path))[None])[0]), abs=1e-4)
