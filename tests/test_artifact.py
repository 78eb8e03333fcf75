"""Every artifact field is validated when the model is loaded: each bad artifact below is built in
a temp dir and must be refused by `Detector(...)` (not the first batch) with a `ModelLoadError`
that names the file and the field, without unpickling anything."""
from __future__ import annotations

import json
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from _sdk_util import build_stand_in_onnx, contract_metadata, tiny_export, write_engine_pair
from nsnet_sdk import Detector, InputOptions, ModelLoadError, PatchConfig
from nsnet_sdk.artifact import read_model_meta
from nsnet_sdk.pipeline import DEFAULT


def refused(model: Path, *fragments: str) -> ModelLoadError:
    """Load ``model``; assert a ModelLoadError whose message names the file and each fragment."""
    with pytest.raises(ModelLoadError) as info:
        Detector(model, options=InputOptions(workers=0))
    msg = str(info.value)
    assert model.name in msg, msg
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    return info.value


# -- run directories ---------------------------------------------------------------------------

@pytest.fixture
def run(tmp_path) -> Path:
    """A private copy of a real nsnet-tiny run directory (random weights)."""
    return Path(shutil.copytree(tiny_export()["run"], tmp_path / "run"))


def edit_json(run: Path, change) -> Path:
    path = run / "nsnet.json"
    doc = json.loads(path.read_text())
    doc = change(doc)
    path.write_text(json.dumps(doc))
    return run


def test_intact_run_directory_loads(run):
    with Detector(run, options=InputOptions(workers=0)) as det:  # the baseline every case below breaks one field of
        assert det.meta.format == "nsnet-checkpoint/1"


class _Marker:
    """Unpickling this creates a file: proof that something ran pickle.load."""

    path = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_pickle_renamed_safetensors_is_refused_unread(run, tmp_path):
    import torch

    marker = tmp_path / "unpickled"
    _Marker.path = str(marker)
    for payload in (pickle.dumps({"x": _Marker()}), None):
        weights = run / "nsnet.safetensors"
        if payload is None:  # torch.save's zip container, as a real .pt checkpoint would be
            torch.save({"x": _Marker()}, weights)
        else:
            weights.write_bytes(payload)
        refused(run, "nsnet.safetensors")
        assert not marker.exists(), "the file was unpickled"


def test_truncated_safetensors(run):
    weights = run / "nsnet.safetensors"
    data = weights.read_bytes()
    for n in (len(data) - 1, len(data) // 2, 100, 5, 0):
        weights.write_bytes(data[:n])
        refused(run, "nsnet.safetensors")


def test_header_length_two_to_the_62(run):
    (run / "nsnet.safetensors").write_bytes(struct.pack("<Q", 1 << 62) + b"{}" + b"\0" * 64)
    refused(run, "nsnet.safetensors", "header length")


def test_header_offsets_outside_the_file(run):
    header = json.dumps({"a": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 4 << 40]}}).encode()
    (run / "nsnet.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    refused(run, "nsnet.safetensors", "'a'")


@pytest.mark.parametrize("change, field", [
    (lambda d: [d], "top level"),
    (lambda d: dict(d, backbone=7), "backbone"),
    (lambda d: dict(d, backbone="no-such-clip"), "backbone"),
    (lambda d: dict(d, head="gelu"), "head"),
    (lambda d: dict(d, head={"hidden": "512", "dim": 128}), "head.hidden"),
    (lambda d: dict(d, head={"hidden": 512, "dim": 128.0}), "head.dim"),
    (lambda d: dict(d, head={"hidden": True, "dim": 128}), "head.hidden"),
    (lambda d: dict(d, threshold="0.5"), "threshold"),
    (lambda d: dict(d, threshold=float("nan")), "threshold"),
    (lambda d: dict(d, threshold=float("inf")), "threshold"),
    (lambda d: dict(d, threshold=1.5), "threshold"),
    (lambda d: dict(d, threshold=-0.1), "threshold"),
    (lambda d: dict(d, threshold=None), "threshold"),
    (lambda d: {k: v for k, v in d.items() if k != "threshold"}, "threshold"),
    (lambda d: dict(d, quick_gelu="false"), "quick_gelu"),
    (lambda d: dict(d, format="nsnet-checkpoint/2"), "format"),
    (lambda d: dict(d, preprocess=dict(d["preprocess"], patch=32.0)), "patch"),
    (lambda d: dict(d, projector=dict(d["projector"], rank="5")), "projector.rank"),
])
def test_bad_nsnet_json_fields(run, change, field):
    refused(edit_json(run, change), "nsnet.json", field)


def _rewrite_tensors(run: Path, change) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(run / "nsnet.safetensors"))
    change(tensors)
    save_file(tensors, str(run / "nsnet.safetensors"))


