"""Inference backends. Each module imports its runtime library only when a backend is built,
so `import nsnet_sdk` stays free of torch and tensorrt."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, Sequence

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


# The CPU flags that decide the engine choice (`backends.openvino.isa_class` and the rows' ``needs``).
_CHOICE_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_engine_choice(precision: str, artifact_precision: str, *, features: Iterable[str] | None = None,
                      table: Sequence[Mapping[str, Any]] | None = None,
                      available: Iterable[str] | None = None) -> dict[str, Any]:
    """The engine ``backend="auto"`` runs an ``.onnx`` file on, on this CPU, and why: ``engine``,
    ``precision``, ``why`` (`backends.openvino.choose_cpu_engine`'s sentence), ``cpu`` (the CPU's
    ISA class), ``cpu_flags`` (those of its flags the choice looks at), ``row`` (the measured row of
    `cpu_engines.json` behind it; None for the baseline) and ``table`` (that file's path).

    ``features``, ``table`` and ``available`` default to this machine's flags, the checked-in table
    and the runtimes installed here; tests give their own. ``precision`` is the parity bound the
    engine must stay within (a BF16 engine is allowed by ``"bf16"``, never by ``"fp32"``).
    """
    from ..cpuinfo import cpu_features
    from . import openvino as ov  # the choice logic only: openvino itself is imported by the backend

    feats = frozenset(cpu_features() if features is None else features)
    rows = ov.load_engine_table() if table is None else list(table)
    have = ov.installed_cpu_engines() if available is None else list(available)
    choice = ov.choose_cpu_engine(feats, rows, precision=precision, artifact_precision=artifact_precision,
                                  available=have)
    return {"engine": choice.backend, "precision": choice.precision, "why": choice.why,
            "cpu": ov.isa_class(feats), "cpu_flags": sorted(feats & set(_CHOICE_FLAGS)),
            "row": None if choice.row is None else dict(choice.row),
            "table": str(ov.ENGINE_TABLE) if table is None else "given"}


def engine_choice(bopts: Any, kind: str, meta: Any) -> dict[str, Any]:
    """Which engine and precision run an artifact of ``kind`` (its `ModelMeta` ``meta``) under
    `BackendOptions` ``bopts``, and why (`Detector.info`'s ``engine_choice``); for ``engine="auto"``
    on an ``.onnx`` file on the CPU, `cpu_engine_choice` on this CPU."""
    from ..options import AUTO
    from .openvino import PRECISIONS as CPU_PRECISIONS

    precision = bopts.precision or meta.precision
    if bopts.engine != AUTO:
        why = (f"engine={bopts.engine!r} asked for" if bopts.engine is not None
               else f"the model file's own engine (a {kind} artifact)")
        return {"engine": bopts.engine or kind, "precision": precision, "why": why}
    if kind != "onnxruntime" or precision not in CPU_PRECISIONS or str(bopts.device or "cpu").lower() != "cpu":
        return {"engine": kind, "precision": precision, "why": (
            f"engine='auto' chooses among CPU engines for an .onnx file ({', '.join(CPU_PRECISIONS)}) on "
            f"device 'cpu'; this is a {meta.precision} {kind} artifact on device {bopts.device or 'default'}: "
            "its own engine")}
    return cpu_engine_choice(precision, meta.precision)


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
