"""The preprocessing contract: `PatchConfig`, the CLIP normalisation constants and the pixel limit.

A model artifact records the `PatchConfig` it was trained with; the SDK refuses a mismatch.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["CLIP_MEAN", "CLIP_STD", "MAX_PIXELS", "DEFAULT", "PatchConfig"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_PIXELS = 100_000_000


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
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"PatchConfig needs 3 means and 3 positive stds, got {self}")
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
        unknown = set(d) - {"patch", "grid", "mean", "std"}
        if unknown:
            raise ValueError(f"unknown preprocessing keys {sorted(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        """Canonical text form (sorted keys, compact): stored in model metadata and compared."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, s: str) -> "PatchConfig":
        return cls.from_dict(json.loads(s))


DEFAULT = PatchConfig()
