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

from ..artifact import CHECKPOINT_FORMAT, read_run_json, write_run_json
from ..constants import RUN_CONFIG, RUN_WEIGHTS
from ..containers import atomic_write, check_tensors, safetensors_header, sha256_file
from ..errors import ModelLoadError
from ..pipeline import DEFAULT
from ..modelcard import DEFAULT_THRESHOLD, model_card

FORMAT = CHECKPOINT_FORMAT
WEIGHTS = RUN_WEIGHTS
CONFIG = RUN_CONFIG


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


def build_meta(model, meta: dict[str, Any], *, source_sha256: str | None = None,
               validation: dict[str, Any] | None = None) -> dict[str, Any]:
    """The nsnet.json object: fields fixed by the model, then the caller's (backbone, pretrained,
    quick_gelu, preprocess, projector, threshold, training, data), then the model card built from
    them (`nsnet_sdk.modelcard.model_card`) with the weights' sha256 and validation figures."""
    head = {"hidden": model.head[0].out_features, "dim": model.head[2].out_features, "activation": "gelu"}
    out: dict[str, Any] = {
        "format": FORMAT,
        "backbone": meta.get("backbone"),
        "pretrained": meta.get("pretrained", "none"),
        "quick_gelu": bool(meta.get("quick_gelu", False)),
        "embed_dim": model.embed_dim,
        "preprocess": meta.get("preprocess") or DEFAULT.to_dict(),
        "projector": dict(meta.get("projector") or {}, rank=model.nullspace.rank),
        "head": head,
        "threshold": float(meta.get("threshold", DEFAULT_THRESHOLD)),
        "training": meta.get("training", {}),
        "data": meta.get("data", {"n_images": 0, "skipped": 0, "generators": []}),
    }
    for key, value in meta.items():  # keep anything extra the caller recorded
        out.setdefault(key, value)
    # A fresh card each save: data, figures and weights change every epoch; only how the
    # threshold was chosen carries over from an earlier card.
    prior = out.pop("model_card", None) or {}
    keep = {k: prior[k] for k in ("threshold_source",) if k in prior}
    out["model_card"] = model_card(dict(out, model_card=keep), source_sha256=source_sha256,
                                   validation=validation)
    return out


def last_validation(run_dir: str | Path) -> dict[str, Any] | None:
    """The ``val_*`` figures of the last epoch in ``RUN/metrics.jsonl`` (training.loop), if any."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        last = json.loads(lines[-1]) if lines else {}
    except (OSError, ValueError):
        return None
    figures = {k[4:]: v for k, v in last.items() if k.startswith("val_")} if isinstance(last, dict) else {}
    return dict(figures, epoch=last.get("epoch")) if figures else None


def save_checkpoint(model, run_dir: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``model`` (LoRA merged, without touching the live model) and ``meta`` to ``run_dir``."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in plain_state_dict(model).items()}
    atomic_write(run / WEIGHTS, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
    doc = build_meta(model, meta, source_sha256=sha256_file(run / WEIGHTS),
                     validation=last_validation(run))
    write_run_json(run, doc)
    return run


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    """nsnet.json of a run directory, every field validated (`ModelLoadError` otherwise)."""
    return read_run_json(run_dir)


def update_meta(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Set top-level nsnet.json fields (e.g. a recalibrated ``threshold`` with its ``calibration``
    record); tensors untouched. The model card follows: threshold and how it was chosen."""
    run = Path(run_dir)
    meta = read_meta(run)
    if "threshold" in fields:
        fields["threshold"] = float(fields["threshold"])
    meta.update(fields)
    if "threshold" in fields or "calibration" in fields:
        card = dict(meta.get("model_card") or {})
        card.pop("threshold_source", None)
        meta["model_card"] = model_card(dict(meta, model_card=card))
    write_run_json(run, meta)
    return meta


_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
           torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}


def tensor_specs(model: nn.Module) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (safetensors dtype, shape)} of a module's state dict (works on the meta device)."""
    return {k: (_DTYPES.get(v.dtype, str(v.dtype)), tuple(v.shape)) for k, v in model.state_dict().items()}


def weights_header(run_dir: str | Path) -> dict[str, Any]:
    """The validated safetensors header of a run directory's weights (no tensor is read)."""
    return safetensors_header(Path(run_dir) / WEIGHTS)


def read_weights(run_dir: str | Path, device: str = "cpu",
                 expected: dict[str, tuple[str, tuple[int, ...]]] | None = None,
                 ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(nsnet.json, tensors) of a run directory, read without building the network.

    nsnet.json and the safetensors header are validated first; with ``expected`` (see
    `tensor_specs`) the tensors' names, shapes and dtypes must match it before any is read.
    """
    run = Path(run_dir)
    meta = read_meta(run)
    header = weights_header(run)
    if expected is not None:
        check_tensors(run / WEIGHTS, header, expected)
    elif "nullspace.basis" not in header:
        raise ModelLoadError(f"{run / WEIGHTS}: no nullspace.basis tensor", source=str(run / WEIGHTS))
    return meta, load_file(str(run / WEIGHTS), device=str(device))
