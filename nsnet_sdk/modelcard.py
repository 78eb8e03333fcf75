"""The model card and the two-threshold verdict band that travel inside every artifact: how they
are built from a run's nsnet.json and validated when a model is loaded (docs/formats.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from .constants import DEFAULT_THRESHOLD
from .errors import ModelLoadError


def field_error(source: str, key: str, why: str) -> ModelLoadError:
    return ModelLoadError(f"{source}: field {key}: {why}", source=source)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def probability(v: Any, source: str, key: str) -> float:
    if not _is_number(v) or not 0.0 <= float(v) <= 1.0:
        raise field_error(source, key, f"expected a finite number in [0, 1], got {v!r}")
    return float(v)


@dataclass(frozen=True)
class VerdictBand:
    """Two thresholds on ``prob_fake``: ``ai-generated`` at or above ``t_fake`` (chosen for false
    positive rate ``fpr`` on real images), ``real`` below ``t_real`` (miss rate ``fnr``),
    ``uncertain`` between."""

    t_real: float
    t_fake: float
    fpr: float
    fnr: float
    source: str

    @classmethod
    def from_dict(cls, d: Any, source: str = "verdict_band") -> "VerdictBand":
        """Validated band; `ModelLoadError` naming ``source`` and the bad field."""
        key = "nsnet.verdict_band"
        if not isinstance(d, Mapping):
            raise field_error(source, key, f"expected a JSON object, got {type(d).__name__}")
        missing = {"t_real", "t_fake", "fpr", "fnr", "source"} - set(d)
        if missing:
            raise field_error(source, key, f"missing {sorted(missing)}")
        vals = {k: probability(d[k], source, f"{key}.{k}") for k in ("t_real", "t_fake", "fpr", "fnr")}
        if vals["t_real"] > vals["t_fake"]:
            raise field_error(source, key, f"t_real {vals['t_real']} > t_fake {vals['t_fake']}")
        if not isinstance(d["source"], str):
            raise field_error(source, f"{key}.source", f"expected a string, got {d['source']!r}")
        return cls(source=d["source"], **vals)

    def to_dict(self) -> dict[str, Any]:
        return {"t_real": self.t_real, "t_fake": self.t_fake, "fpr": self.fpr, "fnr": self.fnr,
                "source": self.source}

    def verdict(self, prob_fake: float) -> str:
        """``"ai-generated"``, ``"real"`` or ``"uncertain"`` for one score."""
        if prob_fake >= self.t_fake:
            return "ai-generated"
        return "real" if prob_fake < self.t_real else "uncertain"


# -- model card --------------------------------------------------------------------------------

_CARD_TYPES: dict[str, tuple[type, ...]] = {
    "backbone": (str,), "pretrained": (str,), "training_data": (dict, type(None)),
    "validation": (dict, type(None)), "threshold_source": (str,), "created": (str,),
    "source_sha256": (str, type(None)), "calibration": (dict, type(None)),
}


def threshold_source(doc: Mapping[str, Any]) -> str:
    """How a run's threshold was chosen, from its ``calibration`` record (training.evaluate)."""
    cal = doc.get("calibration")
    if isinstance(cal, Mapping) and "fpr" in cal:
        return f"calibrated at FPR {cal['fpr']:g} on {cal.get('data', '?')}"
    return f"default {DEFAULT_THRESHOLD:g}"


def model_card(doc: Mapping[str, Any], *, source_sha256: str | None = None,
               validation: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The model card of an nsnet.json document: what the model is, what it saw, how well it did
    and how its threshold was chosen. Fields an existing card already holds are kept."""
    card = dict(doc.get("model_card") or {})
    data = doc.get("data") or {}
    card.setdefault("backbone", doc.get("backbone"))
    card.setdefault("pretrained", str(doc.get("pretrained", "none")))
    card.setdefault("training_data", {k: data[k] for k in ("n_images", "n_real", "n_fake", "generators",
                                                           "generator_counts") if k in data})
    if validation is not None:
        card["validation"] = dict(validation)
    card.setdefault("validation", None)
    card["threshold"] = float(doc.get("threshold", DEFAULT_THRESHOLD))
    card.setdefault("threshold_source", threshold_source(doc))
    card.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if source_sha256 is not None:
        card["source_sha256"] = source_sha256
    card.setdefault("source_sha256", None)
    return card


def check_card(card: Any, source: str) -> dict[str, Any]:
    if not isinstance(card, Mapping):
        raise field_error(source, "nsnet.model_card", f"expected a JSON object, got {type(card).__name__}")
    for k, types in _CARD_TYPES.items():
        if k in card and not isinstance(card[k], types):
            raise field_error(source, f"nsnet.model_card.{k}", f"expected {'/'.join(t.__name__ for t in types)}, "
                        f"got {card[k]!r}")
    if "threshold" in card:
        probability(card["threshold"], source, "nsnet.model_card.threshold")
    return dict(card)
