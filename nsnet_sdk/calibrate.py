"""Calibration of the three-way verdict: two thresholds on ``prob_fake`` chosen on images of known
origin, and the ``nsnet calibrate`` command that stores them in a model's metadata.

At or above ``t_fake`` the verdict is ``ai-generated``: at most a fraction ``fpr`` of the real
calibration images score that high. Below ``t_real`` it is ``real``: at most a fraction ``fnr`` of
the AI-generated ones score that low. In between it is ``uncertain``, the part of a review queue a
person should look at. When the model separates the two sets better than asked, the band closes:
both thresholds sit at one value between them and nothing is ``uncertain``.

What a band achieves on its calibration images is reported with an exact (Clopper–Pearson) 95 %
confidence interval, and a set too small for the asked rate is named in ``warnings``: with fewer
than about 10/fpr real images the false-positive rate cannot be told apart from zero. Inputs that
carry a low-information warning (an image smaller than one patch) are left out by the callers
(`low_information`), since their score says little about the image.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


CONFIDENCE = 0.95
LOW_INFORMATION = "the score says little"
"""Words of the warning (`nsnet_sdk.pipeline.inputs.size_warnings`) that keeps an input out of
calibration."""


def low_information(warnings: Any) -> bool:
    """True when a row's warnings (a list, or the ``"; "``-joined CSV cell) say its score says little."""
    if not warnings:
        return False
    text = warnings if isinstance(warnings, str) else " ".join(map(str, warnings))
    return LOW_INFORMATION in text


def _log_binom_coef(n: int) -> np.ndarray:
    """log C(n, i) for i = 0..n, from cumulative log factorials (one pass, no per-term lgamma)."""
    lf = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))))
    return lf[n] - lf - lf[::-1]


def _binom_cdf(k: int, n: int, p: float, coef: np.ndarray) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (exact enough for n up to millions)."""
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    i = np.arange(k + 1, dtype=np.float64)
    lp = coef[: k + 1] + i * math.log(p) + (n - i) * math.log1p(-p)
    m = lp.max()
    return float(min(1.0, math.exp(m) * np.exp(lp - m).sum()))


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact two-sided ``confidence`` interval of a rate seen as ``k`` events in ``n`` trials: the
    lower bound is the rate at which k or more events have probability (1-confidence)/2, the upper
    the rate at which k or fewer do (found by bisection on the binomial CDF)."""
    if not (isinstance(n, int) and n > 0 and isinstance(k, int) and 0 <= k <= n):
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k!r}, n={n!r}")
    tail = (1.0 - confidence) / 2.0
    coef = _log_binom_coef(n)

    def solve(f) -> float:  # f falls from + to - on [0, 1]
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2.0
            lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
        return (lo + hi) / 2.0

    lower = 0.0 if k == 0 else solve(lambda p: tail - (1.0 - _binom_cdf(k - 1, n, p, coef)))
    upper = 1.0 if k == n else solve(lambda p: _binom_cdf(k, n, p, coef) - tail)
    return lower, upper


def band_warnings(n_real: int, n_fake: int, fpr: float, fnr: float, band: dict[str, Any]) -> list[str]:
    """Why a band may not be what was asked: a set too small for its rate, a band that collapsed
    only because no real image could be spared."""
    out = []
    for name, n, rate, kind in (("fpr", n_real, fpr, "real"), ("fnr", n_fake, fnr, "AI-generated")):
        if rate > 0 and n < 10.0 / rate:
            need = 10.0 / rate
            need_s = f"{math.ceil(need):,}" if need < 1e12 else f"{need:.3g}"
            out.append(f"{n} {kind} images are too few for --{name} {rate:g}: about {need_s} "
                       f"are needed to measure it (the achieved rate's 95% interval is in the output)")
    if band["t_fake"] >= 1.0 and fpr > 0 and n_real * fpr < 1:
        out.append(f"no real image may be flagged at --fpr {fpr:g} with {n_real} real images: t_fake is 1.0, "
                   "nothing reads ai-generated")
    return out


def calibrate_band(real: Sequence[float], fake: Sequence[float], *, fpr: float, fnr: float,
                   source: str = "") -> dict[str, Any]:
    """The band for scores of real and of AI-generated images.

    Returns ``{"t_real", "t_fake", "fpr", "fnr", "source"}`` (the ``nsnet.verdict_band`` record of
    docs/formats.md) plus what the band achieves on these images: ``n_real``, ``n_fake``,
    ``real_flagged`` (fraction of real at or above ``t_fake``), ``fake_missed`` (fraction of fake
    below ``t_real``), ``real_uncertain`` and ``fake_uncertain``; ``real_flagged_ci`` and
    ``fake_missed_ci`` (Clopper–Pearson intervals at `CONFIDENCE`), ``confidence``, and
    ``warnings`` (`band_warnings`).
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
    flagged, missed = int(np.sum(r >= t_fake)), int(np.sum(f < t_real))
    out = band | {
        "n_real": int(r.size), "n_fake": int(f.size),
        "real_flagged": flagged / r.size, "fake_missed": missed / f.size,
        "real_flagged_ci": list(clopper_pearson(flagged, int(r.size))),
        "fake_missed_ci": list(clopper_pearson(missed, int(f.size))), "confidence": CONFIDENCE,
        "real_uncertain": float(np.mean((r >= t_real) & (r < t_fake))),
        "fake_uncertain": float(np.mean((f >= t_real) & (f < t_fake))),
    }
    out["warnings"] = band_warnings(int(r.size), int(f.size), float(fpr), float(fnr), band)
    return out


def calibration_summary(result: dict[str, Any], *, source: str, left_out: int = 0,
                        dates: Sequence[str] = ()) -> dict[str, Any]:
    """The model card's ``calibration`` record of a `calibrate_band` result: counts, the achieved
    rates with their intervals, how many inputs were left out, the date range of the labels (ISO
    strings; empty for folders scored now) and where the data came from."""
    ds = sorted(d for d in dates if d)
    return {"source": source, "n_real": result["n_real"], "n_fake": result["n_fake"], "left_out": int(left_out),
            "fpr": result["fpr"], "fnr": result["fnr"],
            "real_flagged": result["real_flagged"], "real_flagged_ci": result["real_flagged_ci"],
            "fake_missed": result["fake_missed"], "fake_missed_ci": result["fake_missed_ci"],
            "confidence": result["confidence"], "date_range": [ds[0], ds[-1]] if ds else None,
            "warnings": list(result["warnings"])}


BAND_KEYS = ("t_real", "t_fake", "fpr", "fnr", "source")
