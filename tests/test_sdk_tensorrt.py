"""TensorRT backend. The GPU tests need tensorrt, cuda-python and a CUDA device and skip with the
reason otherwise; batch splitting and the sidecar are checked everywhere."""
from __future__ import annotations

import json

import numpy as np
import pytest

from _sdk_util import contract_metadata, tiny_export, write_engine_pair
from nsnet_sdk import Detector
from nsnet_sdk.artifact import ModelMeta, artifact_kind
from nsnet_sdk.backends.tensorrt import TensorRTBackend, read_sidecar


def _gpu_skip_reason() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed (pip install 'nsnet-sdk[gpu]')"
    try:
        from nsnet_sdk.backends.tensorrt import _import_cudart
        cudart = _import_cudart()
    except ImportError:
        return "cuda-python is not installed"
    err, n = cudart.cudaGetDeviceCount()
    if int(err) != 0 or n < 1:
        return "no CUDA device"
    return None


GPU_REASON = _gpu_skip_reason()
needs_gpu = pytest.mark.skipif(GPU_REASON is not None, reason=f"TensorRT backend: {GPU_REASON}")


def test_engine_paths_select_tensorrt_and_sidecar_metadata_parses(tmp_path):
    for name in ("nsnet.engine", "model.plan"):
        eng = write_engine_pair(tmp_path / name, contract_metadata(threshold=0.3))
        assert artifact_kind(eng) == "tensorrt"
        side = read_sidecar(eng)
        assert side["nsnet.trt.max_batch"] == "32" and side["nsnet.precision"] == "fp16"
        meta = ModelMeta.parse(side, str(eng))
        assert meta.threshold == 0.3 and meta.precision == "fp16"
    (tmp_path / "bad.engine").write_bytes(b"x")
    (tmp_path / "bad.engine.json").write_text("[1, 2]")
    from nsnet_sdk import ModelLoadError
    with pytest.raises(ModelLoadError, match="not a JSON object"):
        read_sidecar(tmp_path / "bad.engine")


def test_batches_are_split_at_the_profile_maximum_in_order():
    backend = TensorRTBackend.__new__(TensorRTBackend)  # no GPU: only the splitting logic runs
    backend.max_batch = 3
    seen: list[int] = []

    def fake_chunk(chunk: np.ndarray) -> np.ndarray:
        seen.append(len(chunk))
        return chunk[:, 0, 0, 0] * 2.0

    backend._run_chunk = fake_chunk
    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1) * np.ones((1, 3, 2, 2), np.float32)
    out = backend.run(x)
    assert seen == [3, 3, 3, 1]
    np.testing.assert_array_equal(out, np.arange(10) * 2.0)


@pytest.mark.gpu
@needs_gpu
def test_tensorrt_engine_matches_onnx_runtime(tmp_path):
    from export.to_trt import build_engine

    tiny = tiny_export()
    eng = build_engine(tiny["onnx"], tmp_path / "nsnet.engine", fp16=True, min_batch=2,
                       opt_batch=4, max_batch=4)
    assert json.loads((tmp_path / "nsnet.engine.json").read_text())["nsnet.trt.max_batch"] == 4
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (int(rng.integers(32, 300)), 200, 3), np.uint8) for _ in range(11)]
    ref = Detector(tiny["onnx"], workers=0).predict(imgs)
    with Detector(eng, workers=2) as det:
        assert det.backend.name == "tensorrt" and det.backend.max_batch == 4
        got = det.predict(imgs, batch_size=11)      # split into 4+4+3
        one = det.predict(imgs[0])                   # padded up to the profile minimum of 2
    np.testing.assert_allclose([p.prob_fake for p in got], [p.prob_fake for p in ref], atol=5e-3)
    assert one.prob_fake == pytest.approx(got[0].prob_fake, abs=1e-6)
