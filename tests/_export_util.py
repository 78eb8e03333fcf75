"""Helpers for the export tests: random-weight run directories built with training.train --epochs 0."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from _training_util import CHEAP_CORPUS

REPO = Path(__file__).resolve().parents[1]


def make_run(out: Path, backbone: str, *extra: str, seed: int = 0) -> Path:
    """A run directory for ``backbone`` with random weights (`training.train --epochs 0`), plus
    ``extra`` arguments."""
    from training.train import main as train_main

    argv = ["--data", str(out / "no-data"), "--out", str(out), "--backbone", backbone, "--pretrained", "none",
            "--epochs", "0", "--seed", str(seed), "--quiet", *CHEAP_CORPUS, *extra]
    assert train_main(argv) in (0, None)
    return out


def random_inputs(n: int, seed: int = 1, size: int = 224) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def torch_logits(model, images: np.ndarray) -> np.ndarray:
    """Logits of the unfolded NSNet, in float64 (the reference every artifact is held to)."""
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(images)).double().numpy()


def weight_matmuls(onnx_path: Path) -> list[tuple[int, ...]]:
    """Shapes of the constant weight operand of every MatMul/Gemm: the layers with parameters."""
    import onnx
    from onnx import numpy_helper  # noqa: F401  (dims read from the proto; no weight data loaded)

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    consts = {n.output[0]: tuple(a.t.dims) for n in model.graph.node if n.op_type == "Constant"
              for a in n.attribute if a.name == "value"}
    shapes = []
    for n in model.graph.node:
        if n.op_type in ("MatMul", "Gemm"):
            for i in n.input[:2]:
                if i in inits or i in consts:
                    shapes.append(inits.get(i) or consts[i])
    return shapes


def script(name: str) -> list[str]:
    """argv prefix to run one of export/'s CLIs as the issue documents it (python export/NAME.py)."""
    return [sys.executable, str(REPO / "export" / f"{name}.py")]
