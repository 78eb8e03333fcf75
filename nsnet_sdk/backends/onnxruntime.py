"""ONNX Runtime backend: CUDA EP → CPU EP by availability (TensorRT EP when asked for), IO binding
with device memory on a GPU provider.

A provider that was asked for (``providers=[...]`` or ``device="cuda"``) either runs or is a
`BackendUnavailableError` naming it and ONNX Runtime's reason: ORT itself drops a GPU provider it
cannot start (onnxruntime-gpu without the CUDA libraries or a driver) with a log line and runs the
session on the CPU. Only the default (``device=None``/``"auto"``) falls back, with one warning.

The TensorRT execution provider is not in the default order: without an engine cache it builds a
TensorRT engine of the whole graph at every process start (minutes for ViT-L/14). Ask for it by
name (``providers=["TensorrtExecutionProvider", ...]``) and it gets an engine cache next to the
model and the batch profile of `tensorrt_provider_options`; for TensorRT, the ``.engine`` path
(export/to_trt.py + the TensorRT backend) is the supported one.
"""
from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..artifact import read_onnx_metadata
from . import device_array, gpu_index
from ..errors import BackendUnavailableError, InferenceError, ModelLoadError

if TYPE_CHECKING:
    from ..artifact import ModelMeta

log = logging.getLogger(__name__)
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
_GPU_PROVIDERS = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}
# The first release that reads InferenceSession(..., enable_fallback=0): 1.20-1.22 ignore it and
# retry a failed GPU session on the CPU with the GPU's session options, the FP16 crash case.
MIN_ORT_VERSION = (1, 23)
TRT_PROFILE_BATCH = (1, 32, 128)  # min / opt / max batch of the TensorRT EP's profile


def require_ort_version(version: str, source: str = "") -> None:
    """`BackendUnavailableError` when onnxruntime ``version`` predates `MIN_ORT_VERSION`."""
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    if tuple(parts) < MIN_ORT_VERSION:
        need = ".".join(map(str, MIN_ORT_VERSION))
        raise BackendUnavailableError(
            f"{source}: onnxruntime {version} is too old (need >= {need}: older releases ignore "
            f"enable_fallback=0 and retry on the CPU with GPU options); pip install -U "
            f"'nsnet-sdk[cpu]' or 'nsnet-sdk[gpu]'", source=source or None)


def tensorrt_provider_options(model: str | Path, size: int = 224,
                              batch: tuple[int, int, int] = TRT_PROFILE_BATCH) -> dict[str, Any]:
    """Options for ONNX Runtime's TensorRT EP: an engine cache in ``<model>.trt_cache/`` (built once,
    reused by later processes) and one profile over the dynamic batch of ``images``."""
    lo, opt, hi = batch
    shape = lambda b: f"images:{b}x3x{size}x{size}"  # noqa: E731
    return {"trt_engine_cache_enable": True, "trt_timing_cache_enable": True,
            "trt_engine_cache_path": str(Path(model).with_name(Path(model).name + ".trt_cache")),
            "trt_profile_min_shapes": shape(lo), "trt_profile_opt_shapes": shape(opt),
            "trt_profile_max_shapes": shape(hi)}


def _name(provider: Any) -> str:
    return provider[0] if isinstance(provider, (tuple, list)) else provider


def requested_providers(providers: Sequence[Any] | None, device: Any = None) -> list[Any] | None:
    """What the caller asked for: ``providers`` as given; else from ``device`` (``"cpu"`` → the CPU
    EP; ``"cuda"``, ``"cuda:N"`` or N → the CUDA EP on GPU N); None for ``None``/``"auto"`` (the
    preferred order, falling back by availability)."""
    if providers:
        return list(providers)
    if device is None or str(device).strip().lower() == "auto":
        return None
    if str(device).strip().lower() == "cpu":
        return ["CPUExecutionProvider"]
    try:
        return [("CUDAExecutionProvider", {"device_id": gpu_index(device)})]
    except ValueError:
        raise ValueError(f"ONNX Runtime device must be 'auto', 'cpu', 'cuda', 'cuda:N' or a GPU "
                         f"index, got {device!r}") from None


def choose_providers(requested: Sequence[Any] | None, available: Sequence[str],
                     model: str | Path = "model.onnx", size: int = 224) -> list[Any]:
    """The providers to open a session with: ``requested`` as given (each must be available), or
    the preferred order filtered by availability. Entries may be names or (name, options); the
    TensorRT EP named without options gets `tensorrt_provider_options`."""
    if requested:
        out = []
        for p in requested:
            name = _name(p)
            if name not in available:
                hint = ("install onnxruntime-gpu for your CUDA major: pip install "
                        "'nsnet-sdk[gpu-cu12]' or 'nsnet-sdk[gpu-cu13]' (docs/nvidia.md)"
                        if name in _GPU_PROVIDERS else "check the provider's name")
                raise BackendUnavailableError(
                    f"{model}: ONNX Runtime provider {name!r} was requested but is not available "
                    f"in this onnxruntime build (available: {', '.join(available)}); {hint}",
                    source=str(model))
            if p == "TensorrtExecutionProvider":
                p = (name, tensorrt_provider_options(model, size))
            out.append(p)
        return out
    return [p for p in PREFERRED_PROVIDERS if p in available] or list(available)


