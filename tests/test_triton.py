"""export/to_triton.py: every config.pbtxt parses with Triton's own schema and names the ONNX graph's
tensors; the Python backend's preprocessing is nsnet_sdk's."""
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
from export.to_triton import main, preprocess_encoded, write_repository  # noqa: E402
from nsnet_sdk.errors import ImageDecodeError, ImageTooLargeError  # noqa: E402
from nsnet_sdk.pipeline import DEFAULT, PatchConfig, preprocess_batch  # noqa: E402

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


def test_generated_model_py_compiles_and_calls_the_tested_function(onnx_model, tmp_path):
    write_repository(onnx_model, tmp_path / "r")
    src = (tmp_path / "r" / "nsnet_preprocess" / "1" / "model.py").read_text()
    compile(src, "model.py", "exec")
    assert "from export.to_triton import preprocess_encoded" in src and '"image_bytes"' in src


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
