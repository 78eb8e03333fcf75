"""The one result type the SDK returns: one `Prediction` per input, scored or not."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def sigmoid(logit: np.ndarray) -> np.ndarray:
    """``prob_fake`` from logits: float64, clipped so extreme logits give 0/1 without overflow warnings."""
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(logit, np.float64), -80.0, 80.0)))


@dataclass(frozen=True)
class Prediction:
    """The verdict on one input.

    Attributes:
        source: the path as given, or ``<bytes #i>``, ``<array #i>``, ``<PIL #i>`` (``i`` = the
            input's position in the call).
        prob_fake: probability that the image is AI-generated, or None when it was not scored.
        is_fake: ``prob_fake >= threshold``, or None when not scored.
        logit: the raw model output (``prob_fake = sigmoid(logit)``), or None when not scored.
        error: None when scored, else ``"ErrorClass: message"``.
    """

    source: str
    prob_fake: float | None
    is_fake: bool | None
    logit: float | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the input was scored."""
        return self.error is None

    def to_dict(self) -> dict:
        """Plain dict (JSON-serialisable) with the five fields."""
        return asdict(self)

    @classmethod
    def failed(cls, source: str, exc: BaseException) -> "Prediction":
        """The record of an input that could not be scored."""
        return cls(source=source, prob_fake=None, is_fake=None, logit=None,
                   error=f"{type(exc).__name__}: {exc}")
