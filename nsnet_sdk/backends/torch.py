"""PyTorch backend: the unfolded training checkpoint (a run directory), for parity checks and
users without ONNX. Imports torch and `training` only when built."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, InferenceError, ModelLoadError


def checkpoint_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """nsnet.json → the flat ``nsnet.*`` map every backend reports (docs/formats.md)."""
    pre = meta.get("preprocess")
    out = {
        "nsnet.format": str(meta.get("format", "")),
        "nsnet.backbone": str(meta.get("backbone", "")),
        "nsnet.precision": "fp32",
        "nsnet.threshold": repr(float(meta["threshold"])) if "threshold" in meta else "",
    }
    if pre is not None:
        out["nsnet.preprocess"] = json.dumps(pre, sort_keys=True, separators=(",", ":"))
    rank = (meta.get("projector") or {}).get("rank")
    if rank is not None:
        out["nsnet.projector_rank"] = str(rank)
    return {k: v for k, v in out.items() if v != ""}


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
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise ModelLoadError(f"{self.path}: cannot load checkpoint: {e}",
                                 source=str(self.path)) from e
        self.metadata = checkpoint_metadata(meta)

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
