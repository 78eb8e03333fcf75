"""Which backend an artifact needs (by its path) and what its metadata says.

Every backend hands back the same flat ``nsnet.*`` string map (the ONNX ``metadata_props`` of
docs/formats.md); `ModelMeta.parse` is the one place that map is validated and interpreted.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import ModelLoadError
from .preprocess import PatchConfig

TENSORRT = "tensorrt"
ONNXRUNTIME = "onnxruntime"
TORCH = "torch"

_SUFFIX_KIND = {".engine": TENSORRT, ".plan": TENSORRT, ".onnx": ONNXRUNTIME, ".safetensors": TORCH}


def artifact_kind(path: str | Path) -> str:
    """The backend a model path needs: ``"tensorrt"``, ``"onnxruntime"`` or ``"torch"``.

    ``.engine``/``.plan`` (with a ``<name>.json`` sidecar) → TensorRT, ``.onnx`` → ONNX Runtime,
    a run directory or its ``.safetensors`` file → PyTorch. Raises `ModelLoadError` otherwise.
    """
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model not found: {p}", source=str(p))
    if p.is_dir():
        if not (p / "nsnet.json").is_file():
            raise ModelLoadError(
                f"{p} is a directory without nsnet.json; expected a run directory "
                "(nsnet.safetensors + nsnet.json), an .onnx file or an .engine file", source=str(p))
        return TORCH
    kind = _SUFFIX_KIND.get(p.suffix.lower())
    if kind is None:
        raise ModelLoadError(
            f"unknown model type {p.suffix or '(no suffix)'!r} for {p}; expected .engine/.plan, "
            ".onnx, .safetensors or a run directory", source=str(p))
    return kind


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` next to ``path`` and rename over it: a process killed mid-save never
    leaves a torn artifact behind."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.chmod(tmp, 0o644)  # safetensors creates files owner-only; artifacts are meant to be shared
    os.replace(tmp, path)


def engine_sidecar(path: str | Path) -> Path:
    """Where an engine's metadata lives: ``nsnet.engine`` → ``nsnet.engine.json``."""
    p = Path(path)
    return p.with_name(p.name + ".json")


@dataclass(frozen=True)
class ModelMeta:
    """The artifact metadata the runtime relies on, validated."""

    preprocess: PatchConfig
    threshold: float
    format: str = ""
    backbone: str = ""
    precision: str = ""
    projector_rank: int | None = None
    raw: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Mapping[str, str], source: str) -> "ModelMeta":
        """Validate an ``nsnet.*`` map; `ModelLoadError` naming ``source`` when it is unusable."""
        try:
            pre = raw["nsnet.preprocess"]
            cfg = PatchConfig.from_dict(json.loads(pre) if isinstance(pre, str) else pre)
        except KeyError:
            raise ModelLoadError(f"{source}: no nsnet.preprocess metadata; not an NS-Net model?",
                                 source=source) from None
        except (ValueError, TypeError) as e:
            raise ModelLoadError(f"{source}: invalid nsnet.preprocess metadata: {e}",
                                 source=source) from e
        try:
            threshold = float(raw["nsnet.threshold"])
        except KeyError:
            raise ModelLoadError(f"{source}: no nsnet.threshold metadata", source=source) from None
        except (TypeError, ValueError) as e:
            raise ModelLoadError(f"{source}: invalid nsnet.threshold: {e}", source=source) from e
        if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
            raise ModelLoadError(f"{source}: nsnet.threshold {threshold} is not in [0, 1]",
                                 source=source)
        rank = raw.get("nsnet.projector_rank")
        try:
            rank = int(rank) if rank not in (None, "") else None
        except ValueError:
            rank = None  # informational only; never worth refusing a model over
        return cls(preprocess=cfg, threshold=threshold, format=str(raw.get("nsnet.format", "")),
                   backbone=str(raw.get("nsnet.backbone", "")),
                   precision=str(raw.get("nsnet.precision", "")), projector_rank=rank,
                   raw=dict(raw))
