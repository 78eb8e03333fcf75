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

    Optional, looked up with ``getattr``: ``accepts_device_input`` (True when ``run`` also takes a
    CUDA array, see `device_array`, read in place; its producer must have finished writing it, e.g.
    by synchronising its stream, before ``run`` is called) and ``input_buffer(n)`` (a host array of
    n rows, e.g. pinned memory, that ``run`` reads without a host copy when handed it or a
    contiguous slice of it; reused once the caller drops it; or None).
    """

    name: str
    device: str
    metadata: dict[str, str]

    def run(self, images: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


def device_array(x: Any, device_id: int | None = None) -> tuple[int, tuple[int, ...]] | None:
    """(device pointer, shape) of a CUDA float32 (B,3,S,S) C-contiguous array — a torch CUDA tensor
    or any object with ``__cuda_array_interface__`` — or None for a host array. `InferenceError`
    for a CUDA array of another dtype, rank or layout (it cannot be bound as ``images``), or, where
    the object says its device (torch's ``.device``), on a GPU other than ``device_id``."""
    from ..errors import InferenceError

    cai = getattr(x, "__cuda_array_interface__", None)
    if cai is None:
        return None
    shape = tuple(int(d) for d in cai["shape"])
    if cai.get("typestr") != "<f4" or len(shape) != 4:
        raise InferenceError(f"CUDA input must be float32 (B,3,S,S), got {cai.get('typestr')} {shape}")
    strides = cai.get("strides")
    contiguous = tuple(int(np.prod(shape[i + 1:])) * 4 for i in range(len(shape)))
    if strides is not None and tuple(strides) != contiguous:
        raise InferenceError(f"CUDA input must be C-contiguous, got strides {tuple(strides)}")
    index = getattr(getattr(x, "device", None), "index", None)
    if device_id is not None and index is not None and int(index) != int(device_id):
        raise InferenceError(f"CUDA input is on cuda:{index}, the backend runs on cuda:{device_id}")
    return int(cai["data"][0]), shape


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
    """Build the backend ``kind`` (see `nsnet_sdk.artifact.artifact_kind`) for ``path``.

    ``meta``: the artifact's `ModelMeta` the caller has already read and validated (`Detector`
    passes its own), so the backend does not read and parse the metadata a second time."""
    meta = options.get("meta")
    if kind == "onnxruntime":
        from .onnxruntime import OrtBackend
        return OrtBackend(path, providers=options.get("providers"),
                          intra_op_threads=options.get("intra_op_threads"),
                          device=options.get("device"), meta=meta)
    if kind == "tensorrt":
        from .tensorrt import TensorRTBackend
        return TensorRTBackend(path, device_id=gpu_index(options.get("device")), meta=meta)
    if kind == "torch":
        from .torch import TorchBackend
        return TorchBackend(path, device=options.get("device"), intra_op_threads=options.get("intra_op_threads"),
                            precision=options.get("precision") or "fp32", cuda_graphs=bool(options.get("cuda_graphs")),
                            meta=meta)
    if kind == "openvino":
        from .openvino import OpenVinoBackend
        return OpenVinoBackend(path, precision=options.get("precision"), hint=options.get("hint"),
                               intra_op_threads=options.get("intra_op_threads"))
    raise ValueError(f"unknown backend kind {kind!r}")
