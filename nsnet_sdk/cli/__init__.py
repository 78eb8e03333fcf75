"""The ``nsnet`` command: every subcommand's parser and command lives in this package, one module
each (`PLUGINS`: ``detect``, ``batch``, ``serve``, ``explain``, ``report``, ``calibrate``), plus
``nsnet info`` here. Feature modules (`nsnet_sdk.batch`, `nsnet_sdk.report`, ...) hold no argparse.

Exit status: 0 when the run completed (inputs that could not be scored are rows with an
``error``, not failures), 1 when the model cannot be loaded or the backend fails on a batch
(the rows before it are kept), 2 on usage errors, 130 when interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import warnings
from typing import Any, Callable, Sequence

from .. import __version__
from .args import probability, provider_list
from ..options import AUTO, ENGINES, PRECISIONS
from ..errors import BackendUnavailableError, NSNetError, RandomWeightsWarning


# Subcommands that live beside the feature they expose: each module defines
# ``add_parser(subparsers)``, which registers its parser with ``set_defaults(run=fn)`` where
# ``fn(args, parser) -> int`` (``parser``: the subcommand's own, for its usage errors). Each module
# imports its optional libraries (ray, matplotlib, c2pa) only inside ``fn``, so `nsnet --help`
# stays light.
PLUGINS = ("detect", "batch", "serve", "explain", "report", "calibrate")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nsnet", description="NS-Net AI-generated image detection.")
    p.add_argument("--version", action="version", version=f"nsnet {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name in PLUGINS:
        importlib.import_module(f"{__package__}.{name}").add_parser(sub)
    i = sub.add_parser("info", help="print a model's metadata, model card and backend",
                       description="Describe a model; with --set-threshold, re-stamp its decision "
                       "threshold (metadata only, weights untouched) into --out or, with "
                       "--in-place, the model itself.")
    i.add_argument("model", metavar="MODEL")
    i.add_argument("--json", action="store_true", help="print as one JSON object")
    i.add_argument("--providers", help="ONNX Runtime providers, comma-separated, in order")
    i.add_argument("--backend", choices=ENGINES + (AUTO,), metavar="ENGINE", help="describe the model as "
                   f"run by this engine ({', '.join(ENGINES)}, or auto: the fastest measured CPU "
                   "engine for an .onnx file); engine_choice says which engine and precision and why")
    i.add_argument("--precision", choices=PRECISIONS, help="the precision (with auto: the parity bound "
                   "the chosen engine must stay within; default: the model file's)")
    i.add_argument("--set-threshold", type=probability, metavar="T",
                   help="write threshold T on prob_fake into the model's metadata")
    i.add_argument("--threshold-source", metavar="TEXT",
                   help="how T was chosen, recorded in the model card (default: 'set by hand to T')")
    i.add_argument("--out", metavar="NEW", help="with --set-threshold: write the re-stamped copy here")
    i.add_argument("--in-place", action="store_true",
                   help="with --set-threshold: rewrite MODEL itself (atomically)")
    i.set_defaults(run=cmd_info)
    p.set_defaults(subparsers=sub.choices)  # main() reports a stray flag with its command's usage
    return p


def _engine_info_from_sidecar(model: str) -> dict[str, Any] | None:
    """`nsnet info` for an engine on a box without TensorRT: what its sidecar says, or None when
    ``model`` is not an engine with a valid sidecar."""
    from ..artifact import TENSORRT, artifact_kind, read_model_meta
    from ..detector import model_info

    try:
        if artifact_kind(model) != TENSORRT:
            return None
        meta = read_model_meta(model, TENSORRT)
    except NSNetError:
        return None
    return model_info(model, TENSORRT, None, meta)


def _restamp(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..restamp import restamp

    if args.out is None and not args.in_place:
        parser.error("--set-threshold needs --out NEW, or --in-place to rewrite MODEL itself")
    if args.out is not None and args.in_place:
        parser.error("--out and --in-place are exclusive")
    source = args.threshold_source or f"set by hand to {args.set_threshold:g}"
    try:
        written = restamp(args.model, threshold=args.set_threshold, source=source, out=args.out,
                          overwrite=args.in_place)
    except (NSNetError, OSError) as e:
        print(f"nsnet: error: cannot re-stamp model: {e}", file=sys.stderr)
        return 1
    print(f"nsnet: wrote {written} (threshold {args.set_threshold:g}, {source})", file=sys.stderr)
    return 0


def _print_info(info: dict[str, Any]) -> None:
    for key, value in info.items():
        if key in ("metadata", "model_card", "engine_choice"):
            continue
        print(f"{key:15s} {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    choice = info.get("engine_choice") or {}
    if choice:
        head = f"{choice['engine']} {choice['precision']}: "
        print(f"{'engine choice':15s} {head}{choice['why'].removeprefix(head)}")
        if "cpu" in choice:
            flags = ", ".join(choice["cpu_flags"]) or "none of the flags it looks at"
            print(f"  {'cpu':17s} {choice['cpu']} ({flags})")
            print(f"  {'measured row':17s} {json.dumps(choice['row']) if choice['row'] else '(none: the baseline)'}")
    card = info.get("model_card") or {}
    print("model card:" if card else "model card:    (none recorded; exported before model cards)")
    for key, value in card.items():
        print(f"  {key:17s} {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    print("metadata:")
    for key, value in sorted(info["metadata"].items()):
        print(f"  {key} = {value}")


def cmd_info(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.set_threshold is not None:
        return _restamp(args, parser)
    if args.out is not None or args.in_place or args.threshold_source is not None:
        parser.error("--out, --in-place and --threshold-source go with --set-threshold")
    from ..detector import Detector
    from ..options import BackendOptions, InputOptions

    try:
        det = Detector(args.model, backend=BackendOptions(engine=args.backend, precision=args.precision,
                                                          providers=provider_list(args.providers)),
                       options=InputOptions(workers=0))
    except BackendUnavailableError as e:
        info = _engine_info_from_sidecar(args.model)
        if info is None:
            print(f"nsnet: error: cannot load model: {e}", file=sys.stderr)
            return 1
        print(f"nsnet: warning: engine not loaded, metadata from its sidecar only: {e}",
              file=sys.stderr)
    except (NSNetError, ValueError) as e:
        print(f"nsnet: error: cannot load model: {e}", file=sys.stderr)
        return 1
    else:
        info = det.info()
        det.close()
    from ..artifact import model_sha256

    # The sha256 every result row of this model carries (model_sha256), which labels must match.
    info = {"model": info["model"], "model_sha256": model_sha256(args.model)} | info
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_info(info)
    return 0


def _show_warning(original: Callable[..., None]) -> Callable[..., None]:
    """A `warnings.showwarning` that prints the SDK's own warnings as one ``nsnet: warning:`` line."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, RandomWeightsWarning):
            print(f"nsnet: warning: {message}", file=sys.stderr)
        else:
            original(message, category, filename, lineno, file, line)
    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nsnet`` console script; returns the exit status."""
    # The CLI owns its process: keep freed decode buffers in the heap instead of paying their
    # page faults again on every image (the tuning the decode worker processes get too).
    from ..allocator import keep_freed_frames

    keep_freed_frames()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # an unknown flag after the command: show that command's usage, not nsnet's
        args.subparsers.get(args.command, parser).error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning(warnings.showwarning)
            return args.run(args, args.subparsers.get(args.command, parser))
    except BrokenPipeError:  # `nsnet detect ... | head`: stop quietly like other Unix tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:  # Ctrl-C before a command could stop cleanly: no traceback
        print("nsnet: interrupted", file=sys.stderr)
        return 130

