"""The ``nsnet`` command: ``nsnet detect`` scores images, ``nsnet info`` describes a model; the
other subcommands (`PLUGINS`) are registered by the modules that implement them.

Exit status: 0 when the run completed (inputs that could not be scored are rows with an
``error``, not failures), 1 when the model cannot be loaded or the backend fails on a batch
(the rows before it are kept), 2 on usage errors.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import csv
import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TextIO

from . import __version__
from .errors import BackendUnavailableError, NSNetError
from .preprocess import iter_image_paths

ROW_FIELDS = ("source", "prob_fake", "is_fake", "error")


def _checked(kind: type, ok: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    """An argparse ``type=`` that converts with ``kind`` and accepts only values where ``ok``."""
    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
        return v
    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_nonneg_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
_probability = _checked(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


# Subcommands that live beside the feature they expose: each module defines
# ``add_parser(subparsers)``, which registers its parser with ``set_defaults(run=fn)`` where
# ``fn(args, parser) -> int``. The module must import its optional libraries (ray, matplotlib,
# c2pa) only inside ``fn``, so `nsnet --help` stays light.
PLUGINS = ("batch", "serve", "explain", "report")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nsnet", description="NS-Net AI-generated image detection.")
    p.add_argument("--version", action="version", version=f"nsnet {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("detect", help="score images as real or AI-generated",
                       description="Score image files. Directories are scanned for image files "
                       "(by extension); files named explicitly are always attempted.")
    d.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or directories")
    d.add_argument("--model", "-m", required=True,
                   help=".engine (TensorRT), .onnx (ONNX Runtime) or a run directory (PyTorch)")
    d.add_argument("--recursive", "-r", action="store_true", help="scan directories recursively")
    d.add_argument("--json", metavar="FILE", help="write JSON Lines here ('-' = stdout)")
    d.add_argument("--csv", metavar="FILE", help="write CSV here ('-' = stdout)")
    d.add_argument("--threshold", type=_probability, help="decision threshold on prob_fake "
                   "(default: the model's)")
    d.add_argument("--batch-size", type=_positive_int, default=32, help="images per batch (32)")
    d.add_argument("--workers", type=_nonneg_int, default=None,
                   help="decode threads (default: one per core; 0 = none)")
    d.add_argument("--providers", help="ONNX Runtime providers, comma-separated, in order")
    d.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")

    i = sub.add_parser("info", help="print a model's metadata and backend")
    i.add_argument("model", metavar="MODEL")
    i.add_argument("--json", action="store_true", help="print as one JSON object")
    i.add_argument("--providers", help="ONNX Runtime providers, comma-separated, in order")
    d.set_defaults(run=cmd_detect)
    i.set_defaults(run=lambda args, parser: cmd_info(args))
    for name in PLUGINS:
        if importlib.util.find_spec(f"{__package__}.{name}") is not None:
            importlib.import_module(f"{__package__}.{name}").add_parser(sub)
    return p


def _open_output(spec: str | None, stack: ExitStack, newline: str | None = None) -> TextIO | None:
    """Open an output for writing without truncating it yet (`cmd_detect` empties it once the
    model has loaded, so a run that cannot start leaves an earlier result file as it was)."""
    if spec is None:
        return None
    if spec == "-":
        return sys.stdout
    return stack.enter_context(open(spec, "a", encoding="utf-8", newline=newline))


def _progress(total: int, quiet: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional at runtime; the summary still reports the counts
        return None
    return tqdm(total=total, unit="img", file=sys.stderr, disable=quiet, dynamic_ncols=True)


def _providers(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


def cmd_detect(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .detector import Detector

    inputs, warnings = iter_image_paths(args.paths, args.recursive)
    with ExitStack() as stack:
        try:  # open outputs first: a bad output path is a usage error, found before model loading
            jf = _open_output(args.json, stack)
            cf = _open_output(args.csv, stack, newline="")
        except OSError as e:
            parser.error(f"cannot open output file: {e}")
        if jf is None and cf is None:
            jf = sys.stdout
        try:
            det = Detector(args.model, threshold=args.threshold, providers=_providers(args.providers),
                           batch_size=args.batch_size, workers=args.workers)
        except (NSNetError, ValueError) as e:
            print(f"nsnet: error: cannot load model: {e}", file=sys.stderr)
            return 1
        stack.callback(det.close)
        for f in {jf, cf} - {None, sys.stdout}:
            f.truncate(0)  # opened for appending: writes go to the (now empty) end
        for w in warnings:
            print(f"nsnet: warning: {w}", file=sys.stderr)
        writer = None
        if cf is not None:
            writer = csv.DictWriter(cf, fieldnames=ROW_FIELDS)
            writer.writeheader()
        bar = _progress(len(inputs), args.quiet)
        scored = fake = errors = 0
        failure = None
        try:
            for pred in det.predict_iter(inputs, on_error="record"):
                row = {k: getattr(pred, k) for k in ROW_FIELDS}
                if jf is not None:
                    jf.write(json.dumps(row) + "\n")
                if writer is not None:
                    writer.writerow({k: "" if v is None else v for k, v in row.items()})
                if pred.error is None:
                    scored += 1
                    fake += bool(pred.is_fake)
                else:
                    errors += 1
                if bar is not None:
                    bar.update(1)
        except NSNetError as e:  # the backend failed on a batch: the model, not an input, is at fault
            failure = e
        if bar is not None:
            bar.close()
        for f in (jf, cf):
            if f is not None:
                f.flush()
        if failure is not None:
            print(f"nsnet: error: inference failed after {scored + errors} of {len(inputs)} inputs "
                  f"(their rows are written): {failure}", file=sys.stderr)
            return 1
    if not args.quiet:
        print(f"nsnet: {len(inputs)} inputs: {scored} scored, {fake} fake, {errors} errors "
              f"(threshold {det.threshold:g}, {det.backend.name} on {det.backend.device})",
              file=sys.stderr)
    return 0


def _engine_info_from_sidecar(model: str) -> dict[str, Any] | None:
    """`nsnet info` for an engine on a box without TensorRT: what its sidecar says, or None when
    ``model`` is not an engine with a valid sidecar."""
    from .artifact import TENSORRT, ModelMeta, artifact_kind
    from .backends.tensorrt import read_sidecar  # imports neither tensorrt nor cuda-python
    from .detector import model_info

    try:
        if artifact_kind(model) != TENSORRT:
            return None
        meta = ModelMeta.parse(read_sidecar(model), model)
    except NSNetError:
        return None
    return model_info(model, TENSORRT, None, meta)


def cmd_info(args: argparse.Namespace) -> int:
    from .detector import Detector

    try:
        det = Detector(args.model, providers=_providers(args.providers), workers=0)
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
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key == "metadata":
            continue
        print(f"{key:15s} {json.dumps(value) if isinstance(value, dict) else value}")
    print("metadata:")
    for key, value in sorted(info["metadata"].items()):
        print(f"  {key} = {value}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nsnet`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args, parser)
    except BrokenPipeError:  # `nsnet detect ... | head`: stop quietly like other Unix tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
