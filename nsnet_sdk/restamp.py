"""Re-stamping a model: a copy (or, asked for, the artifact itself) with a new decision threshold
and/or verdict band and the model card's ``threshold_source``, weights untouched; the `nsnet info
--set-threshold` and `nsnet calibrate` writer, through `artifact`'s readers and writers."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

from . import containers
from .artifact import (TENSORRT, TORCH, ModelMeta, compact_json, artifact_kind, engine_sidecar, read_model_meta,
                       read_run_json, write_run_json, write_sidecar)
from .constants import RUN_WEIGHTS
from .containers import atomic_write
from .errors import ModelLoadError
from .modelcard import VerdictBand, check_card, model_card, probability


def restamp(path: str | Path, *, threshold: float | None = None, band: Mapping[str, Any] | None = None,
            source: str | None, out: str | Path | None = None, overwrite: bool = False,
            card_fields: Mapping[str, Any] | None = None) -> Path:
    """Rewrite the threshold and/or verdict band of an artifact and ``card_fields`` of its card;
    ``source`` becomes the card's ``threshold_source`` (None keeps it). Weights untouched. ``out``
    writes a copy; without it the artifact is rewritten in place, which needs ``overwrite=True``.
    Returns the path written."""
    p = Path(path)
    kind = artifact_kind(p)
    meta = read_model_meta(p, kind)
    if threshold is not None:
        threshold = probability(threshold, "threshold", "threshold")
    if band is not None:
        band = VerdictBand.from_dict(band, "band").to_dict()
    dst = p if out is None else Path(out)
    if out is not None and dst.resolve() == p.resolve():
        out, dst = None, p  # an output path naming the artifact itself is an in-place rewrite
    if out is None and not overwrite:
        raise ModelLoadError(f"{p}: refusing to rewrite in place; give an output path or overwrite=True",
                             source=str(p))
    if dst.exists() and dst != p and not overwrite:
        raise ModelLoadError(f"{dst} exists; refusing to replace it without overwrite=True", source=str(dst))
    keep = {} if source is None else {"threshold_source": source}
    card = check_card(dict(meta.model_card, **(card_fields or {}), **keep), str(dst))
    if threshold is not None:
        card["threshold"] = threshold
    if kind == TORCH:
        run = p if p.is_dir() else p.parent
        doc = read_run_json(run)
        doc["model_card"] = model_card(doc, source_sha256=None) | card
        if threshold is not None:
            doc["threshold"] = doc["model_card"]["threshold"] = threshold
        if band is not None:
            doc["verdict_band"] = band
        target = run if out is None else dst
        if target != run:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run / RUN_WEIGHTS, target / RUN_WEIGHTS)
        write_run_json(target, doc)
        return target
    updates = {"nsnet.model_card": compact_json(card)}
    if threshold is not None:
        updates["nsnet.threshold"] = repr(threshold)
    if band is not None:
        updates["nsnet.verdict_band"] = compact_json(band)
    if kind == TENSORRT:
        side = json.loads(engine_sidecar(p).read_text(encoding="utf-8")) | updates
        if dst != p:
            atomic_write(dst, lambda t: shutil.copyfile(p, t))
        write_sidecar(dst, side)
        return dst
    new = dict(meta.raw) | updates
    ModelMeta.parse(new, str(dst))
    atomic_write(dst, lambda t: containers.onnx_rewrite_metadata(p, t, new))
    data = p.with_name(p.name + ".data")  # external weights are found relative to the model file
    if dst.parent.resolve() != p.parent.resolve() and data.exists():
        shutil.copyfile(data, dst.parent / data.name)
    return dst
