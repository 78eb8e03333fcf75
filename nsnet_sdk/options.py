"""The `Detector`'s option groups: how inputs are read and prepared (`InputOptions`) and how the
model is run (`BackendOptions`). Frozen and checked when built, so a bad value or a combination in
which an option would be silently ignored fails at once, naming the option and the fix."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

from .constants import DEFAULT_BATCH_SIZE
from .pipeline.config import MAX_PIXELS
from .pipeline.executors import DECODE_MODES
from .pipeline.gpu import PIPELINES
from .pipeline.inputs import CHANNELS

__all__ = ["InputOptions", "BackendOptions", "ENGINES", "PRECISIONS", "DEFAULT_BATCH_SIZE",
           "default_workers"]

ENGINES = ("onnxruntime", "tensorrt", "torch", "openvino")
AUTO = "auto"  # engine: for an .onnx file, the fastest measured CPU engine on this CPU (docs/openvino.md)
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
HINTS = ("latency", "throughput")  # OpenVINO's performance hints
# What each engine can run; None: the model file decides (ONNX Runtime and TensorRT run the
# precision the artifact was exported in), "any": the backend checks it against the hardware.
_ENGINE_PRECISIONS: dict[str, tuple[str, ...] | None] = {
    "torch": ("fp32", "fp16"), "onnxruntime": None, "tensorrt": None, "openvino": PRECISIONS}
# Engines that take intra_op_threads (TensorRT's work runs on the GPU).
_THREADED_ENGINES = ("onnxruntime", "torch", "openvino")


def default_workers() -> int:
    """Decode threads: one per core, at most 8 (beyond that the backend is the bottleneck)."""
    return max(1, min(8, os.cpu_count() or 1))


def _int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__") or int(value) < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class InputOptions:
    """How the `Detector` reads, decodes and prepares inputs.

    Args:
        batch_size: default batch size of `Detector.predict` / `predict_iter`.
        workers: decode/preprocess workers (0 = on the calling thread); None: one per core, at most 8.
        executor: how the CPU pipeline's workers run: ``"threads"`` (default) or ``"processes"``
            (worker processes writing into shared memory; ``pipeline="cpu"`` and ``workers >= 1`` only).
        pipeline: ``"cpu"`` (decode and patch selection in the workers), ``"gpu"`` (batched
            nvImageCodec decode and torch patch selection on the backend's ``device``;
            ``device="cpu"`` runs it on the CPU) or ``"auto"`` (GPU where CUDA and nvImageCodec
            exist). docs/nvidia.md.
        channels: channel order of numpy array inputs, ``"rgb"`` (default) or ``"bgr"`` (OpenCV's).
        max_pixels: images whose header declares more pixels are refused before decoding.
        provenance: True or a `nsnet_sdk.provenance.ProvenanceReader`: fill `Prediction.provenance`
            from the same bytes the image is decoded from.

    Raises:
        ValueError: a value out of range, or an option that the chosen pipeline would ignore.
    """

    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = None
    executor: str = "threads"
    pipeline: str = "cpu"
    channels: str = "rgb"
    max_pixels: int = MAX_PIXELS
    provenance: Any = False

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen)
        set_("batch_size", _int("batch_size", self.batch_size, 1))
        set_("workers", default_workers() if self.workers is None else _int("workers", self.workers, 0))
        set_("max_pixels", _int("max_pixels", self.max_pixels, 1))
        for name, allowed in (("executor", DECODE_MODES), ("pipeline", PIPELINES), ("channels", CHANNELS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.executor == "processes" and self.pipeline != "cpu":
            raise ValueError(f"executor='processes' applies to the CPU pipeline only, not "
                             f"pipeline={self.pipeline!r} (batches of the GPU pipeline are decoded "
                             "in one task); use pipeline='cpu' or executor='threads'")
        if self.executor == "processes" and self.workers == 0:
            raise ValueError("executor='processes' needs workers >= 1 (workers=0 decodes on the "
                             "calling thread); give workers or use executor='threads'")
        from .provenance import provenance_reader  # checks the value; c2pa is imported only later

        provenance_reader(self.provenance)


@dataclass(frozen=True)
class BackendOptions:
    """How the `Detector` runs the model.

    Args:
        engine: ``"onnxruntime"``, ``"tensorrt"``, ``"torch"`` or ``"openvino"``; None: by the
            artifact's kind (``.onnx`` → ONNX Runtime, ``.engine`` → TensorRT, run directory →
            torch). An ``.onnx`` file may also be run by ``"openvino"``. ``"auto"``: for an
            ``.onnx`` file on the CPU, the engine and precision `cpu_engine_choice` picks from the
            measured table (``precision`` is then the parity bound the choice must stay within);
            other artifacts run on their own engine. `Detector.info` says which and why.
        device: where the model runs (and the GPU pipeline with it): torch: a torch device
            (default ``cuda`` when available, else ``cpu``); TensorRT: a GPU index or ``"cuda:N"``;
            ONNX Runtime: ``"cpu"`` or ``"cuda[:N]"`` picks the execution provider when
            ``providers`` is not given (the backend maps it); OpenVINO: ``"cpu"``.
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"int8"``, passed to the engine; None: the
            artifact's. ONNX Runtime and TensorRT run the precision the file was exported in.
        providers: ONNX Runtime execution providers (names or (name, options)), in order.
        intra_op_threads: threads inside one inference (ONNX Runtime, torch, OpenVINO).
        cuda_graphs: replay one CUDA graph per batch size (torch engine on a CUDA device).
        hint: OpenVINO's performance hint, ``"latency"`` or ``"throughput"`` (openvino engine).

    Raises:
        ValueError: a value out of range; `check` raises for an option the engine cannot honour.
    """

    engine: str | None = None
    device: str | int | None = None
    precision: str | None = None
    providers: Sequence[Any] | None = None
    intra_op_threads: int | None = None
    cuda_graphs: bool = False
    hint: str | None = None

    def __post_init__(self) -> None:
        if self.hint is not None and self.hint not in HINTS:
            raise ValueError(f"hint must be one of {HINTS} (or None: the engine's default), got {self.hint!r}")
        if self.engine is not None and self.engine not in ENGINES + (AUTO,):
            raise ValueError(f"engine must be one of {ENGINES + (AUTO,)} (or None: by the model "
                             f"file's kind), got {self.engine!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS} (or None: the model's), "
                             f"got {self.precision!r}")
        if self.intra_op_threads is not None:
            object.__setattr__(self, "intra_op_threads",
                               _int("intra_op_threads", self.intra_op_threads, 1))
        if self.providers is not None:
            if isinstance(self.providers, (str, bytes)) or not self.providers:
                raise ValueError(f"providers must be a non-empty list of ONNX Runtime provider "
                                 f"names, got {self.providers!r}")
            object.__setattr__(self, "providers", tuple(self.providers))
        if not isinstance(self.cuda_graphs, bool):
            raise ValueError(f"cuda_graphs must be True or False, got {self.cuda_graphs!r}")
        if isinstance(self.device, bool) or not (self.device is None or isinstance(self.device, (str, int))):
            raise ValueError(f"device must be a device name ('cpu', 'cuda:0') or a GPU index, "
                             f"got {self.device!r}")

    def check(self, engine: str, model_precision: str) -> None:
        """`ValueError` naming the option when ``engine`` (the one that will run a model stored
        in ``model_precision``) cannot honour one of these options instead of ignoring it."""
        if self.cuda_graphs and engine != "torch":
            raise ValueError(f"cuda_graphs applies to the torch engine only, not {engine!r} "
                             "(TensorRT engines and ONNX Runtime manage their own graphs)")
        if self.providers is not None and engine != "onnxruntime":
            raise ValueError(f"providers are ONNX Runtime execution providers; the {engine!r} "
                             "engine takes none (use device=)")
        if self.intra_op_threads is not None and engine not in _THREADED_ENGINES:
            raise ValueError(f"intra_op_threads does not apply to the {engine!r} engine (its "
                             f"work runs on the GPU); it applies to {', '.join(_THREADED_ENGINES)}")
        allowed = _ENGINE_PRECISIONS[engine]
        if self.precision is not None and self.precision not in (allowed or (model_precision,)):
            why = (f"it runs {', '.join(allowed)}" if allowed else
                   f"it runs the precision the file was exported in ({model_precision}); export "
                   f"a {self.precision} model instead")
            raise ValueError(f"precision={self.precision!r} cannot be honoured by the {engine!r} "
                             f"engine: {why}")
        if self.hint is not None and engine != "openvino":
            raise ValueError(f"hint is OpenVINO's performance hint; the {engine!r} engine takes none")
        dev = None if self.device is None else str(self.device).lower()
        if engine == "openvino" and dev not in (None, "cpu"):
            raise ValueError(f"device={self.device!r} does not apply to the openvino engine, which "
                             "runs on the CPU here (device='cpu' or None)")

    def load_options(self) -> dict[str, Any]:
        """The keyword options `nsnet_sdk.backends.load_backend` gets (each backend reads what
        applies to it; `check` has refused the rest)."""
        opts: dict[str, Any] = {"device": self.device}
        if self.intra_op_threads is not None:
            opts["intra_op_threads"] = self.intra_op_threads
        if self.precision is not None:
            opts["precision"] = self.precision
        if self.cuda_graphs:
            opts["cuda_graphs"] = True
        if self.providers is not None:
            opts["providers"] = list(self.providers)
        if self.hint is not None:
            opts["hint"] = self.hint
        return opts


def as_backend_options(backend: Any) -> BackendOptions:
    """`Detector`'s ``backend=``: None, an engine name, or `BackendOptions`."""
    if backend is None:
        return BackendOptions()
    if isinstance(backend, str):
        return BackendOptions(engine=backend)
    if isinstance(backend, BackendOptions):
        return backend
    raise ValueError(f"backend must be an engine name {ENGINES} or a BackendOptions, got {backend!r}")


def as_input_options(options: Any) -> InputOptions:
    """`Detector`'s ``options=``: None (the defaults) or `InputOptions`."""
    if options is None:
        return InputOptions()
    if isinstance(options, InputOptions):
        return options
    raise ValueError(f"options must be an InputOptions, got {options!r}")


def check_threshold(t: Any) -> float:
    """A decision threshold as a float in [0, 1]; `ValueError` otherwise."""
    try:
        t = float(t)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number in [0, 1], got {t!r}") from None
    if not (math.isfinite(t) and 0.0 <= t <= 1.0):
        raise ValueError(f"threshold must be in [0, 1], got {t}")
    return t