@pytest.mark.parametrize("change, fragment", [
    (lambda t: t.pop("classifier.bias"), "missing ['classifier.bias']"),
    (lambda t: t.update(extra=np.zeros(3, np.float32)), "extra ['extra']"),
    (lambda t: t.update({"head.0.weight": t["head.0.weight"].T.copy()}), "'head.0.weight'"),
    (lambda t: t.update({"nullspace.basis": t["nullspace.basis"][:, :-1].copy()}), "'nullspace.basis'"),
    (lambda t: t.update({"classifier.weight": t["classifier.weight"].astype(np.float16)}), "F16"),
])
def test_tensors_missing_extra_misshapen_or_mistyped(run, change, fragment):
    _rewrite_tensors(run, change)
    refused(run, "nsnet.safetensors", fragment)


# -- ONNX and engine metadata ------------------------------------------------------------------

def _pre(**fields) -> str:
    return json.dumps(dict(DEFAULT.to_dict(), **fields))


@pytest.mark.parametrize("key, value, fragment", [
    ("nsnet.preprocess", _pre(patch=32.0), "patch"),
    ("nsnet.preprocess", _pre(patch="32"), "patch"),
    ("nsnet.preprocess", _pre(patch=True), "patch"),
    ("nsnet.preprocess", _pre(grid=100_000), "exceeds"),
    ("nsnet.preprocess", _pre(mean=[0.5, float("nan"), 0.5]), "mean"),
    ("nsnet.preprocess", _pre(std=[0.5, float("inf"), 0.5]), "std"),
    ("nsnet.preprocess", "[1, 2]", "nsnet.preprocess"),
    ("nsnet.preprocess", "{not json", "nsnet.preprocess"),
    ("nsnet.format", "nsnet-onnx/2", "major version 2"),
    ("nsnet.format", "something-else/1", "nsnet.format"),
    ("nsnet.threshold", "nan", "nsnet.threshold"),
    ("nsnet.threshold", "2", "nsnet.threshold"),
    ("nsnet.precision", "fp8", "nsnet.precision"),
    ("nsnet.projector_rank", "3.0", "nsnet.projector_rank"),
    ("nsnet.trt.strongly_typed", "yes", "nsnet.trt.strongly_typed"),
    ("nsnet.model_card", '{"pretrained": 5}', "nsnet.model_card.pretrained"),
    ("nsnet.verdict_band", '{"t_real": 0.9, "t_fake": 0.1, "fpr": 0.05, "fnr": 0.05, "source": "x"}',
     "t_real"),
    ("nsnet.verdict_band", '{"t_real": NaN, "t_fake": 0.9, "fpr": 0.05, "fnr": 0.05, "source": "x"}',
     "nsnet.verdict_band.t_real"),
])
def test_bad_onnx_metadata_fields(tmp_path, key, value, fragment):
    md = dict(contract_metadata(), **{key: value})
    refused(build_stand_in_onnx(tmp_path / "bad.onnx", metadata=md), fragment)


def test_preprocess_that_does_not_match_the_graph_input(tmp_path):
    md = contract_metadata(PatchConfig(patch=16, grid=7))  # 112 px, graph takes 224
    refused(build_stand_in_onnx(tmp_path / "m.onnx", metadata=md), "input images", "112")


