"""ONNX Runtime backend: CUDA EP → CPU EP by availability (TensorRT EP when asked for), IO binding
with device memory on a GPU provider.

The TensorRT execution provider is not in the default order: without an engine cache it builds a
TensorRT engine of the whole graph at every process start (minutes for ViT-L/14). Ask for it by
name (``providers=["TensorrtExecutionProvider", ...]``) and it gets an engine cache next to the
model and the batch profile of `tensorrt_provider_options`; for TensorRT, the ``.engine`` path
(export/to_trt.py + the TensorRT backend) is the supported one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..artifact import read_onnx_metadata
from . import device_array
from ..errors import BackendUnavailableError, InferenceError, ModelLoadError

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


def choose_providers(requested: Sequence[Any] | None, available: Sequence[str],
                     model: str | Path = "model.onnx", size: int = 224) -> list[Any]:
    """The providers to open a session with: ``requested`` as given (each must be available), or
    the preferred order filtered by availability. Entries may be names or (name, options); the
    TensorRT EP named without options gets `tensorrt_provider_options`."""
    if requested:
        out = []
        for p in requested:
            name = p[0] if isinstance(p, (tuple, list)) else p
            if name not in available:
                raise ModelLoadError(f"ONNX Runtime provider {name!r} is not available here "
                                     f"(available: {', '.join(available)})")
            if p == "TensorrtExecutionProvider":
                p = (name, tensorrt_provider_options(model, size))
            out.append(p)
        return out
    return [p for p in PREFERRED_PROVIDERS if p in available] or list(available)


class OrtBackend:
    """Runs an exported NS-Net ``.onnx`` file (FP32, FP16 or INT8) with ONNX Runtime."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, providers: Sequence[Any] | None = None,
                 intra_op_threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailableError(f"{path}: ONNX Runtime is not installed: pip install "
                                          "'nsnet-sdk[cpu]' (or 'nsnet-sdk[gpu]' on an NVIDIA machine)",
                                          source=str(path)) from e
        from ..ort_options import session_options_for

        require_ort_version(ort.__version__, str(path))
        self.path = Path(path)
        self.metadata = read_onnx_metadata(self.path)
        chosen = choose_providers(providers, ort.get_available_providers(), self.path,
                                  _input_size(self.metadata))
        precision = self.metadata.get("nsnet.precision", "fp32")
        while True:
            first = chosen[0][0] if isinstance(chosen[0], (tuple, list)) else chosen[0]
            try:
                so = session_options_for(precision, first, intra_op_threads=intra_op_threads)
            except ValueError as e:  # unknown nsnet.precision
                raise ModelLoadError(f"{self.path}: {e}", source=str(self.path)) from e
            try:
                # ORT's own fallback (at load and at run) retries on CPU with the options chosen
                # for the GPU provider: for an FP16 model that is ORT_ENABLE_ALL on CPU, the
                # segfault case. Turned off, failures reach this loop, which re-picks options.
                self.session = ort.InferenceSession(str(self.path), sess_options=so,
                                                    providers=chosen, enable_fallback=0)
                break
            except Exception as e:  # ORT raises its own untyped errors for bad graphs
                # An EP can be compiled in yet unusable (TensorRT EP without TensorRT's
                # libraries): when we picked the providers, fall back to the next one.
                if providers or len(chosen) == 1:
                    raise ModelLoadError(f"{self.path}: ONNX Runtime could not load the model: "
                                         f"{e}", source=str(self.path)) from e
                chosen = chosen[1:]
        active = self.session.get_providers()
        if active and active[0] != first:
            # ORT drops a provider it lists as available but cannot start (onnxruntime-gpu
            # without CUDA) with only a warning, and runs on the next one with the options chosen
            # for the first. Rebuild with the options of the provider that really runs.
            so = session_options_for(precision, active[0], intra_op_threads=intra_op_threads)
            running = [p for p in chosen if (p[0] if isinstance(p, (tuple, list)) else p) in active]
            self.session = ort.InferenceSession(str(self.path), sess_options=so,
                                                providers=running or active, enable_fallback=0)
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
