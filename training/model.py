"""NS-Net: an open_clip visual tower, the semantic null-space projection and a small head.

Attribute names are a contract (docs/formats.md): ``visual``, ``nullspace.basis``, ``head.0``,
``head.2``, ``classifier``. The visual output is used unnormalised so export can fold
P = I − UUᵀ and ``head.0`` into ``visual.proj`` exactly.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import open_clip
import torch
from torch import nn

import training  # noqa: F401  (registers the nsnet-tiny config)
from training.nullspace import NullSpace

HEAD_HIDDEN = 512
HEAD_DIM = 128


def resolve_pretrained(pretrained: str | None) -> str | None:
    """``none`` / empty → None (random init); otherwise an open_clip tag or a local weights file."""
    if pretrained is None or str(pretrained).strip().lower() in ("", "none", "random"):
        return None
    return str(pretrained)


def wants_quick_gelu(backbone: str, pretrained: str | None) -> bool:
    """True when the model config or the pretrained tag was trained with QuickGELU (e.g. OpenAI
    weights): open_clip only warns on a mismatch, which would silently change the network."""
    cfg = open_clip.get_model_config(backbone) or {}
    if cfg.get("quick_gelu", False):
        return True
    tag = resolve_pretrained(pretrained)
    if tag is None or Path(tag).exists():
        return False
    return bool(open_clip.get_pretrained_cfg(backbone, tag).get("quick_gelu", False))


def load_clip(backbone: str, pretrained: str | None, device: str | torch.device = "cpu",
              quick_gelu: bool | None = None) -> tuple[nn.Module, object, bool]:
    """(open_clip model, its tokenizer, quick_gelu used). ``pretrained`` 'none' → random weights."""
    if backbone not in open_clip.list_models():
        raise ValueError(f"unknown open_clip backbone {backbone!r} (e.g. ViT-B-32, ViT-L-14, nsnet-tiny)")
    tag = resolve_pretrained(pretrained)
    if quick_gelu is None:
        quick_gelu = wants_quick_gelu(backbone, tag)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="QuickGELU mismatch")
        model = open_clip.create_model(backbone, pretrained=tag, device=device, force_quick_gelu=quick_gelu)
    model.eval()
    return model, open_clip.get_tokenizer(backbone), quick_gelu


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
        from training.checkpoint import load_checkpoint

        model, _ = load_checkpoint(run_dir, device=device)
        return model
