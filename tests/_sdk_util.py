"""Helpers for the SDK/CLI tests: a small stand-in ONNX model with the exact I/O and metadata
contract of docs/formats.md, and the real nsnet-tiny export when training/export are present."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nsnet_sdk.preprocess import DEFAULT, PatchConfig


def contract_metadata(cfg: PatchConfig = DEFAULT, threshold: float = 0.5,
                      precision: str = "fp32") -> dict[str, str]:
    return {
        "nsnet.format": "nsnet-onnx/1",
        "nsnet.backbone": "stand-in",
        "nsnet.preprocess": cfg.to_json(),
        "nsnet.threshold": repr(float(threshold)),
        "nsnet.precision": precision,
        "nsnet.projector_rank": "3",
        "nsnet.source_sha256": "0" * 64,
    }


def stand_in_weights(seed: int = 0) -> tuple[np.ndarray, float]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(3,)).astype(np.float32), float(rng.normal())


def stand_in_logit(batch: np.ndarray, seed: int = 0) -> np.ndarray:
    """What the stand-in model computes, in numpy: per-channel mean of the input · w + b."""
    w, b = stand_in_weights(seed)
    return batch.astype(np.float64).mean(axis=(2, 3)) @ w.astype(np.float64) + b


def build_stand_in_onnx(path: Path, *, seed: int = 0, metadata: dict[str, str] | None = None,
                        size: int = 224) -> Path:
    """A tiny ONNX model honouring the NS-Net contract: input ``images`` float32 [B,3,S,S]
    (dynamic B), outputs ``logit`` [B] = mean over pixels per channel · w + b and
    ``prob_fake`` = sigmoid(logit). Depends on every pixel, so decoding differences show."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, b = stand_in_weights(seed)
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["mw"]),
        helper.make_node("Add", ["mw", "b"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["prob_fake"]),
    ]
    graph = helper.make_graph(
        nodes, "stand_in",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 3, size, size])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["B"]),
         helper.make_tensor_value_info("prob_fake", TensorProto.FLOAT, ["B"])],
        initializer=[numpy_helper.from_array(w, "w"),
                     numpy_helper.from_array(np.array(b, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, metadata if metadata is not None else contract_metadata())
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path


def write_engine_pair(path: Path, metadata: dict[str, str]) -> Path:
    """A fake ``.engine`` + sidecar (not a real engine): for kind/sidecar tests only."""
    path.write_bytes(b"not a real engine")
    side = dict(metadata, **{"nsnet.precision": "fp16", "nsnet.trt.min_batch": 1,
                             "nsnet.trt.opt_batch": 8, "nsnet.trt.max_batch": 32})
    path.with_name(path.name + ".json").write_text(json.dumps(side))
    return path
