"""``nsnet calibrate``: its parser and command (the work is `nsnet_sdk.calibrate`)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..calibrate import BAND_KEYS, calibrate_band, calibration_summary, low_information
from ..constants import DEFAULT_BATCH_SIZE
from ..errors import NSNetError
from .args import checked, plural, positive_int, provider_list

_rate = checked(float, lambda v: 0.0 <= v < 1.0, "a rate in [0, 1)")


def add_parser(sub: Any) -> None:
    """Register ``nsnet calibrate``."""
    p = sub.add_parser("calibrate", help="calibrate the three-way verdict band on known images",
                       description="Choose t_fake (false-positive rate --fpr on real images) and t_real "
                       "(miss rate --fnr on AI-generated ones), from folders of known images scored now "
                       "(--real/--fake) or from a review report's exported labels (--labels), which are "
                       "not scored again. Prints the band, the achieved rates with 95%% Clopper-Pearson "
                       "intervals and warnings as JSON; --out/--in-place store it in the model.")
    p.add_argument("--model", "-m", required=True, help=".engine, .onnx or a run directory")
    p.add_argument("--real", nargs="+", metavar="PATH", help="real images (files/folders)")
    p.add_argument("--fake", nargs="+", metavar="PATH", help="AI-generated images (files/folders)")
    p.add_argument("--labels", nargs="+", metavar="JSONL", help="labels.jsonl exported from nsnet report "
                   "(made with this same model; 'skip' labels are left out)")
    p.add_argument("--fpr", type=_rate, default=0.01, help="real images allowed to read ai-generated (0.01)")
    p.add_argument("--fnr", type=_rate, default=0.05, help="fake images allowed to read real (0.05)")
    p.add_argument("--recursive", "-r", action="store_true", help="scan folders recursively")
    w = p.add_mutually_exclusive_group()
    w.add_argument("--out", metavar="MODEL", help="write a copy of the model carrying the band here")
    w.add_argument("--in-place", action="store_true", help="store the band in MODEL itself")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                   help=f"images per batch ({DEFAULT_BATCH_SIZE})")
    p.add_argument("--providers", help="ONNX Runtime providers, comma-separated, in order")
    p.set_defaults(run=cmd_calibrate)


def _warn(msg: str) -> None:
    print(f"nsnet: warning: {msg}", file=sys.stderr)


def _scores_from_folders(args: argparse.Namespace) -> tuple[dict[str, list[float]], int] | None:
    """Scores of --real/--fake scored now, and how many low-information inputs were left out."""
    from ..detector import Detector
    from ..options import BackendOptions, InputOptions
    from ..pipeline import iter_image_paths

    sets = {}
    for label in ("real", "fake"):
        paths, warnings = iter_image_paths(getattr(args, label), args.recursive)
        for w in warnings:
            _warn(w)
        sets[label] = paths
    try:
        det = Detector(args.model, backend=BackendOptions(providers=provider_list(args.providers)),
                       options=InputOptions(batch_size=args.batch_size))
    except (NSNetError, ValueError) as e:
        print(f"nsnet: error: cannot load model: {e}", file=sys.stderr)
        return None
    scores: dict[str, list[float]] = {}
    left_out = 0
    with det:
        for label, paths in sets.items():
            scores[label] = []
            try:
                for pred in det.predict_iter(paths, on_error="record"):
                    if pred.error is not None:
                        _warn(f"skipped {pred.error}")
                    elif low_information(pred.warnings):
                        left_out += 1
                    else:
                        scores[label].append(pred.prob_fake)
            except NSNetError as e:
                print(f"nsnet: error: inference failed: {e}", file=sys.stderr)
                return None
    return scores, left_out


def cmd_calibrate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.labels and (args.real or args.fake):
        parser.error("give --labels, or --real and --fake, not both")
    if not args.labels and not (args.real and args.fake):
        parser.error("give --real PATH... and --fake PATH..., or --labels labels.jsonl")
    dates: list[str] = []
    if args.labels:
        from ..labels import LabelFileError, check_model, model_identities, read_labels, split_scores

        try:
            labels = read_labels(args.labels)
            check_model(labels, model_identities(args.model))
        except (LabelFileError, NSNetError, OSError) as e:
            print(f"nsnet: error: {e}", file=sys.stderr)
            return 1
        real, fake, left = split_scores(labels)
        scores, left_out = {"real": real, "fake": fake}, left["no_score"]
        dates = [lab.time for lab in labels if lab.label != "skip"]
        if left["skip"]:
            print(f"nsnet: {left['skip']} 'skip' labels left out", file=sys.stderr)
        what = f"labels={','.join(args.labels)}"
    else:
        got = _scores_from_folders(args)
        if got is None:
            return 1
        scores, left_out = got
        what = f"real={','.join(args.real)} fake={','.join(args.fake)}"
    if left_out:
        _warn(f"{plural(left_out, 'input')} left out: their score says little (smaller than one patch, or not scored)")
    source = f"nsnet calibrate: {len(scores['real'])} real, {len(scores['fake'])} fake images ({what})"
    try:
        result = calibrate_band(scores["real"], scores["fake"], fpr=args.fpr, fnr=args.fnr, source=source)
    except ValueError as e:
        print(f"nsnet: error: {e}", file=sys.stderr)
        return 1
    result["left_out"] = left_out
    for w in result["warnings"]:
        _warn(w)
    print(json.dumps(result, indent=2))
    if args.out or args.in_place:
        from ..restamp import restamp

        band = {k: result[k] for k in BAND_KEYS}
        from ..artifact import model_sha256

        summary = calibration_summary(result, source=what, left_out=left_out, dates=dates)
        # The copy answers for labels of the model it came from: a re-stamp leaves the weights as they are.
        summary["model_sha256"] = model_sha256(args.model)
        try:
            # source=None: the band does not change the single threshold, so its origin stays
            written = restamp(args.model, band=band, source=None, out=args.out, overwrite=args.in_place,
                              card_fields={"calibration": summary})
        except (NSNetError, OSError) as e:
            print(f"nsnet: error: cannot store the band: {e}", file=sys.stderr)
            return 1
        print(f"nsnet: verdict band stored in {written}", file=sys.stderr)
    return 0
