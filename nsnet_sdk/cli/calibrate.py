"""``nsnet calibrate``: its parser and command (the work is `nsnet_sdk.calibrate`)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..calibrate import BAND_KEYS, calibrate_band
from ..errors import NSNetError
from .args import checked, positive_int, provider_list

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
    from ..detector import Detector
    from ..options import BackendOptions, InputOptions
    from ..pipeline import iter_image_paths

    sets = {}
    for label in ("real", "fake"):
        paths, warnings = iter_image_paths(getattr(args, label), args.recursive)
        for w in warnings:
            print(f"nsnet: warning: {w}", file=sys.stderr)
        sets[label] = paths
    try:
        det = Detector(args.model, backend=BackendOptions(providers=provider_list(args.providers)),
                       options=InputOptions(batch_size=args.batch_size))
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
        from ..artifact import restamp

        band = {k: result[k] for k in BAND_KEYS}
        try:
            written = restamp(args.model, band=band, source=source, out=args.out, overwrite=args.in_place)
        except (NSNetError, OSError) as e:
            print(f"nsnet: error: cannot store the band: {e}", file=sys.stderr)
            return 1
        print(f"nsnet: verdict band stored in {written}", file=sys.stderr)
    return 0
