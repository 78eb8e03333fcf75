"""LoRA on the visual transformer blocks, as weight parametrizations.

A parametrization (W ↦ W + s·B·A) rather than a wrapper module, because nn.MultiheadAttention reads
``in_proj_weight`` / ``out_proj.weight`` directly instead of calling the Linear: a wrapper would be
silently bypassed there. Merging folds s·B·A into W and leaves plain weights, so checkpoints and
export never see LoRA.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize


class LoRADelta(nn.Module):
    """W ↦ W + (alpha/r)·B·A with A (r×in) random, B (out×r) zero: starts as the identity map."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float | None = None) -> None:
        super().__init__()
        self.rank = rank
        self.scale = (alpha if alpha is not None else rank) / rank
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scale * (self.B @ self.A).to(weight.dtype)


def _targets(visual: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, parameter name) of every 2-D weight in the transformer blocks: attention in/out
    projections and the MLP linears."""
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None:
        raise ValueError(f"LoRA needs an open_clip VisionTransformer with transformer.resblocks; got {type(visual).__name__}")
    out = []
    for block in blocks:
        for module in block.modules():
            if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
                out.append((module, "in_proj_weight"))
            elif isinstance(module, nn.Linear):
                out.append((module, "weight"))
    return out


def add_lora(visual: nn.Module, rank: int, alpha: float | None = None) -> list[nn.Parameter]:
    """Freeze ``visual`` and attach rank-``rank`` adapters; returns the trainable adapter params."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    visual.requires_grad_(False)
    params: list[nn.Parameter] = []
    for module, name in _targets(visual):
        w = getattr(module, name)
        delta = LoRADelta(w.shape[0], w.shape[1], rank, alpha).to(w.device)
        parametrize.register_parametrization(module, name, delta)
        params += [delta.A, delta.B]
    return params


def has_lora(module: nn.Module) -> bool:
    return any(parametrize.is_parametrized(m) for m in module.modules())


def merge_lora(module: nn.Module) -> None:
    """Fold every adapter into its weight, in place; the module then holds plain parameters."""
    for m in list(module.modules()):
        if parametrize.is_parametrized(m):
            for name in list(m.parametrizations.keys()):
                parametrize.remove_parametrizations(m, name, leave_parametrized=True)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors (``…parametrizations.<w>.0.A`` / ``.B``), for resuming."""
    return {k: v for k, v in model.state_dict().items() if ".parametrizations." in k and not k.endswith(".original")}


def unmerge_lora(model: nn.Module, adapters: dict[str, torch.Tensor]) -> None:
    """Load adapters into a LoRA-equipped model whose base weights currently hold the *merged*
    weights (as read from a checkpoint): base := merged − s·B·A, adapters := saved. Used by resume."""
    missing = set(lora_state_dict(model)) - set(adapters)
    if missing:
        raise ValueError(f"resume state lacks LoRA tensors: {sorted(missing)[:3]}…")
    model.load_state_dict(adapters, strict=False)
    with torch.no_grad():
        for m in model.modules():
            if parametrize.is_parametrized(m):
                for name, plist in m.parametrizations.items():
                    delta = plist[0]
                    plist.original.sub_(delta.scale * (delta.B @ delta.A).to(plist.original.dtype))
