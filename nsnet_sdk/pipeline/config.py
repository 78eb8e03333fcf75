"""The preprocessing contract: `PatchConfig`, the CLIP normalisation constants and the pixel limit.

A model artifact records the `PatchConfig` it was trained with; the SDK refuses a mismatch.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["CLIP_MEAN", "CLIP_STD", "MAX_PIXELS", "MAX_INPUT_SIDE", "DEFAULT", "PatchConfig"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_PIXELS = 100_000_000
# Largest network input side: a 1024² float32 image is 12 MiB, a default batch of 32 about
# 400 MiB. A config past this would make the SDK allocate gigabytes per batch.
MAX_INPUT_SIDE = 1024


@dataclass(frozen=True)
class PatchConfig:
    """Everything that defines the network input. Stored with every model artifact."""

    patch: int = 32
    grid: int = 7
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self) -> None:
        if self.patch < 2 or self.grid < 1:
            raise ValueError(f"PatchConfig needs patch >= 2 and grid >= 1, got {self}")
        if self.patch * self.grid > MAX_INPUT_SIDE:
            raise ValueError(f"PatchConfig input side patch*grid = {self.patch * self.grid} exceeds "
                             f"{MAX_INPUT_SIDE} (patch {self.patch}, grid {self.grid})")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0 or \
                not all(math.isfinite(v) for v in (*self.mean, *self.std)):
            raise ValueError(f"PatchConfig needs 3 finite means and 3 finite positive stds, got {self}")
        # Normalise list inputs (e.g. from JSON) to tuples so equality and hashing work.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def size(self) -> int:
        """Side of the square network input in pixels (patch × grid)."""
        return self.patch * self.grid

    @property
    def slots(self) -> int:
        return self.grid * self.grid

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PatchConfig":
        """Strictly typed: ``patch``/``grid`` JSON integers (not bools, floats or strings),
        ``mean``/``std`` three finite numbers each; `ValueError` naming the key otherwise."""
        if not isinstance(d, dict):
            raise ValueError(f"preprocessing config must be an object, got {type(d).__name__}")
        unknown = set(d) - {"patch", "grid", "mean", "std"}
        if unknown:
            raise ValueError(f"unknown preprocessing keys {sorted(unknown)}")
        for key in ("patch", "grid"):
            if key in d and (isinstance(d[key], bool) or not isinstance(d[key], int)):
                raise ValueError(f"{key} must be an integer, got {d[key]!r}")
        for key in ("mean", "std"):
            v = d.get(key)
            if v is not None and not (isinstance(v, (list, tuple)) and len(v) == 3 and all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)):
                raise ValueError(f"{key} must be three finite numbers, got {v!r}")
        return cls(**d)

    def to_json(self) -> str:
        """Canonical text form (sorted keys, compact): stored in model metadata and compared."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, s: str) -> "PatchConfig":
        return cls.from_dict(json.loads(s))


DEFAULT = PatchConfig()
