"""The run-directory checkpoint files: ``nsnet.safetensors`` + ``nsnet.json`` (docs/formats.md).

The only code that reads or writes these two files. No pickle anywhere: tensors go to safetensors,
everything else to JSON. LoRA adapters are merged into plain weights on save; the text tower is
never part of NSNet, so it is never saved.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from torch import nn
from torch.nn.utils import parametrize

from ..artifact import atomic_write

FORMAT = "nsnet-checkpoint/1"
WEIGHTS = "nsnet.safetensors"
CONFIG = "nsnet.json"


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict the model would have with every parametrization (e.g. a LoRA adapter) folded
    into its weight, without touching the model (so training can go on with its adapters after a
    per-epoch checkpoint)."""
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {k: v for k, v in sd.items() if ".parametrizations." not in k}
    for mod_name, m in model.named_modules():
        if parametrize.is_parametrized(m):
            prefix = f"{mod_name}." if mod_name else ""
            for name in m.parametrizations.keys():
                with torch.no_grad():
                    out[prefix + name] = getattr(m, name).detach().clone()
    return out


def build_meta(model, meta: dict[str, Any]) -> dict[str, Any]:
    """The nsnet.json object: fields fixed by the model, then the caller's (backbone, pretrained,
    quick_gelu, preprocess, projector, threshold, training, data)."""
    head = {"hidden": model.head[0].out_features, "dim": model.head[2].out_features, "activation": "gelu"}
    out: dict[str, Any] = {
        "format": FORMAT,
        "backbone": meta.get("backbone"),
        "pretrained": meta.get("pretrained", "none"),
        "quick_gelu": bool(meta.get("quick_gelu", False)),
        "embed_dim": model.embed_dim,
        "preprocess": meta.get("preprocess"),
        "projector": dict(meta.get("projector") or {}, rank=model.nullspace.rank),
        "head": head,
        "threshold": float(meta.get("threshold", 0.5)),
        "training": meta.get("training", {}),
        "data": meta.get("data", {"n_images": 0, "skipped": 0, "generators": []}),
    }
    for key, value in meta.items():  # keep anything extra the caller recorded
        out.setdefault(key, value)
    return out


def save_checkpoint(model, run_dir: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``model`` (LoRA merged, without touching the live model) and ``meta`` to ``run_dir``."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in plain_state_dict(model).items()}
    doc = build_meta(model, meta)
    atomic_write(run / WEIGHTS, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
    atomic_write(run / CONFIG, lambda p: p.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n"))
    return run


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    """nsnet.json of a run directory, with its format checked."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"not a run directory (no {CONFIG}): {run_dir}")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def update_meta(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Set top-level nsnet.json fields (e.g. a recalibrated ``threshold``); tensors untouched."""
    run = Path(run_dir)
    meta = read_meta(run)
    if "threshold" in fields:
        fields["threshold"] = float(fields["threshold"])
    meta.update(fields)
    atomic_write(run / CONFIG, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
    return meta


def read_weights(run_dir: str | Path, device: str = "cpu") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(nsnet.json, tensors) of a run directory, read without building the network."""
    run = Path(run_dir)
    meta = read_meta(run)
    weights = run / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"run directory has {CONFIG} but no {WEIGHTS}: {run}")
    state = load_file(str(weights), device=str(device))
    if "nullspace.basis" not in state:
        raise ValueError(f"{weights}: no nullspace.basis tensor")
    return meta, state
