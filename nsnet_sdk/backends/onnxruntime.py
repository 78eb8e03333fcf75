"""ONNX Runtime backend: TensorRT EP → CUDA EP → CPU EP by availability, IO binding on GPU."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..artifact import read_onnx_metadata  # noqa: F401  (the SDK's reader; re-exported here)
from ..errors import BackendUnavailableError, InferenceError, ModelLoadError

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_GPU_PROVIDERS = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}


def choose_providers(requested: Sequence[Any] | None, available: Sequence[str]) -> list[Any]:
    """The providers to open a session with: ``requested`` as given (each must be available), or
    the preferred order filtered by availability. Entries may be names or (name, options)."""
    if requested:
        for p in requested:
            name = p[0] if isinstance(p, (tuple, list)) else p
            if name not in available:
                raise ModelLoadError(f"ONNX Runtime provider {name!r} is not available here "
                                     f"(available: {', '.join(available)})")
        return list(requested)
    return [p for p in PREFERRED_PROVIDERS if p in available] or list(available)


class OrtBackend:
    """Runs an exported NS-Net ``.onnx`` file (FP32, FP16 or INT8) with ONNX Runtime."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, providers: Sequence[Any] | None = None,
                 intra_op_threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailableError(f"{path}: onnxruntime is not installed "
                                          "(pip install onnxruntime)", source=str(path)) from e
        from ..ort_options import session_options_for

        self.path = Path(path)
        self.metadata = read_onnx_metadata(self.path)
        chosen = choose_providers(providers, ort.get_available_providers())
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
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if "images" not in inputs or "logit" not in outputs:
            raise ModelLoadError(f"{self.path}: expected input 'images' and output 'logit', "
                                 f"found inputs {inputs} and outputs {outputs}",
                                 source=str(self.path))
        active = self.session.get_providers()
        self.device = active[0] if active else "CPUExecutionProvider"
        # On a GPU provider, bind the input once per batch so ORT copies it to the device a
        # single time and leaves outputs where we read them (see ORT's I/O binding guide).
        self._use_binding = self.device in _GPU_PROVIDERS

    def run(self, images: np.ndarray) -> np.ndarray:
        """float32 (B,3,S,S) → float32 logits (B,)."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        try:
            if self._use_binding:
                binding = self.session.io_binding()
                binding.bind_cpu_input("images", images)
                binding.bind_output("logit")
                self.session.run_with_iobinding(binding)
                logit = binding.copy_outputs_to_cpu()[0]
            else:
                logit = self.session.run(["logit"], {"images": images})[0]
            return np.asarray(logit, dtype=np.float32).reshape(len(images))
        except Exception as e:  # ORT's own errors, or a 'logit' not of shape [B]
            raise InferenceError(f"{self.path}: ONNX Runtime failed on a batch of "
                                 f"{len(images)}: {e}", source=str(self.path)) from e

    def close(self) -> None:
        self.session = None
