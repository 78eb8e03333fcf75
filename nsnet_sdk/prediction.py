"""The one result type the SDK returns: one `Prediction` per input, scored or not."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

_VERDICT_IS_FAKE = {"ai-generated": True, "real": False, "uncertain": None}


def sigmoid(logit: np.ndarray) -> np.ndarray:
    """``prob_fake`` from logits: float64, clipped so extreme logits give 0/1 without overflow warnings."""
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(logit, np.float64), -80.0, 80.0)))


def decide(prob_fake: float, threshold: float, band: Any = None) -> tuple[bool | None, str | None]:
    """The one decision rule: ``(is_fake, verdict)`` of a score. With a calibrated verdict band
    (`nsnet_sdk.modelcard.VerdictBand`) ``is_fake`` follows the verdict: ``"ai-generated"`` → True,
    ``"real"`` → False, ``"uncertain"`` → None; without one, ``prob_fake >= threshold`` and no verdict."""
    if band is None:
        return prob_fake >= threshold, None
    verdict = band.verdict(prob_fake)
    return _VERDICT_IS_FAKE[verdict], verdict


@dataclass(frozen=True)
class Prediction:
    """The verdict on one input.

    Attributes:
        source: the path as given, or ``<bytes #i>``, ``<array #i>``, ``<PIL #i>`` (``i`` = the
            input's position in the call).
        prob_fake: probability that the image is AI-generated, or None when it was not scored.
        is_fake: with a verdict band, the verdict's (``"ai-generated"`` → True, ``"real"`` →
            False, ``"uncertain"`` → None); without one ``prob_fake >= threshold``; None when not
            scored (see `decide`).
        logit: the raw model output (``prob_fake = sigmoid(logit)``), or None when not scored.
        error: None when scored, else ``"ErrorClass: message"``.
        warnings: conditions that did not stop scoring but make the score less trustworthy
            (e.g. a truncated file, an image smaller than one patch); empty when none.
        verdict: ``"ai-generated"``, ``"real"`` or ``"uncertain"`` when the model carries a
            calibrated two-threshold band, else None.
        provenance: what the file itself declares about how it was made (C2PA, IPTC, generator
            metadata), when asked for; None otherwise.
    """

    source: str
    prob_fake: float | None
    is_fake: bool | None
    logit: float | None
    error: str | None = None
    warnings: tuple[str, ...] = ()
    verdict: str | None = None
    provenance: dict | None = None

    @property
    def ok(self) -> bool:
        """True when the input was scored."""
        return self.error is None

    def to_dict(self) -> dict:
        """Plain dict (JSON-serialisable) of every field; ``warnings`` as a list."""
        d = asdict(self)
        d["warnings"] = list(self.warnings)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Prediction":
        """The Prediction `to_dict` gave ``d`` for."""
        return cls(**{**d, "warnings": tuple(d["warnings"])})

    @classmethod
    def failed(cls, source: str, exc: BaseException) -> "Prediction":
        """The record of an input that could not be scored."""
        return cls(source=source, prob_fake=None, is_fake=None, logit=None,
                   error=f"{type(exc).__name__}: {exc}")


def renamed(pred: Prediction, old: str, new: str) -> Prediction:
    """``pred`` of the input named ``old`` as the result of the input named ``new``: its ``source``,
    and the name its error message starts with (``"ErrorClass: old: ..."``); nothing else of the
    message is touched, whatever the names contain."""
    from dataclasses import replace

    error = pred.error
    if error:
        kind, sep, rest = error.partition(": ")
        if rest.startswith(old):
            error = kind + sep + new + rest[len(old):]
    return replace(pred, source=new, error=error)


def rename_source(pred: Prediction, index: int, name: str) -> Prediction:
    """``pred`` (from bytes at position ``index`` of a Detector call) named ``name`` instead of
    ``<bytes #index>``, as if the file had been given."""
    return renamed(pred, f"<bytes #{index}>", name)