_PROVIDER_LIBRARY = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "tensorrt"}
_preload_lock = threading.Lock()
_preload_notes: list[str] | None = None


def preload_gpu_libraries(ort: Any) -> list[str]:
    """Call ``onnxruntime.preload_dlls()`` once per process where it exists (>= 1.21): it loads the
    CUDA and cuDNN libraries installed by pip (``onnxruntime-gpu[cuda,cudnn]``) or torch, which the
    GPU providers otherwise find only on the library path. Returns the lines it printed (one per
    library it could not load), logged rather than printed: stdout may be a JSONL stream."""
    global _preload_notes
    with _preload_lock:
        if _preload_notes is None:
            out = io.StringIO()
            preload = getattr(ort, "preload_dlls", None)
            if preload is not None:
                try:
                    # contextlib swaps sys.stdout process-wide; held only for this one call.
                    with contextlib.redirect_stdout(out):
                        preload()
                except Exception as e:  # noqa: BLE001 - a diagnosis step must not stop loading
                    out.write(f"onnxruntime.preload_dlls() failed: {e}\n")
            _preload_notes = [ln.strip() for ln in out.getvalue().splitlines() if ln.strip()]
            for line in _preload_notes:
                log.info("onnxruntime.preload_dlls: %s", line)
        return list(_preload_notes)


def provider_failure_reason(ort: Any, provider: str) -> str:
    """Why ONNX Runtime did not start ``provider``. ORT writes its reason to its own C++ log only;
    the same loader error is reproduced here by loading the provider's shared library (what ORT
    does first) and then the NVIDIA driver library."""
    short = _PROVIDER_LIBRARY.get(provider)
    if short is None:
        return "ONNX Runtime did not start it (its log above says why)"
    lib = Path(ort.__file__).parent / "capi" / (f"onnxruntime_providers_{short}.dll" if os.name == "nt"
                                                else f"libonnxruntime_providers_{short}.so")
    if not lib.is_file():
        return f"onnxruntime {ort.__version__} has no {lib.name} (a CPU-only build?)"
    try:
        ctypes.CDLL(str(lib))
        if os.name != "nt":
            ctypes.CDLL("libcuda.so.1")  # the driver: its absence is the usual reason on a CPU box
    except OSError as e:
        reason = f"{e}"
    else:
        reason = "its libraries and the NVIDIA driver load, but ORT could not create it (no usable GPU?)"
    notes = _preload_notes or []
    return reason + (f" [onnxruntime.preload_dlls: {'; '.join(notes)}]" if notes else "")


def _new_session(ort: Any, path: Path, so: Any, providers: list[Any]) -> Any:
    # ORT's own Python warning about a provider missing from the available list is replaced by
    # this backend's single warning or error, which also carries ORT's reason.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*provider.*", category=UserWarning)
        return ort.InferenceSession(str(path), sess_options=so, providers=providers, enable_fallback=0)


