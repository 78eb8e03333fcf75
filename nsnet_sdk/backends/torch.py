"""PyTorch backend: the unfolded training checkpoint (a run directory), for parity checks and
users without ONNX. Imports torch and `nsnet_sdk.model` only when built."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifact import artifact_metadata
from ..errors import BackendUnavailableError, InferenceError, ModelLoadError, NSNetError


class TorchBackend:
    """Runs `nsnet_sdk.model.NSNet` loaded from a run directory (or its ``nsnet.safetensors``)."""

    name = "torch"

    def __init__(self, path: str | Path, device: str | None = None,
                 intra_op_threads: int | None = None) -> None:
        self.path = Path(path)
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
            self.model, meta = load_checkpoint(run_dir, device=self.device)
        except NSNetError:
            raise  # already names the file and the field
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise ModelLoadError(f"{self.path}: cannot load checkpoint: {e}",
                                 source=str(self.path)) from e
        self.metadata = artifact_metadata(meta, precision="fp32", fmt=meta["format"])

    def run(self, images: np.ndarray) -> np.ndarray:
        """float32 (B,3,S,S) → float32 logits (B,)."""
        torch = self._torch
        try:
            with torch.inference_mode():
                x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
                logit = self.model(x).float().reshape(len(images))
            return logit.cpu().numpy()
        except RuntimeError as e:
            raise InferenceError(f"{self.path}: PyTorch failed on a batch of {len(images)}: {e}",
                                 source=str(self.path)) from e

    def close(self) -> None:
        self.model = None
