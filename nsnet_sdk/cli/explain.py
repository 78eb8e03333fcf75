"""``nsnet explain IMG... --out DIR``: a PNG overlay and a JSON file of per-patch contributions for
each image (`nsnet_sdk.explain` computes them)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .args import plural, provider_list
from ..errors import InferenceError, NSNetError
from ..explain import explain_rgb, load_for_explain, render_png
from ..results import escape_text

def add_parser(sub: Any) -> None:
    """Register ``nsnet explain``."""
    p = sub.add_parser("explain", help="per-patch explanations: PNG overlay + JSON per image",
                       description="For each image: a PNG with the selected patches outlined on the "
                       "original, coloured by how much occluding them moves the logit, and a JSON "
                       "file with the boxes and contributions (docs/beyond-score.md).")
    p.add_argument("paths", nargs="+", metavar="IMG", help="image files and/or directories")
    p.add_argument("--model", "-m", required=True, help=".engine, .onnx or a run directory")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created)")
    p.add_argument("--recursive", "-r", action="store_true", help="scan directories recursively")
    p.add_argument("--no-png", action="store_true", help="write the JSON files only (no matplotlib needed)")
    p.add_argument("--providers", help="ONNX Runtime providers, comma-separated, in order")
    p.set_defaults(run=cmd_explain)


def _unique_stem(stem: str, taken: set[str]) -> str:
    out, i = stem, 1
    while out in taken:
        i += 1
        out = f"{stem}-{i}"
    taken.add(out)
    return out


def cmd_explain(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..detector import Detector
    from ..options import BackendOptions, InputOptions
    from ..pipeline import iter_image_paths

    if not args.no_png:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("the PNG overlays need matplotlib (pip install matplotlib), or pass --no-png")
    inputs, warnings = iter_image_paths(args.paths, args.recursive)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        parser.error(f"cannot create --out {out}: {e}")
    try:
        det = Detector(args.model, backend=BackendOptions(providers=provider_list(args.providers)),
                       options=InputOptions(workers=0))
    except (NSNetError, ValueError) as e:
        print(f"nsnet: error: cannot load model: {e}", file=sys.stderr)
        return 1
    for w in warnings:
        print(f"nsnet: warning: {w}", file=sys.stderr)
    taken: set[str] = set()
    done = failed = 0
    with det, open(out / "explanations.jsonl", "w", encoding="utf-8") as index:
        for src in inputs:
            name = str(src)
            stem = _unique_stem(Path(name).stem or "image", taken)
            # Text is escaped as in `nsnet detect`'s files (results.escape_text): a name that is not
            # valid UTF-8 keeps its bytes as \xNN, and `results.unescape_text` gives the path back.
            row: dict[str, Any] = {"source": escape_text(name), "json": None, "png": None, "error": None}
            try:
                rgb, notes = load_for_explain(det, src, name)
                expl = explain_rgb(det, rgb, name, notes)
                doc = {**expl.to_dict(), "source": row["source"], "warnings": [escape_text(w) for w in notes]}
                (out / f"{stem}.json").write_text(json.dumps(doc), encoding="utf-8")
                row["json"] = escape_text(f"{stem}.json")
                if not args.no_png:
                    render_png(expl, rgb, out / f"{stem}.png", threshold=det.threshold)
                    row["png"] = escape_text(f"{stem}.png")
                done += 1
            except InferenceError as e:
                if e.source != name:  # the model (its runtime, a closed Detector), not this input: stop
                    print(f"nsnet: error: inference failed on {escape_text(name)}: {escape_text(str(e))}",
                          file=sys.stderr)
                    return 1
                row["error"] = escape_text(f"{type(e).__name__}: {e}")  # this input's logit was not finite
                failed += 1
            except Exception as e:  # one bad input (or its drawing): an error row, and the run goes on
                row["error"] = escape_text(f"{type(e).__name__}: {e}")
                failed += 1
            index.write(json.dumps(row) + "\n")
            index.flush()
    print(f"nsnet: {done} explained, {plural(failed, 'error')}; written to {out}",
          file=sys.stderr)
    return 0
