"""PyTorch backend: the unfolded training checkpoint (a run directory), for parity checks, users
without ONNX, and the GPU pipeline's device tensors (FP16 and CUDA graphs on CUDA when asked).
Imports torch and `nsnet_sdk.model` only when built."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import ModelMeta, artifact_metadata
from ..errors import BackendUnavailableError, InferenceError, ModelLoadError, NSNetError


class TorchBackend:
    """Runs `nsnet_sdk.model.NSNet` loaded from a run directory (or its ``nsnet.safetensors``)."""

    name = "torch"

    def __init__(self, path: str | Path, device: str | None = None,
                 intra_op_threads: int | None = None, *, precision: str = "fp32",
                 cuda_graphs: bool = False, meta: ModelMeta | None = None) -> None:
        """``precision="fp16"`` runs under CUDA autocast (FP32 reductions kept); ``cuda_graphs``
        replays one captured graph per batch size. Both only on CUDA; the default is plain FP32.
        ``meta``: the run directory's validated metadata when the caller has already read it."""
        self.path = Path(path)
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
        run_dir = self.path if self.path.is_dir() else self.path.parent
        try:
            import torch
            from ..model import load_checkpoint
        except ImportError as e:
            raise BackendUnavailableError(
                f"{self.path}: the PyTorch backend needs torch and the training package "
                f"(pip install 'nsnet-sdk[train]' from the checkout): {e}", source=str(self.path)) from e
        self._torch = torch
        if intra_op_threads:
            torch.set_num_threads(int(intra_op_threads))
        if isinstance(device, int):
            device = f"cuda:{device}"
        self.device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            self.model, doc = load_checkpoint(run_dir, device=self.device)
        except NSNetError:
            raise  # already names the file and the field
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise ModelLoadError(f"{self.path}: cannot load checkpoint: {e}",
                                 source=str(self.path)) from e
        on_cuda = self.device.startswith("cuda")
        if (precision == "fp16" or cuda_graphs) and not on_cuda:
            raise ValueError(f"{self.path}: precision='fp16' and cuda_graphs need a CUDA device, "
                             f"not {self.device!r}")
        self.precision, self.cuda_graphs = precision, bool(cuda_graphs)
        self.metadata = (meta.metadata(precision=precision) if meta is not None
                         else artifact_metadata(doc, precision=precision, fmt=doc["format"]))
        self._graphs: dict[int, tuple[Any, Any, Any]] = {}

    def _forward(self, x):
        torch = self._torch
        if self.precision == "fp32":
            return self.model(x).float().reshape(len(x))
        # The autocast weight cache must be off under graph capture (its casts would be skipped).
        with torch.autocast("cuda", dtype=torch.float16, cache_enabled=not self.cuda_graphs):
            return self.model(x).float().reshape(len(x))

    def _replay(self, x):
        """The captured graph for this batch size (captured on first use, after warm-up runs on
        a side stream as CUDA graph capture requires), replayed on a copy of ``x``."""
        torch = self._torch
        if len(x) not in self._graphs:
            static_in = x.clone()
            side = torch.cuda.Stream(device=x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._forward(static_in)
            torch.cuda.current_stream(x.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # "thread_local", not torch's default "global": in global mode a CUDA call that is
            # unsafe during capture (cudaMalloc, a synchronise, cuFFT plan creation) made by *any*
            # thread invalidates the capture, and the input pipeline's pool threads allocate, run
            # FFTs, decode with nvImageCodec and synchronise while this thread captures. Their
            # work goes to other streams, so only this thread's own calls can break the capture.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                static_out = self._forward(static_in)
            self._graphs[len(x)] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[len(x)]
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def run(self, images: Any) -> np.ndarray:
        """float32 (B,3,S,S) → float32 logits (B,). ``images``: a numpy array, or a torch tensor,
        used where it lies when it is on this backend's device (no host round trip)."""
        torch = self._torch
        try:
            with torch.inference_mode():
                if isinstance(images, torch.Tensor):
                    x = images.to(self.device, torch.float32)
                else:
                    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
                logit = self._replay(x) if self.cuda_graphs else self._forward(x)
            return logit.cpu().numpy()
        except RuntimeError as e:
            raise InferenceError(f"{self.path}: PyTorch failed on a batch of {len(images)}: {e}",
                                 source=str(self.path)) from e

    def close(self) -> None:
        self.model = None
        self._graphs.clear()
