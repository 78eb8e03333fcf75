"""export/to_triton.py: every config.pbtxt parses with Triton's own schema and names the ONNX graph's
tensors; the Python backend's model is nsnet_sdk's runtime code (`nsnet_sdk.pipeline.triton`), run
from the generated model.py in an isolated interpreter that can import nothing from the checkout."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("tritonclient.grpc")

from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2 as mc  # noqa: E402

from _sdk_util import build_stand_in_onnx, contract_metadata, textured, write_engine_pair  # noqa: E402
from export.to_triton import main, write_repository  # noqa: E402
from nsnet_sdk.errors import ImageDecodeError, ImageTooLargeError  # noqa: E402
from nsnet_sdk.pipeline import DEFAULT, PatchConfig, load_image, preprocess_batch  # noqa: E402
from nsnet_sdk.pipeline.triton import preprocess_encoded  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())  # unknown fields raise


def graph_io(onnx_path: Path) -> dict[str, tuple[str, list[int]]]:
    import onnx

    g = onnx.load(str(onnx_path)).graph
    init = {i.name for i in g.initializer}
    return {v.name: (onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type),
                     [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim])
            for v in [*g.input, *g.output] if v.name not in init}


@pytest.fixture()
def onnx_model(tmp_path):
    return build_stand_in_onnx(tmp_path / "nsnet.onnx")


def test_repository_configs_parse_and_match_the_onnx_graph(onnx_model, tmp_path):
    repo = tmp_path / "model_repository"
    assert main(["--model", str(onnx_model), "--out", str(repo), "--max-batch", "48", "--instances", "2"]) == 0
    net, pre, ens = (parse(repo / n / "config.pbtxt") for n in ("nsnet", "nsnet_preprocess", "nsnet_ensemble"))
    io = graph_io(onnx_model)
    # the network: names, types and per-item dims of the graph (batch dimension dropped)
    assert net.name == "nsnet" and net.platform == "onnxruntime_onnx" and net.max_batch_size == 48
    assert [t.name for t in net.input] == ["images"] and [t.name for t in net.output] == ["logit", "prob_fake"]
    for t in [*net.input, *net.output]:
        onnx_type, shape = io[t.name]
        assert mc.DataType.Name(t.data_type) == "TYPE_" + {"FLOAT": "FP32"}[onnx_type]
        assert shape[0] == -1  # the graph's batch axis is dynamic, as Triton's batching needs
        per_item = shape[1:]
        if per_item:
            assert list(t.dims) == per_item and not t.HasField("reshape")
        else:  # (B,) outputs: one value per item, declared [1] and reshaped to the graph's []
            assert list(t.dims) == [1] and t.HasField("reshape") and list(t.reshape.shape) == []
    assert net.HasField("dynamic_batching")
    assert [(g.count, mc.ModelInstanceGroup.Kind.Name(g.kind)) for g in net.instance_group] == [(2, "KIND_GPU")]
    assert (repo / "nsnet" / "1" / "model.onnx").read_bytes() == onnx_model.read_bytes()
    # the preprocessing: bytes in, the network's input out; the PatchConfig travels as a parameter
    assert pre.backend == "python" and pre.max_batch_size == 48
    assert [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in pre.input] == [("image_bytes", "TYPE_STRING", [1])]
    assert [(t.name, list(t.dims)) for t in pre.output] == [("images", io["images"][1][1:])]
    assert PatchConfig.from_json(pre.parameters["nsnet.preprocess"].string_value) == DEFAULT
    assert (repo / "nsnet_preprocess" / "1" / "model.py").is_file()
    # the ensemble: every step's maps name real tensors of the models it chains
    assert ens.platform == "ensemble" and [t.name for t in ens.input] == ["image_bytes"]
    assert [(t.name, list(t.dims)) for t in ens.output] == [("logit", [1]), ("prob_fake", [1])]
    models = {"nsnet_preprocess": pre, "nsnet": net}
    produced = {"image_bytes"}
    for step in ens.ensemble_scheduling.step:
        m = models[step.model_name]
        assert set(step.input_map) == {t.name for t in m.input} and set(step.input_map.values()) <= produced
        assert set(step.output_map) <= {t.name for t in m.output}
        produced |= set(step.output_map.values())
    assert {t.name for t in ens.output} <= produced


def test_generated_model_py_only_imports_the_runtime_model(onnx_model, tmp_path):
    write_repository(onnx_model, tmp_path / "r")
    src = (tmp_path / "r" / "nsnet_preprocess" / "1" / "model.py").read_text()
    compile(src, "model.py", "exec")
    assert "from nsnet_sdk.pipeline.triton import TritonPythonModel" in src and "export" not in src


def test_client_preprocess_writes_the_network_only(onnx_model, tmp_path):
    write_repository(onnx_model, tmp_path / "r", preprocess="client")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["nsnet"]


def test_engine_gets_a_tensorrt_plan_config_bounded_by_its_profile(tmp_path):
    engine = write_engine_pair(tmp_path / "nsnet.engine", contract_metadata())  # sidecar max batch 32
    write_repository(engine, tmp_path / "r", max_batch=32)
    net = parse(tmp_path / "r" / "nsnet" / "config.pbtxt")
    assert net.platform == "tensorrt_plan" and (tmp_path / "r" / "nsnet" / "1" / "model.plan").is_file()
    assert list(net.input[0].dims) == [3, 224, 224]
    with pytest.raises(ValueError, match="exceeds the engine profile"):
        write_repository(engine, tmp_path / "r2", max_batch=64)


def _engine_with_profile(path: Path, profile: tuple[int, int, int] | None) -> Path:
    engine = write_engine_pair(path, contract_metadata())
    side = json.loads(engine.with_name(engine.name + ".json").read_text())
    for k in ("min", "opt", "max"):
        side.pop(f"nsnet.trt.{k}_batch")
    if profile is not None:
        side.update({f"nsnet.trt.{k}_batch": v for k, v in zip(("min", "opt", "max"), profile)})
    engine.with_name(engine.name + ".json").write_text(json.dumps(side))
    return engine


def test_engine_whose_profile_starts_above_one_is_refused(tmp_path):
    """Triton's dynamic batcher sends batches of 1 and up and its TensorRT backend does not pad:
    an engine built with a minimum batch of 4 would fail every smaller batch."""
    engine = _engine_with_profile(tmp_path / "min4.engine", (4, 8, 32))
    with pytest.raises(ValueError, match="minimum batch 4.*--min-batch 1"):
        write_repository(engine, tmp_path / "r", max_batch=32)
    assert not (tmp_path / "r").exists()
    r = subprocess.run([sys.executable, "-m", "export.to_triton", "--model", str(engine), "--out",
                        str(tmp_path / "r"), "--max-batch", "8"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and "minimum batch 4" in r.stderr and "Traceback" not in r.stderr
    unknown = _engine_with_profile(tmp_path / "old.engine", None)
    with pytest.raises(ValueError, match="no optimisation profile"):
        write_repository(unknown, tmp_path / "r", max_batch=1)
    write_repository(_engine_with_profile(tmp_path / "ok.engine", (1, 8, 32)), tmp_path / "r", max_batch=32)
    assert parse(tmp_path / "r" / "nsnet" / "config.pbtxt").max_batch_size == 32


def test_preprocess_encoded_is_the_sdk_preprocessing(tmp_path):
    import cv2

    rgbs = [textured(300, 200, 0), textured(31, 90, 1)]
    blobs = [cv2.imencode(".png", x[..., ::-1])[1].tobytes() for x in rgbs]
    np.testing.assert_array_equal(preprocess_encoded(blobs, DEFAULT), preprocess_batch(rgbs, DEFAULT))
    with pytest.raises(ImageDecodeError, match="image 1"):
        preprocess_encoded([blobs[0], b"junk"], DEFAULT)
    with pytest.raises(ImageTooLargeError, match="image 0"):
        preprocess_encoded(blobs, DEFAULT, max_pixels=1000)


def test_cli_refuses_a_non_nsnet_model_with_one_line(tmp_path):
    bad = build_stand_in_onnx(tmp_path / "x.onnx", metadata={})
    r = subprocess.run([sys.executable, "-m", "export.to_triton", "--model", str(bad),
                        "--out", str(tmp_path / "r")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and "no nsnet.preprocess metadata" in r.stderr and "Traceback" not in r.stderr


def test_the_documented_client_request_fits_the_ensemble_input(onnx_model, tmp_path):
    import tritonclient.grpc as grpcclient

    write_repository(onnx_model, tmp_path / "r")
    ens = parse(tmp_path / "r" / "nsnet_ensemble" / "config.pbtxt")
    data = np.array([b"\xff\xd8jpeg", b"\x89PNG"], dtype=np.object_).reshape(-1, 1)  # as docs/nvidia.md
    inp = grpcclient.InferInput("image_bytes", list(data.shape), "BYTES")
    inp.set_data_from_numpy(data)
    want = ens.input[0]
    assert inp.name() == want.name and inp.datatype() == mc.DataType.Name(want.data_type).removeprefix("TYPE_").replace("STRING", "BYTES")
    assert inp.shape()[1:] == list(want.dims) and inp.shape()[0] <= ens.max_batch_size


def test_a_real_nsnet_tiny_export_gets_its_graph_names_and_shapes(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("open_clip")
    from _sdk_util import tiny_export

    onnx_path = tiny_export()["onnx"]
    write_repository(onnx_path, tmp_path / "r", max_batch=8)
    net = parse(tmp_path / "r" / "nsnet" / "config.pbtxt")
    io = graph_io(onnx_path)
    assert {t.name for t in [*net.input, *net.output]} == set(io)
    for t in net.input:
        assert list(t.dims) == io[t.name][1][1:]
    pre = parse(tmp_path / "r" / "nsnet_preprocess" / "config.pbtxt")
    assert list(pre.output[0].dims) == io["images"][1][1:]


# Triton's Python-backend API as its documentation gives it (`triton_python_backend_utils` exists
# only inside the Triton container): the calls the model makes, nothing else.
_PB_UTILS = '''
class Tensor:
    def __init__(self, name, array):
        self._name, self._array = name, array
    def name(self):
        return self._name
    def as_numpy(self):
        return self._array
class TritonError:
    def __init__(self, message):
        self._message = message
    def message(self):
        return self._message
class InferenceRequest:
    def __init__(self, inputs):
        self._inputs = inputs
    def inputs(self):
        return self._inputs
class InferenceResponse:
    def __init__(self, output_tensors=(), error=None):
        self._outputs, self._error = list(output_tensors), error
    def output_tensors(self):
        return self._outputs
    def has_error(self):
        return self._error is not None
    def error(self):
        return self._error
def get_input_tensor_by_name(request, name):
    return next((t for t in request.inputs() if t.name() == name), None)
'''

# Run inside the interpreter under test with -I (no PYTHONPATH, no current directory, no user
# site): loads model.py as Triton does and answers one request per argument group.
_HARNESS = '''
import importlib.util, json, sys
import numpy as np
shim, pkg_root, model_py, config_json, out, *groups = sys.argv[1:]
sys.path.insert(0, shim)
if pkg_root:
    sys.path.insert(0, pkg_root)
import triton_python_backend_utils as pb
spec = importlib.util.spec_from_file_location("model", model_py)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
model = mod.TritonPythonModel()
model.initialize({"model_config": open(config_json).read()})
requests = []
for g in groups:
    blobs = [open(p, "rb").read() for p in g.split(",")]
    requests.append(pb.InferenceRequest([pb.Tensor("image_bytes", np.array(blobs, dtype=object).reshape(-1, 1))]))
arrays, report = {}, []
for i, r in enumerate(model.execute(requests)):
    if r.has_error():
        report.append({"error": r.error().message()})
    else:
        t, = r.output_tensors()
        arrays[f"r{i}"] = t.as_numpy()
        report.append({"output": t.name()})
from nsnet_sdk.pipeline import kernel_name
np.savez(out + ".npz", **arrays)
json.dump({"responses": report, "python": sys.version_info[:2], "kernel": kernel_name(),
           "checkout_imported": any(m == "export" or m.startswith(("export.", "training", "tests"))
                                    for m in sys.modules)}, open(out + ".json", "w"))
'''


def _interpreters() -> list:
    """The running interpreter with a copy of the nsnet_sdk package alone, and, where
    NSNET_TRITON_PYTHON names one, a clean environment made as docs/nvidia.md says (e.g. Python
    3.12, Triton's: ``python3.12 -m venv V && V/bin/pip install '/path/to/checkout[cpu]'``)."""
    import os

    out = [pytest.param(None, id="this-python")]
    clean = os.environ.get("NSNET_TRITON_PYTHON")
    out.append(pytest.param(clean, id="documented-env", marks=pytest.mark.skipif(
        not clean, reason="set NSNET_TRITON_PYTHON to a Python made as docs/nvidia.md installs it")))
    return out


@pytest.mark.parametrize("python", _interpreters())
def test_generated_model_py_answers_requests_as_the_sdk_preprocesses(python, onnx_model, tmp_path):
    import shutil

    from google.protobuf import json_format

    write_repository(onnx_model, tmp_path / "r")
    pre_dir = tmp_path / "r" / "nsnet_preprocess"
    config = tmp_path / "config.json"  # what Triton hands initialize(): the config as JSON
    config.write_text(json_format.MessageToJson(parse(pre_dir / "config.pbtxt"), preserving_proto_field_name=True))
    (tmp_path / "shim").mkdir()
    (tmp_path / "shim" / "triton_python_backend_utils.py").write_text(_PB_UTILS)
    (tmp_path / "harness.py").write_text(_HARNESS)
    pkg_root = ""
    if python is None:  # this interpreter: only the package is importable, as in an install
        pkg_root = str(tmp_path / "site")
        shutil.copytree(ROOT / "nsnet_sdk", tmp_path / "site" / "nsnet_sdk",
                        ignore=shutil.ignore_patterns("__pycache__"))
        python = sys.executable
    import cv2

    rgbs = [textured(300, 200, 0), textured(31, 90, 1), textured(120, 160, 2)]
    files = []
    for i, x in enumerate(rgbs):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(cv2.imencode(".png", x[..., ::-1])[1].tobytes())
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\njunk")
    groups = [f"{files[0]},{files[1]}", f"{files[2]},{tmp_path / 'junk.png'}", str(files[2])]
    r = subprocess.run([python, "-I", str(tmp_path / "harness.py"), str(tmp_path / "shim"), pkg_root,
                        str(pre_dir / "1" / "model.py"), str(config), str(tmp_path / "out"), *groups],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "out.json").read_text())
    arrays = np.load(tmp_path / "out.npz")
    assert not report["checkout_imported"]
    assert report["responses"][0] == report["responses"][2] == {"output": "images"}
    np.testing.assert_array_equal(arrays["r0"], preprocess_batch(rgbs[:2], DEFAULT))
    np.testing.assert_array_equal(arrays["r2"], preprocess_batch([load_image(files[2])], DEFAULT))
    # the bad image fails its own request, with the pipeline's typed message naming it
    assert "image 1" in report["responses"][1]["error"] and "r1" not in arrays
