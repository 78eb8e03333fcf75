"""The Detector's option groups: values checked when built, and an option that the chosen engine or
pipeline would not apply is an error naming it, never silently ignored."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from _sdk_util import build_stand_in_onnx, contract_metadata, textured, tiny_export, write_engine_pair
from nsnet_sdk import BackendOptions, Detector, InputOptions, ModelLoadError


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_stand_in_onnx(tmp_path_factory.mktemp("m") / "nsnet.onnx")


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Path:
    return write_engine_pair(tmp_path_factory.mktemp("e") / "nsnet.engine", contract_metadata(precision="fp16"))


@pytest.mark.parametrize("kwargs, why", [
    (dict(executor="processes", pipeline="gpu"), "executor='processes' applies to the CPU pipeline only"),
    (dict(executor="processes", pipeline="auto"), "executor='processes' applies to the CPU pipeline only"),
    (dict(executor="processes", workers=0), "executor='processes' needs workers >= 1"),
    (dict(executor="fibers"), "executor must be one of"),
    (dict(pipeline="GPU"), "pipeline must be one of"),
    (dict(channels="BGR"), "channels must be one of"),
    (dict(workers=-1), "workers must be an integer >= 0"),
    (dict(workers=1.5), "workers must be an integer"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(batch_size=True), "batch_size must be an integer"),
    (dict(max_pixels=0), "max_pixels must be an integer >= 1"),
    (dict(provenance="yes"), "provenance must be True, False or a ProvenanceReader"),
])
def test_input_options_refuse_bad_values_and_ignored_combinations(kwargs, why):
    with pytest.raises(ValueError, match=why.replace("(", r"\(").replace(")", r"\)")):
        InputOptions(**kwargs)


@pytest.mark.parametrize("kwargs, why", [
    (dict(engine="onnx"), "engine must be one of"),
    (dict(precision="float16"), "precision must be one of"),
    (dict(intra_op_threads=0), "intra_op_threads must be an integer >= 1"),
    (dict(providers="CPUExecutionProvider"), "providers must be a non-empty list"),
    (dict(providers=[]), "providers must be a non-empty list"),
    (dict(cuda_graphs="yes"), "cuda_graphs must be True or False"),
    (dict(device=1.0), "device must be a device name"),
])
def test_backend_options_refuse_bad_values(kwargs, why):
    with pytest.raises(ValueError, match=why):
        BackendOptions(**kwargs)


def test_options_are_frozen_and_defaults_resolved():
    opts = InputOptions()
    assert opts.workers >= 1 and opts.executor == "threads" and opts.pipeline == "cpu"
    with pytest.raises(AttributeError):
        opts.workers = 3  # type: ignore[misc]
    assert BackendOptions(providers=["CPUExecutionProvider"]).providers == ("CPUExecutionProvider",)


@pytest.mark.parametrize("backend, why", [
    (BackendOptions(cuda_graphs=True), "cuda_graphs applies to the torch engine only"),
    (BackendOptions(precision="fp16"), "precision='fp16' cannot be honoured by the 'onnxruntime' engine: "
                                       "it runs the precision the file was exported in (fp32)"),
    (BackendOptions(precision="int8"), "precision='int8' cannot be honoured"),
    ("tensorrt", "an artifact for onnxruntime) cannot be run by engine='tensorrt'"),
    ("torch", "cannot be run by engine='torch'"),
    ("bogus", "engine must be one of"),
    (42, "backend must be an engine name"),
])
def test_an_option_the_onnx_engine_cannot_honour_is_refused(model, backend, why):
    with pytest.raises(ValueError, match=why.replace("(", r"\(").replace(")", r"\)")):
        Detector(model, backend=backend)


def test_options_must_be_input_options(model):
    with pytest.raises(ValueError, match="options must be an InputOptions"):
        Detector(model, options={"workers": 0})  # type: ignore[arg-type]


def test_the_onnx_engine_runs_where_device_says(model):
    import inspect

    import onnxruntime as ort
    from nsnet_sdk.backends.onnxruntime import OrtBackend

    same = Detector(model, backend=BackendOptions(precision="fp32", device="cpu"), options=InputOptions(workers=0))
    assert same.backend.device == "CPUExecutionProvider" and same.kind == "onnxruntime"
    assert Detector(model, backend="onnxruntime", options=InputOptions(workers=0)).backend.name == "onnxruntime"
    if "device" not in inspect.signature(OrtBackend).parameters:
        pytest.skip("this ONNX Runtime backend does not map device to providers yet")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        # A GPU asked for is never a silent run on the CPU.
        with pytest.raises(ModelLoadError, match="CUDAExecutionProvider"):
            Detector(model, backend=BackendOptions(device="cuda:0"))


@pytest.mark.parametrize("backend, why", [
    (BackendOptions(intra_op_threads=2), "intra_op_threads does not apply to the 'tensorrt' engine"),
    (BackendOptions(providers=["CPUExecutionProvider"]), "the 'tensorrt' engine takes none"),
    (BackendOptions(cuda_graphs=True), "cuda_graphs applies to the torch engine only"),
    (BackendOptions(precision="fp32"), "precision='fp32' cannot be honoured by the 'tensorrt' engine"),
    ("openvino", r"an artifact for tensorrt\) cannot be run by engine='openvino'"),
])
def test_an_option_a_tensorrt_engine_cannot_honour_is_refused_before_it_loads(engine, backend, why):
    # Refused from the sidecar alone: no TensorRT is needed to learn the option cannot apply.
    with pytest.raises(ValueError, match=why):
        Detector(engine, backend=backend)


@pytest.fixture(scope="module")
def run() -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("open_clip")
    return tiny_export()["run"]


def test_torch_backend_options_reach_the_backend(run):
    det = Detector(run, backend=BackendOptions(device="cpu", intra_op_threads=1, precision="fp32"),
                   options=InputOptions(workers=0))
    assert det.backend.name == "torch" and det.backend.device == "cpu" and det.backend.precision == "fp32"
    assert det.predict(textured(64, 64)).ok
    # cuda_graphs and fp16 reach the torch backend, which refuses them on the CPU (before, the
    # public API could not pass them at all and callers replaced det.backend by hand).
    for opts in (BackendOptions(device="cpu", cuda_graphs=True), BackendOptions(device="cpu", precision="fp16")):
        with pytest.raises(ValueError, match="need a CUDA device"):
            Detector(run, backend=opts)
    with pytest.raises(ValueError, match="precision='bf16' cannot be honoured by the 'torch' engine: it runs fp32, fp16"):
        Detector(run, backend=BackendOptions(device="cpu", precision="bf16"))
    with pytest.raises(ValueError, match="the 'torch' engine takes none"):
        Detector(run, backend=BackendOptions(providers=["CPUExecutionProvider"]))


def test_an_onnx_file_runs_on_openvino_when_asked(model):
    if importlib.util.find_spec("openvino") is None or \
            importlib.util.find_spec("nsnet_sdk.backends.openvino") is None:
        pytest.skip("needs openvino and the OpenVINO backend (nsnet_sdk/backends/openvino.py)")
    img = textured(96, 80)
    with Detector(model, backend="openvino", options=InputOptions(workers=0)) as ov, \
            Detector(model, options=InputOptions(workers=0)) as ort_det:
        assert ov.backend.name == "openvino" and ov.kind == "openvino"
        np.testing.assert_allclose(ov.predict(img).logit, ort_det.predict(img).logit, atol=1e-3)
    with pytest.raises(ValueError, match="device='cuda' does not apply to the openvino engine"):
        Detector(model, backend=BackendOptions(engine="openvino", device="cuda"))
