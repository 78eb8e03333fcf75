"""The CLIP backbone for training: open_clip models with pretrained weights (a tag or a local
file) or random weights (``none``), with the QuickGELU variant their weights were trained with."""
from __future__ import annotations

import warnings
from pathlib import Path

import open_clip
import torch
from torch import nn

import nsnet_sdk.model  # noqa: F401  (registers the nsnet-tiny config)
from training.weights import Located, locate, resolve_pretrained


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
              quick_gelu: bool | None = None, found: Located | None = None) -> tuple[nn.Module, object, bool]:
    """(open_clip model, its tokenizer, quick_gelu used). ``pretrained`` 'none' → random weights;
    a tag or file is resolved by `training.weights.locate` first, so a tag whose weights are not on
    an offline machine fails at once with WeightsUnavailable instead of retrying downloads.
    ``found``: that resolution when the caller already has it (it is not repeated)."""
    if backbone not in open_clip.list_models():
        raise ValueError(f"unknown open_clip backbone {backbone!r} (e.g. ViT-B-32, ViT-L-14, nsnet-tiny)")
    found = found or locate(backbone, pretrained)
    if quick_gelu is None:
        quick_gelu = found.quick_gelu if found.quick_gelu is not None else wants_quick_gelu(backbone, None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="QuickGELU mismatch")
        model = open_clip.create_model(backbone, pretrained=found.arg, device=device, force_quick_gelu=quick_gelu)
    model.eval()
    return model, open_clip.get_tokenizer(backbone), quick_gelu
