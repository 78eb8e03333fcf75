"""Calibration of the three-way verdict: two thresholds on ``prob_fake`` chosen on images of known
origin, and the ``nsnet calibrate`` command that stores them in a model's metadata.

At or above ``t_fake`` the verdict is ``ai-generated``: at most a fraction ``fpr`` of the real
calibration images score that high. Below ``t_real`` it is ``real``: at most a fraction ``fnr`` of
the AI-generated ones score that low. In between it is ``uncertain``, the part of a review queue a
person should look at. When the model separates the two sets better than asked, the band closes:
both thresholds sit at one value between them and nothing is ``uncertain``.
"""
from __future__ import annotations

import json
import math
import sys
from typing import Any, Sequence

import numpy as np

from .errors import NSNetError


def calibrate_band(real: Sequence[float], fake: Sequence[float], *, fpr: float, fnr: float,
                   source: str = "") -> dict[str, Any]:
    """The band for scores of real and of AI-generated images.

    Returns ``{"t_real", "t_fake", "fpr", "fnr", "source"}`` (the ``nsnet.verdict_band`` record of
    docs/formats.md) plus what the band achieves on these images: ``n_real``, ``n_fake``,
    ``real_flagged`` (fraction of real at or above ``t_fake``), ``fake_missed`` (fraction of fake
    below ``t_real``), ``real_uncertain`` and ``fake_uncertain``.
    Raises ValueError on an empty set, a non-finite score or a rate outside [0, 1).
    """
    r = np.sort(np.asarray(real, np.float64))
    f = np.sort(np.asarray(fake, np.float64))
    for name, rate in (("fpr", fpr), ("fnr", fnr)):
        if not (isinstance(rate, (int, float)) and 0.0 <= rate < 1.0):
            raise ValueError(f"{name} must be in [0, 1), got {rate!r}")
    for name, s in (("real", r), ("fake", f)):
        if s.size == 0:
            raise ValueError(f"no scored {name} images to calibrate on")
        if not np.all(np.isfinite(s)) or s.min() < 0 or s.max() > 1:
            raise ValueError(f"{name} scores must be probabilities in [0, 1]")
    # t_fake: the lowest threshold leaving at most k = floor(fpr·n) real scores at or above it,
    # i.e. just above the (k+1)-th highest real score.
    k = math.floor(fpr * r.size + 1e-9)
    t_fake = float(min(1.0, np.nextafter(r[::-1][k], np.inf))) if k < r.size else 0.0
    # t_real: the highest threshold leaving at most j = floor(fnr·m) fake scores below it,
    # i.e. the (j+1)-th lowest fake score.
    j = math.floor(fnr * f.size + 1e-9)
    t_real = float(f[j]) if j < f.size else 1.0
    if t_real > t_fake:  # both rates are met by any single threshold in [t_fake, t_real]
        t_real = t_fake = (t_real + t_fake) / 2.0
    band = {"t_real": t_real, "t_fake": t_fake, "fpr": float(fpr), "fnr": float(fnr), "source": source}
    return band | {
        "n_real": int(r.size), "n_fake": int(f.size),
        "real_flagged": float(np.mean(r >= t_fake)), "fake_missed": float(np.mean(f < t_real)),
        "real_uncertain": float(np.mean((r >= t_real) & (r < t_fake))),
        "fake_uncertain": float(np.mean((f >= t_real) & (f < t_fake))),
    }


BAND_KEYS = ("t_real", "t_fake", "fpr", "fnr", "source")
