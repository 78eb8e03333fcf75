"""ONNX Runtime never runs a requested GPU provider's work on the CPU without saying so.

Two layers: the decision logic with whatever onnxruntime is installed (the plain CPU build in the
`[cpu]` test install), and the real `onnxruntime-gpu` wheel where it is the installed one (skipped
with the reason elsewhere; run it with an interpreter whose environment holds onnxruntime-gpu, see
docs/nvidia.md).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

from _sdk_util import build_stand_in_onnx, stand_in_logit  # noqa: E402
from nsnet_sdk import BackendOptions, Detector, InputOptions  # noqa: E402
from nsnet_sdk.errors import BackendUnavailableError  # noqa: E402

CUDA_LIB = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
IS_GPU_BUILD = CUDA_LIB.is_file() and "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_stand_in_onnx(tmp_path_factory.mktemp("ort") / "m.onnx")


@pytest.mark.skipif(IS_GPU_BUILD, reason="onnxruntime-gpu installed: the real-wheel tests below apply")
def test_a_gpu_provider_the_cpu_build_lacks_is_a_typed_error_naming_it(model):
    for kwargs in ({"providers": ["CUDAExecutionProvider"]}, {"device": "cuda"}, {"device": "cuda:1"}):
        with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider.*not available") as e:
            Detector(model, backend=BackendOptions(**kwargs), options=InputOptions(workers=0))
        assert "gpu-cu12" in str(e.value) and str(model) in str(e.value)


def test_a_listed_provider_that_does_not_start_is_an_error_when_requested_a_warning_on_auto(
        model, monkeypatch):
    # What onnxruntime-gpu does on a machine whose CUDA libraries or driver are missing: it lists
    # the CUDA provider as available, then runs the session on the CPU with a log line only.
    if IS_GPU_BUILD:
        pytest.skip("onnxruntime-gpu installed: test_the_real_gpu_wheel_* cover this for real")
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    for kwargs in ({"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}, {"device": "cuda"}):
        with pytest.raises(BackendUnavailableError, match="'CUDAExecutionProvider' was requested") as e:
            Detector(model, backend=BackendOptions(**kwargs), options=InputOptions(workers=0))
        # ORT's reason, reproduced: this CPU build has no CUDA provider library at all.
        assert "libonnxruntime_providers_cuda.so" in str(e.value)
    for device in (None, "auto"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            backend = Detector(model, backend=BackendOptions(device=device), options=InputOptions(workers=0)).backend
        said = [w for w in caught if "CUDAExecutionProvider" in str(w.message)]
        assert len(said) == 1 and "runs on CPUExecutionProvider" in str(said[0].message)
        assert backend.device == "CPUExecutionProvider"
        x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
        np.testing.assert_allclose(backend.run(x), stand_in_logit(x), atol=1e-4)


def test_device_names_map_to_providers_and_nonsense_is_refused():
    from nsnet_sdk.backends.onnxruntime import requested_providers

    assert requested_providers(None, None) is None and requested_providers(None, "auto") is None
    assert requested_providers(None, "cpu") == ["CPUExecutionProvider"]
    assert requested_providers(None, "cuda:2") == [("CUDAExecutionProvider", {"device_id": 2})]
    assert requested_providers(None, 0) == [("CUDAExecutionProvider", {"device_id": 0})]
    assert requested_providers(["CPUExecutionProvider"], "cuda") == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="'tpu'"):
        requested_providers(None, "tpu")


# -- the real onnxruntime-gpu wheel ----------------------------------------------------------------

needs_gpu_wheel = pytest.mark.skipif(
    not IS_GPU_BUILD, reason=f"onnxruntime {ort.__version__} here is not the onnxruntime-gpu build "
                             "(no libonnxruntime_providers_cuda.so); run this file with an "
                             "interpreter that has onnxruntime-gpu (docs/nvidia.md)")


@pytest.mark.gpu
@needs_gpu_wheel
def test_the_real_gpu_wheel_runs_cuda_or_raises_the_loader_reason(model, capsys):
    try:
        backend = Detector(model, backend=BackendOptions(providers=["CUDAExecutionProvider"]), options=InputOptions(workers=0)).backend
    except BackendUnavailableError as e:
        # A machine without usable CUDA: the error names the provider and ORT's own loader error
        # (a missing CUDA library or driver), never a session quietly on the CPU.
        assert "'CUDAExecutionProvider' was requested" in str(e)
        assert "cannot open shared object file" in str(e) or "no usable GPU" in str(e)
    else:
        assert backend.device == "CUDAExecutionProvider"
    # onnxruntime.preload_dlls() prints what it could not load; nothing may reach stdout (a JSONL
    # stream for `nsnet detect --jsonl -`).
    assert capsys.readouterr().out == ""


@pytest.mark.gpu
@needs_gpu_wheel
def test_the_real_gpu_wheel_on_auto_runs_cuda_or_says_once_that_it_fell_back(model):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend = Detector(model, options=InputOptions(workers=0)).backend
    said = [w for w in caught if "CUDAExecutionProvider" in str(w.message)]
    if backend.device == "CUDAExecutionProvider":
        assert said == []
    else:
        assert backend.device == "CPUExecutionProvider" and len(said) == 1
        assert "cannot open shared object file" in str(said[0].message) or \
            "no usable GPU" in str(said[0].message)
    x = np.random.default_rng(1).standard_normal((3, 3, 224, 224)).astype(np.float32)
    np.testing.assert_allclose(backend.run(x), stand_in_logit(x), atol=1e-4)


def test_the_backend_uses_the_detector_s_validated_metadata_without_reading_it_again(model, monkeypatch):
    import nsnet_sdk.backends.onnxruntime as ort_backend

    def second_read(path):
        raise AssertionError(f"metadata of {path} read a second time")

    monkeypatch.setattr(ort_backend, "read_onnx_metadata", second_read)
    det = Detector(model, backend=BackendOptions(device="cpu"), options=InputOptions(workers=0))
    assert det.backend.metadata == dict(det.meta.raw)
    det.close()
