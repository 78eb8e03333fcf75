"""Calibration of the three-way verdict: two thresholds on ``prob_fake`` chosen on images of known
origin, and the ``nsnet calibrate`` command that stores them in a model's metadata.

At or above ``t_fake`` the verdict is ``ai-generated``: at most a fraction ``fpr`` of the real
calibration images score that high. Below ``t_real`` it is ``real``: at most a fraction ``fnr`` of
the AI-generated ones score that low. In between it is ``uncertain``, the part of a review queue a
person should look at. When the model separates the two sets better than asked, the band closes:
both thresholds sit at one value between them and nothing is ``uncertain``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Sequence

import numpy as np

from .cli_args import checked, positive_int, provider_list
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


_rate = checked(float, lambda v: 0.0 <= v < 1.0, "a rate in [0, 1)")


def add_parser(sub: Any) -> None:
    """Register ``nsnet calibrate``."""
    p = sub.add_parser("calibrate", help="calibrate the three-way verdict band on known images",
                       description="Score folders of real and of AI-generated images and choose t_fake "
                       "(false-positive rate --fpr on the real ones) and t_real (miss rate --fnr on the "
                       "fake ones). Prints the band as JSON; --out/--in-place store it in the model.")
    p.add_argument("--model", "-m", required=True, help=".engine, .onnx or a run directory")
    p.add_argument("--real", nargs="+", required=True, metavar="PATH", help="real images (files/folders)")
    p.add_argument("--fake", nargs="+", required=True, metavar="PATH", help="AI-generated images (files/folders)")
    p.add_argument("--fpr", type=_rate, default=0.01, help="real images allowed to read ai-generated (0.01)")
    p.add_argument("--fnr", type=_rate, default=0.05, help="fake images allowed to read real (0.05)")
    p.add_argument("--recursive", "-r", action="store_true", help="scan folders recursively")
    w = p.add_mutually_exclusive_group()
    w.add_argument("--out", metavar="MODEL", help="write a copy of the model carrying the band here")
    w.add_argument("--in-place", action="store_true", help="store the band in MODEL itself")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per batch (32)")
    p.add_argument("--providers", help="ONNX Runtime providers, comma-separated, in order")
    p.set_defaults(run=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .detector import Detector
    from .preprocess import iter_image_paths

    sets = {}
    for label in ("real", "fake"):
        paths, warnings = iter_image_paths(getattr(args, label), args.recursive)
        for w in warnings:
            print(f"nsnet: warning: {w}", file=sys.stderr)
        sets[label] = paths
    try:
        det = Detector(args.model, providers=provider_list(args.providers), batch_size=args.batch_size)
    except (NSNetError, ValueError) as e:
        print(f"nsnet: error: cannot load model: {e}", file=sys.stderr)
        return 1
    scores: dict[str, list[float]] = {}
    with det:
        for label, paths in sets.items():
            scores[label] = []
            try:
                for pred in det.predict_iter(paths, on_error="record"):
                    if pred.error is None:
                        scores[label].append(pred.prob_fake)
                    else:
                        print(f"nsnet: warning: skipped {pred.error}", file=sys.stderr)
            except NSNetError as e:
                print(f"nsnet: error: inference failed: {e}", file=sys.stderr)
                return 1
    source = (f"nsnet calibrate: {len(scores['real'])} real, {len(scores['fake'])} fake images "
              f"(real={','.join(args.real)} fake={','.join(args.fake)})")
    try:
        result = calibrate_band(scores["real"], scores["fake"], fpr=args.fpr, fnr=args.fnr, source=source)
    except ValueError as e:
        print(f"nsnet: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    if args.out or args.in_place:
        from .artifact import restamp

        band = {k: result[k] for k in BAND_KEYS}
        try:
            written = restamp(args.model, band=band, source=source, out=args.out, overwrite=args.in_place)
        except (NSNetError, OSError) as e:
            print(f"nsnet: error: cannot store the band: {e}", file=sys.stderr)
            return 1
        print(f"nsnet: verdict band stored in {written}", file=sys.stderr)
    return 0
