"""Parity of exported artifacts against the unfolded PyTorch model, run through the SDK's backends.

What ships is what is checked: an ``.onnx`` file runs in `nsnet_sdk`'s ONNX Runtime backend, an
``.engine`` in its TensorRT backend, and the bounds apply to the backend's ``logit`` and to
``sigmoid(logit)`` — what `nsnet_sdk.Detector` computes — not to the graph's own ``prob_fake``.
FP16 ONNX files run in a child process (`export.ort_run`): onnxruntime's CPU provider can crash
the process on FP16 graphs, and a crash must be a failed check, not a dead export or verify.

Bounds: FP32 max |Δlogit| ≤ 1e-4; FP16 max |Δprob| ≤ 5e-3 and ≥ 99.9 % decision agreement; INT8
reported only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from nsnet_sdk.prediction import sigmoid

FP32_LOGIT_BOUND = 1e-4
FP16_PROB_BOUND = 5e-3
FP16_AGREEMENT = 0.999
PARITY_BATCH = 16  # inputs per backend call: bounds the memory of a long --images run


@dataclass
class Parity:
    """An artifact's logits against the PyTorch reference on the same inputs."""

    precision: str
    n: int
    max_abs_logit: float
    max_abs_prob: float       # of sigmoid(logit), the probability Detector reports
    agreement: float          # fraction of equal decisions at the checkpoint's threshold
    logit_corr: float

    def passes(self) -> bool:
        """Within the bound of its precision (INT8 always passes: reported, not bounded; a
        precision without a bound never passes)."""
        if self.precision == "fp32":
            return self.max_abs_logit <= FP32_LOGIT_BOUND
        if self.precision == "fp16":
            return self.max_abs_prob <= FP16_PROB_BOUND and self.agreement >= FP16_AGREEMENT
        return self.precision == "int8"

    def __str__(self) -> str:
        return (f"{self.precision}: n={self.n} max|Δlogit|={self.max_abs_logit:.3g} "
                f"max|Δprob|={self.max_abs_prob:.3g} agreement={100 * self.agreement:.2f}% "
                f"corr={self.logit_corr:.5f}")


def compare(precision: str, ref_logit: np.ndarray, logit: np.ndarray, threshold: float) -> Parity:
    """`Parity` of ``logit`` against ``ref_logit``; probabilities are ``sigmoid`` of each, decisions
    ``prob >= threshold`` (as in `nsnet_sdk.Detector`)."""
    ref_logit = np.asarray(ref_logit, np.float64).reshape(-1)
    logit = np.asarray(logit, np.float64).reshape(-1)
    if ref_logit.shape != logit.shape:
        raise ValueError(f"{len(logit)} logits against {len(ref_logit)} reference logits")
    ref_prob, prob = sigmoid(ref_logit), sigmoid(logit)
    n = len(ref_logit)
    if n > 1 and np.std(ref_logit) > 0 and np.std(logit) > 0:
        corr = float(np.corrcoef(ref_logit, logit)[0, 1])
    else:
        corr = float("nan")
    return Parity(
        precision=precision, n=n,
        max_abs_logit=float(np.max(np.abs(logit - ref_logit))) if n else 0.0,
        max_abs_prob=float(np.max(np.abs(prob - ref_prob))) if n else 0.0,
        agreement=float(np.mean((prob >= threshold) == (ref_prob >= threshold))) if n else 1.0,
        logit_corr=corr,
    )


def parity_inputs(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Random inputs distributed like normalised images (unit scale), reproducible."""
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def batches(images: np.ndarray, batch: int = PARITY_BATCH) -> Iterator[np.ndarray]:
    """Consecutive slices of at most ``batch`` inputs."""
    for i in range(0, len(images), batch):
        yield images[i:i + batch]


def reference_logits(model, images: np.ndarray, batch: int = PARITY_BATCH) -> np.ndarray:
    """Logits of the unfolded PyTorch NSNet (float64 array)."""
    import torch

    out = [np.zeros(0)]
    with torch.inference_mode():
        for chunk in batches(images, batch):
            out.append(model(torch.from_numpy(np.ascontiguousarray(chunk))).double().numpy().reshape(-1))
    return np.concatenate(out)


def open_artifact(path: str | Path, *, isolated: bool = False) -> Any:
    """The SDK backend that serves ``path`` (`nsnet_sdk.backends`): ONNX Runtime on the CPU
    provider for ``.onnx`` (in a child process when ``isolated``), TensorRT for ``.engine``.
    Raises what the backend raises (`nsnet_sdk.errors.ModelLoadError` and subclasses)."""
    from nsnet_sdk.artifact import ONNXRUNTIME, artifact_kind
    from nsnet_sdk.backends import load_backend

    kind = artifact_kind(path)
    if kind == ONNXRUNTIME:
        if isolated:
            from export.ort_run import IsolatedOrtBackend

            return IsolatedOrtBackend(path)
        # The CPU provider: the reference arithmetic, the same on every machine.
        return load_backend(kind, path, providers=["CPUExecutionProvider"])
    return load_backend(kind, path)


def backend_logits(backend: Any, images: Iterable[np.ndarray] | np.ndarray) -> np.ndarray:
    """float64 logits of ``backend.run`` over ``images`` (an array, split in `PARITY_BATCH`es, or an
    iterable of batches)."""
    chunks = batches(images) if isinstance(images, np.ndarray) else images
    return np.concatenate([np.zeros(0)] + [np.asarray(backend.run(c), np.float64).reshape(-1) for c in chunks])


def artifact_logits(path: str | Path, images: np.ndarray, *, isolated: bool = False) -> np.ndarray:
    """float64 logits of ``images`` through the SDK backend of ``path`` (see `open_artifact`)."""
    backend = open_artifact(path, isolated=isolated)
    try:
        return backend_logits(backend, images)
    finally:
        backend.close()
