"""Inference backends. Each module imports its runtime library only when a backend is built,
so `import nsnet_sdk` stays free of torch and tensorrt."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Backend(Protocol):
    """What `Detector` needs from a runtime.

    ``metadata`` is the artifact's flat ``nsnet.*`` string map (docs/formats.md); ``device`` a short
    human description of where it runs; ``run`` maps float32 (B,3,S,S) to float32 logits (B,).
    """

    name: str
    device: str
    metadata: dict[str, str]

    def run(self, images: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


def gpu_index(device: Any) -> int:
    """The CUDA device a TensorRT engine runs on: None → 0; an int, ``"N"``, ``"cuda"`` or
    ``"cuda:N"`` → N. Anything else (``"cpu"``) is a `ValueError`: an engine runs only on a GPU."""
    if device is None:
        return 0
    text = str(device).strip().lower()
    text = "0" if text == "cuda" else text.removeprefix("cuda:")
    if isinstance(device, bool) or not text.isdigit():
        raise ValueError(f"a TensorRT engine runs on a CUDA device: device must be a GPU index or "
                         f"'cuda:N', got {device!r}")
    return int(text)


def load_backend(kind: str, path: str | Path, **options: Any) -> Backend:
    """Build the backend ``kind`` (see `nsnet_sdk.artifact.artifact_kind`) for ``path``."""
    if kind == "onnxruntime":
        from .onnxruntime import OrtBackend
        return OrtBackend(path, providers=options.get("providers"),
                          intra_op_threads=options.get("intra_op_threads"))
    if kind == "tensorrt":
        from .tensorrt import TensorRTBackend
        return TensorRTBackend(path, device_id=gpu_index(options.get("device")))
    if kind == "torch":
        from .torch import TorchBackend
        return TorchBackend(path, device=options.get("device"),
                            intra_op_threads=options.get("intra_op_threads"))
    raise ValueError(f"unknown backend kind {kind!r}")