class OrtBackend:
    """Runs an exported NS-Net ``.onnx`` file (FP32, FP16 or INT8) with ONNX Runtime."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, providers: Sequence[Any] | None = None,
                 intra_op_threads: int | None = None, *, device: Any = None,
                 meta: "ModelMeta | None" = None) -> None:
        """``providers`` / ``device``: see `requested_providers`; a requested provider that does not
        run is a `BackendUnavailableError`. ``meta``: the artifact's validated metadata when the
        caller (`Detector`) has already read it; read from the file otherwise."""
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailableError(f"{path}: ONNX Runtime is not installed: pip install "
                                          "'nsnet-sdk[cpu]' (on an NVIDIA machine 'nsnet-sdk[gpu]' "
                                          "for CUDA 13 or 'nsnet-sdk[gpu-cu12]' for CUDA 12)",
                                          source=str(path)) from e
        from ..ort_options import session_options_for

        require_ort_version(ort.__version__, str(path))
        self.path = Path(path)
        self.metadata = dict(meta.raw) if meta is not None else read_onnx_metadata(self.path)
        size = meta.preprocess.size if meta is not None else _input_size(self.metadata)
        requested = requested_providers(providers, device)
        chosen = choose_providers(requested, ort.get_available_providers(), self.path, size)
        if any(_name(p) in _PROVIDER_LIBRARY for p in chosen):
            preload_gpu_libraries(ort)
        precision = self.metadata.get("nsnet.precision", "fp32")
        wanted = _name(chosen[0])
        while True:
            first = _name(chosen[0])
            try:
                so = session_options_for(precision, first, intra_op_threads=intra_op_threads)
            except ValueError as e:  # unknown nsnet.precision
                raise ModelLoadError(f"{self.path}: {e}", source=str(self.path)) from e
            try:
                # ORT's own fallback (at load and at run) retries on CPU with the options chosen
                # for the GPU provider: for an FP16 model that is ORT_ENABLE_ALL on CPU, the
                # segfault case. Turned off, failures reach this loop, which re-picks options.
                self.session = _new_session(ort, self.path, so, chosen)
                break
            except Exception as e:  # ORT raises its own untyped errors for bad graphs
                # An EP can be compiled in yet unusable (TensorRT EP without TensorRT's
                # libraries): when we picked the providers, fall back to the next one.
                if requested or len(chosen) == 1:
                    cls = BackendUnavailableError if first in _PROVIDER_LIBRARY else ModelLoadError
                    raise cls(f"{self.path}: ONNX Runtime could not load the model on {first}: {e}",
                              source=str(self.path)) from e
                chosen = chosen[1:]
        active = self.session.get_providers()
        running = active[0] if active else "CPUExecutionProvider"
        if running != wanted:
            reason = provider_failure_reason(ort, wanted)
            if requested:
                raise BackendUnavailableError(
                    f"{self.path}: ONNX Runtime provider {wanted!r} was requested but the session "
                    f"runs on {running!r}: {reason}. Install the CUDA libraries of onnxruntime-gpu's "
                    f"CUDA major (pip install 'nsnet-sdk[gpu-cu12]' or '[gpu-cu13]'), or pass "
                    f"device='auto' to accept the fallback", source=str(self.path))
            warnings.warn(f"{self.path}: ONNX Runtime could not start {wanted} and runs on "
                          f"{running}: {reason}", UserWarning, stacklevel=3)
        if running != first:
            # ORT dropped a provider it lists as available but cannot start, and runs on the
            # next one with the options chosen for the first. Rebuild with the options of the
            # provider that really runs.
            so = session_options_for(precision, running, intra_op_threads=intra_op_threads)
            kept = [p for p in chosen if _name(p) in active]
            self.session = _new_session(ort, self.path, so, kept or active)
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if "images" not in inputs or "logit" not in outputs:
            raise ModelLoadError(f"{self.path}: expected input 'images' and output 'logit', "
                                 f"found inputs {inputs} and outputs {outputs}",
                                 source=str(self.path))
        active = self.session.get_providers()
        self.device = active[0] if active else "CPUExecutionProvider"
        # On a GPU provider, IO binding: a host input is copied to the device once, a device input
        # (see `device_array`) is read in place, and the outputs stay in device memory.
        self._use_binding = self.device in _GPU_PROVIDERS
        self.accepts_device_input = self._use_binding  # the GPU pipeline hands over its tensor
        options = self.session.get_provider_options().get(self.device, {})
        self._device_id = int(options.get("device_id", 0) or 0)

    def run(self, images: Any) -> np.ndarray:
        """float32 (B,3,S,S) → float32 logits (B,). ``images`` is a host array, or on a GPU provider
        also a CUDA array (a torch CUDA tensor or anything with ``__cuda_array_interface__``)."""
        device = device_array(images, self._device_id if self._use_binding else None)
        if device is not None and not self._use_binding:
            raise InferenceError(f"{self.path}: a CUDA input needs a GPU provider; this session "
                                 f"runs on {self.device}", source=str(self.path))
        if device is None:
            images = np.ascontiguousarray(images, dtype=np.float32)
        n = int(device[1][0]) if device is not None else len(images)
        try:
            if self._use_binding:
                binding = self.session.io_binding()
                if device is not None:
                    ptr, shape = device
                    binding.bind_input("images", "cuda", self._device_id, np.float32, list(shape), ptr)
                else:
                    binding.bind_cpu_input("images", images)
                binding.bind_output("logit", "cuda", self._device_id)
                self.session.run_with_iobinding(binding)
                logit = binding.copy_outputs_to_cpu()[0]  # the only copy: B floats to the host
            else:
                logit = self.session.run(["logit"], {"images": images})[0]
            return np.asarray(logit, dtype=np.float32).reshape(n)
        except Exception as e:  # ORT's own errors, or a 'logit' not of shape [B]
            raise InferenceError(f"{self.path}: ONNX Runtime failed on a batch of "
                                 f"{n}: {e}", source=str(self.path)) from e

    def close(self) -> None:
        self.session = None


def _input_size(metadata: dict[str, str]) -> int:
    """Side of the network input the artifact's preprocessing config implies (the default config's
    when the metadata is unusable: loading reports that, not this)."""
    from ..artifact import ModelMeta
    from ..pipeline import DEFAULT

    try:
        return ModelMeta.parse(metadata, "").preprocess.size
    except ModelLoadError:
        return DEFAULT.size
