"""NS-Net: an open_clip visual tower, the semantic null-space projection and a small head.

Attribute names are a contract (docs/formats.md): ``visual``, ``nullspace.basis``, ``head.0``,
``head.2``, ``classifier``. The visual output is used unnormalised so export can fold
P = I − UUᵀ and ``head.0`` into ``visual.proj`` exactly.
"""
from __future__ import annotations

from pathlib import Path

import open_clip
import torch
from torch import nn

from ..errors import ModelLoadError
from .checkpoint import CONFIG, read_meta, read_weights, tensor_specs, weights_header

HEAD_HIDDEN = 512
HEAD_DIM = 128


def project(features: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """f·P computed as f − (f·U)·Uᵀ: O(dk) per row instead of O(d²)."""
    return features - (features @ basis) @ basis.T


class NullSpace(nn.Module):
    """Holds the basis as buffer ``basis`` (state-dict key ``nullspace.basis`` inside NSNet)."""

    def __init__(self, basis: torch.Tensor) -> None:
        super().__init__()
        if basis.ndim != 2:
            raise ValueError(f"basis must be (d, k), got shape {tuple(basis.shape)}")
        self.register_buffer("basis", basis.detach().clone().to(torch.float32))

    @property
    def rank(self) -> int:
        return int(self.basis.shape[1])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return project(features, self.basis.to(features.dtype))


def build_visual_empty(backbone: str, quick_gelu: bool) -> nn.Module:
    """The visual tower's architecture with uninitialised (meta) tensors; the caller assigns
    weights with ``load_state_dict(..., assign=True)``. Skips random init (seconds for ViT-L)."""
    cfg = open_clip.get_model_config(backbone)
    if cfg is None:
        raise ValueError(f"unknown open_clip backbone {backbone!r}")
    with torch.device("meta"):
        return open_clip.model._build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=quick_gelu)


class NSNet(nn.Module):
    """images (B,3,224,224) → visual f (B,d) → f·P → head z (B,128) → classifier logit (B,)."""

    def __init__(self, visual: nn.Module, basis: torch.Tensor,
                 hidden: int = HEAD_HIDDEN, dim: int = HEAD_DIM) -> None:
        super().__init__()
        d = int(basis.shape[0])
        out_dim = getattr(visual, "output_dim", d)
        if out_dim != d:
            raise ValueError(f"basis has {d} rows but the visual tower outputs {out_dim} features")
        self.visual = visual
        self.nullspace = NullSpace(basis)
        self.head = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.classifier = nn.Linear(dim, 1)

    @property
    def embed_dim(self) -> int:
        return int(self.nullspace.basis.shape[0])

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised visual output f (B,d), before the projection."""
        return self.visual(images)

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """z (B,128) from visual features: what the contrastive loss sees (after normalize)."""
        return self.head(self.nullspace(features))

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed_features(features)).squeeze(-1)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """z (B,128) of images."""
        return self.embed_features(self.features(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B,); prob_fake = sigmoid(logit)."""
        return self.classifier(self.embed(images)).squeeze(-1)

    @classmethod
    def from_checkpoint(cls, run_dir: str | Path, device: str | torch.device = "cpu") -> "NSNet":
        """Load a run directory (nsnet.safetensors + nsnet.json) in eval mode."""
        model, _ = load_checkpoint(run_dir, device=device)
        return model


def empty_model(meta: dict, source: str, rank: int) -> NSNet:
    """The architecture a validated nsnet.json describes, on the meta device (no memory, no init);
    `ModelLoadError` naming ``source`` when open_clip cannot build it."""
    try:
        visual = build_visual_empty(meta["backbone"], bool(meta.get("quick_gelu", False)))
    except Exception as e:  # open_clip raises assorted types for unknown or odd configs
        raise ModelLoadError(f"{source}: field backbone: cannot build {meta['backbone']!r}: {e}",
                             source=source) from None
    head = meta.get("head", {})
    d = int(getattr(visual, "output_dim", meta.get("embed_dim", 0)))
    with torch.device("meta"):
        return NSNet(visual, torch.empty(d, rank), hidden=int(head.get("hidden", HEAD_HIDDEN)),
                     dim=int(head.get("dim", HEAD_DIM)))


def load_checkpoint(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[NSNet, dict]:
    """(NSNet in eval mode, nsnet.json) from a run directory; needs no download.

    The network nsnet.json describes is built on the meta device, the weights file's tensor names,
    shapes and dtypes are checked against it before any tensor is read, and the saved tensors are
    then assigned (so random init is skipped). Bad files raise `ModelLoadError`.
    """
    run = Path(run_dir)
    meta = read_meta(run)
    rank = meta.get("projector", {}).get("rank")
    if rank is None:  # run directories written before nsnet.json recorded it
        rank = int((weights_header(run).get("nullspace.basis") or {"shape": [0, 0]})["shape"][-1])
    model = empty_model(meta, str(run / CONFIG), int(rank))
    meta, state = read_weights(run, device=str(device), expected=tensor_specs(model))
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval(), meta
