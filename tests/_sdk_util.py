"""Helpers for the SDK/CLI tests: a small stand-in ONNX model with the exact I/O and metadata
contract of docs/formats.md, and the real nsnet-tiny export when training/export are present."""
from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from nsnet_sdk.pipeline import DEFAULT, PatchConfig


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


def stand_in_weights(seed: int = 0, size: int = 224) -> tuple[np.ndarray, float]:
    """(w, b) of the stand-in: w over the flattened (3,S,S) input = a per-channel mean term (large,
    so different pictures score clearly apart) + a random per-pixel term (so that any change of
    the mosaic, e.g. a rotation or another patch order, changes the score)."""
    rng = np.random.default_rng(seed)
    n = size * size
    channel = np.repeat(8 * rng.normal(size=3) / n, n)
    pixel = rng.normal(size=3 * n) / np.sqrt(3 * n)
    return (channel + pixel).astype(np.float32), float(rng.normal())


def stand_in_logit(batch: np.ndarray, seed: int = 0) -> np.ndarray:
    """What the stand-in model computes, in numpy."""
    w, b = stand_in_weights(seed, batch.shape[-1])
    return batch.reshape(len(batch), -1).astype(np.float64) @ w.astype(np.float64) + b


def build_stand_in_onnx(path: Path, *, seed: int = 0, metadata: dict[str, str] | None = None,
                        size: int = 224) -> Path:
    """A small ONNX model honouring the NS-Net contract: input ``images`` float32 [B,3,S,S]
    (dynamic B), outputs ``logit`` [B] = flatten(images)·w + b and ``prob_fake`` =
    sigmoid(logit). Depends on every pixel, so decoding differences show."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, b = stand_in_weights(seed, size)
    nodes = [
        helper.make_node("Flatten", ["images"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["logit"]),
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


@functools.cache
def tiny_export() -> dict[str, Path]:
    """A real nsnet-tiny run directory (random weights, --epochs 0) and its FP32 ONNX export,
    built once per test process: {"run": run_dir, "onnx": path}."""
    from export.to_onnx import export_onnx
    from training.train import main as train_main

    root = Path(tempfile.mkdtemp(prefix="nsnet-sdk-tiny-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    run = root / "run"
    rc = train_main(["--data", str(root / "no-data"), "--out", str(run), "--backbone", "nsnet-tiny",
                     "--pretrained", "none", "--epochs", "0", "--templates", "1", "--quiet"])
    assert rc in (0, None), f"training.train exited {rc}"
    onnx_path = export_onnx(run, root / "nsnet.onnx")
    return {"run": run, "onnx": Path(onnx_path), "root": root}


def write_png(path: Path, rgb: np.ndarray) -> Path:
    """Lossless file of exactly these pixels (RGB or gray, uint8 or uint16)."""
    import cv2

    arr = rgb[..., ::-1] if rgb.ndim == 3 and rgb.shape[2] == 3 else rgb
    if rgb.ndim == 3 and rgb.shape[2] == 4:
        arr = rgb[..., [2, 1, 0, 3]]
    assert cv2.imwrite(str(path), np.ascontiguousarray(arr))
    return path


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """An RGB uint8 picture with structure at several scales (distinct patch entropies)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = (127 + 60 * np.sin(x / (3 + seed % 5)) * np.cos(y / 7.0))[..., None]
    noise = rng.normal(0, 1, (h, w, 3)) * (8 + 40 * (x[..., None] > w // 2))
    return np.clip(base + noise + rng.integers(-60, 60, 3), 0, 255).astype(np.uint8)


def survivors(pids: list[int], within_s: float) -> list[int]:
    """The processes of ``pids`` still running (zombies count as gone) after waiting up to
    ``within_s`` seconds for them to end; those are then SIGKILLed, not left to the next test."""
    import os
    import signal
    import time

    import psutil

    def alive() -> list[int]:
        left = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    left.append(pid)
            except psutil.NoSuchProcess:
                pass
        return left

    deadline = time.monotonic() + within_s
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = alive()
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left
