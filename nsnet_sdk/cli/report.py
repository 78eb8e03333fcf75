"""``nsnet report``: its parser and command (the work is `nsnet_sdk.report`)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import NSNetError
from ..report import build_report, read_results


def add_parser(sub: Any) -> None:
    """Register ``nsnet report``."""
    p = sub.add_parser("report", help="one self-contained HTML review report from result files",
                       description="Build an HTML report (no server, no network) from nsnet detect / "
                       "nsnet batch results (JSON Lines or CSV): model, threshold or band, counts by verdict, "
                       "score histogram, the most suspicious images, errors, and a sortable, paged table "
                       "of all rows in which a reviewer labels rows and exports labels.jsonl (for nsnet "
                       "calibrate --labels).")
    p.add_argument("results", nargs="+", metavar="RESULTS",
                   help="result files: JSON Lines or CSV (nsnet detect), Parquet (nsnet batch)")
    p.add_argument("--out", required=True, metavar="HTML", help="report file to write")
    p.add_argument("--model", "-m", help="draw explanation overlays on the most suspicious images "
                   "with this model (.engine, .onnx or a run directory)")
    p.add_argument("--top", type=int, default=24, help="how many suspicious images to show (24)")
    p.add_argument("--no-provenance", action="store_true",
                   help="do not read provenance from files whose rows lack it")
    p.add_argument("--trust-anchors", metavar="PEM", help="CA certificates whose C2PA signers are trusted")
    p.add_argument("--title", default="NS-Net review report")
    p.add_argument("--base", metavar="DIR", help="read no file outside DIR (thumbnails, provenance, the "
                   "sha256 that labels carry); without it, results files are trusted input: the report "
                   "reads any local file they name")
    p.set_defaults(run=cmd_report)


def cmd_report(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..provenance import ProvenanceReader

    if args.top < 0:
        parser.error("--top must be >= 0")
    rows, problems = read_results(args.results)
    if not rows and problems and len(problems) >= len(args.results):
        for p in problems:
            print(f"nsnet: error: {p}", file=sys.stderr)
        return 1
    try:
        reader = None if args.no_provenance else ProvenanceReader(trust_anchors=args.trust_anchors)
    except (OSError, ValueError) as e:
        parser.error(f"--trust-anchors: {e}")
    det = None
    if args.model:
        from ..detector import Detector
        from ..options import InputOptions

        try:
            det = Detector(args.model, options=InputOptions(workers=0))
        except (NSNetError, ValueError) as e:
            print(f"nsnet: error: cannot load model: {e}", file=sys.stderr)
            return 1
    try:
        out = build_report(rows, args.out, detector=det, reader=reader, top=args.top, title=args.title,
                           sources=args.results, problems=problems, base=args.base)
    except OSError as e:
        print(f"nsnet: error: cannot write {args.out}: {e}", file=sys.stderr)
        return 1
    finally:
        if det is not None:
            det.close()
    for p in problems:
        print(f"nsnet: warning: {p}", file=sys.stderr)
    print(f"nsnet: report of {len(rows):,} rows written to {out}", file=sys.stderr)
    return 0