def _graph(path: Path, images: list, logit: list) -> Path:
    """A minimal graph with the given declared input/output shapes and valid metadata."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("ReduceMean", ["images"], ["logit"], keepdims=0),
             helper.make_node("Sigmoid", ["logit"], ["prob_fake"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, images)],
                              [helper.make_tensor_value_info("logit", TensorProto.FLOAT, logit),
                               helper.make_tensor_value_info("prob_fake", TensorProto.FLOAT, logit)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, contract_metadata())
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("images, logit, fragment", [
    (["B", 3, 224], ["B"], "rank 4"),
    (["B", 3, 224, 224, 1], ["B"], "rank 4"),
    ([1, 3, 224, 224], [1], "batch dimension fixed at 1"),
    (["B", 1, 224, 224], ["B"], "channels 1"),
    (["B", 3, 224, 224], ["B", 1], "output logit"),
    (["B", 3, 224, 224], [], "output logit"),
])
def test_graph_io_the_sdk_cannot_feed(tmp_path, images, logit, fragment):
    refused(_graph(tmp_path / "g.onnx", images, logit), fragment)


def test_graph_io_accepted_when_it_matches(tmp_path):
    path = _graph(tmp_path / "ok.onnx", ["B", 3, 224, 224], ["B"])
    assert read_model_meta(path).preprocess == DEFAULT  # the baseline of the cases above


@pytest.mark.parametrize("content", [b"", b"\x08", b"garbage that is not protobuf \xff\xff\xff",
                                     bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8))])
def test_empty_random_or_truncated_onnx(tmp_path, content):
    path = tmp_path / "x.onnx"
    path.write_bytes(content)
    refused(path)


def test_truncated_real_onnx(tmp_path):
    good = build_stand_in_onnx(tmp_path / "good.onnx").read_bytes()
    for n in (len(good) - 3, len(good) // 2, 10):
        path = tmp_path / f"cut{n}.onnx"
        path.write_bytes(good[:n])
        refused(path)


@pytest.mark.parametrize("key, value, fragment", [
    ("nsnet.trt.max_batch", "32", "nsnet.trt.max_batch"),
    ("nsnet.trt.max_batch", True, "nsnet.trt.max_batch"),
    ("nsnet.trt.min_batch", 64, "nsnet.trt.*_batch"),
    ("nsnet.trt.strongly_typed", "true", "nsnet.trt.strongly_typed"),
    ("nsnet.threshold", 0.5, "nsnet.threshold"),
    ("nsnet.preprocess", {"patch": 32.5, "grid": 7}, "patch"),
    ("nsnet.format", "nsnet-onnx/9", "major version 9"),
])
def test_bad_engine_sidecar_fields(tmp_path, key, value, fragment):
    eng = write_engine_pair(tmp_path / "m.engine", contract_metadata())
    side = json.loads(eng.with_name("m.engine.json").read_text())
    side[key] = value
    eng.with_name("m.engine.json").write_text(json.dumps(side))
    with pytest.raises(ModelLoadError, match="m.engine") as info:
        read_model_meta(eng)
    assert fragment in str(info.value)
    refused(eng, fragment)  # and Detector refuses it before needing TensorRT


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, bytes(range(256)) * 4])
def test_empty_truncated_or_random_engine(tmp_path, content):
    eng = write_engine_pair(tmp_path / "m.engine", contract_metadata())
    eng.write_bytes(content)
    # Empty files are refused by the metadata reader; any other bytes by TensorRT's deserialiser
    # (or, where TensorRT is absent, by the backend that needs it) — always a ModelLoadError.
    refused(eng)


# -- PatchConfig.from_dict ---------------------------------------------------------------------

@pytest.mark.parametrize("d, fragment", [
    ({"patch": True}, "patch must be an integer"),
    ({"patch": 32.0}, "patch must be an integer"),
    ({"grid": "7"}, "grid must be an integer"),
    ({"mean": [0.5, 0.5, float("nan")]}, "mean must be three finite numbers"),
    ({"std": [0.5, 0.5, float("-inf")]}, "std must be three finite numbers"),
    ({"std": [0.5, "0.5", 0.5]}, "std must be three finite numbers"),
    ({"mean": [0.5, 0.5]}, "mean must be three finite numbers"),
    ({"grid": 1 << 40}, "exceeds"),
])
def test_patch_config_from_dict_rejects_mistyped_values(d, fragment):
    with pytest.raises(ValueError, match=fragment):
        PatchConfig.from_dict(d)
    assert PatchConfig.from_dict(DEFAULT.to_dict()) == DEFAULT
