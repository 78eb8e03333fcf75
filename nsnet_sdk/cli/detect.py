"""``nsnet detect``: check the command line, scan folders, score every input and write one result
row per input (CSV / JSON Lines, `nsnet_sdk.results`) as it is scored, with a summary that says
what was skipped and where the results are."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections import Counter
from typing import Any

from .args import (add_provenance_options, nonneg_int, plural, positive_int, probability, progress_bar,
                   provenance_option, provider_list)
from ..errors import NSNetError
from ..options import AUTO, DEFAULT_BATCH_SIZE, ENGINES, PRECISIONS
from ..pipeline import MAX_PIXELS, ImageScan, scan_image_paths
from ..pipeline.executors import DECODE_MODES
from ..pipeline.gpu import PIPELINES
from ..provenance import PROVENANCE_COLUMNS, provenance_columns
from ..artifact import model_sha256
from ..results import (CACHED, CSV, DETECT_FIELDS, JSONL, SETTINGS, InflightJournal, ResultFileError,
                       ResultWriter, holds_result, result_row)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``nsnet detect``."""
    d = subparsers.add_parser(
        "detect", help="score images as real or AI-generated",
        description="Score image files. Folders are scanned for image files (by extension); "
        "files named explicitly are always attempted. One row per input (source, prob_fake, "
        "is_fake, logit, error, warnings, verdict, threshold, model_sha256, settings) is written as "
        "it is scored. Exit status: 0 run completed (unreadable inputs are rows with an error), "
        "1 model cannot be loaded or inference failed (rows before it are kept), 2 usage error, "
        "130 interrupted.")
    d.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or folders")
    d.add_argument("--model", "-m", required=True,
                   help=".engine (TensorRT), .onnx (ONNX Runtime) or a run directory (PyTorch)")
    d.add_argument("--recursive", "-r", action="store_true", help="scan folders recursively")
    d.add_argument("--hidden", action="store_true",
                   help="also scan hidden files and folders (names starting with '.')")
    d.add_argument("--jsonl", metavar="FILE", help="write JSON Lines here ('-' = stdout)")
    d.add_argument("--json", metavar="FILE", help="alias of --jsonl (the file is JSON Lines)")
    d.add_argument("--csv", metavar="FILE", help="write CSV here ('-' = stdout)")
    existing = d.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true",
                          help="replace result files that already hold results")
    existing.add_argument("--resume", action="store_true",
                          help="append to existing result files, skipping inputs already in them "
                          "(matched by path); refused when the file's rows came from another model, "
                          "threshold or settings")
    d.add_argument("--threshold", type=probability, help="decision threshold on prob_fake "
                   "(default: the model's)")
    d.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                   help=f"images per batch ({DEFAULT_BATCH_SIZE})")
    d.add_argument("--workers", type=nonneg_int, default=None,
                   help="decode workers (default: one per core; 0 = none)")
    d.add_argument("--decode", choices=DECODE_MODES, default="threads",
                   help="run the decode workers as threads (default) or as processes (CPU pipeline)")
    d.add_argument("--pipeline", choices=PIPELINES, default="cpu",
                   help="decode and patch selection on the CPU (default), on the GPU (batched "
                   "nvImageCodec decode + torch selection on --device), or auto (GPU where CUDA and "
                   "nvImageCodec exist)")
    d.add_argument("--device", help="where the model and the GPU pipeline run: cpu, cuda, cuda:N "
                   "(default: the engine's choice); '--pipeline gpu --device cpu' runs the GPU "
                   "pipeline's code on the CPU")
    d.add_argument("--backend", choices=ENGINES + (AUTO,), metavar="ENGINE", help="the engine that runs "
                   f"the model: {', '.join(ENGINES)} (default: by the model file; an .onnx file may "
                   "also run on openvino), or auto: the fastest measured CPU engine for an .onnx file "
                   "(nsnet info --backend auto says which and why)")
    d.add_argument("--precision", choices=PRECISIONS, help="the precision the engine runs "
                   "(default: the model file's)")
    d.add_argument("--max-pixels", type=positive_int, default=MAX_PIXELS, metavar="N",
                   help=f"refuse images declaring more than N pixels ({MAX_PIXELS:,})")
    d.add_argument("--providers", help="ONNX Runtime providers, comma-separated, in order")
    d.add_argument("--cache", metavar="FILE", help="SQLite result cache shared by runs and processes: "
                   "a file already scored with this model and these options is answered from it "
                   "without decoding (column cached=true); identical files within one run are "
                   "scored once whether or not it is given")
    add_provenance_options(d)
    talk = d.add_mutually_exclusive_group()
    talk.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    talk.add_argument("--verbose", "-v", action="store_true",
                      help="list every skipped folder entry; show the image libraries' messages")
    d.set_defaults(run=cmd_detect)
    return d


def _outputs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """[(spec, format)] the run writes to; usage errors for contradictory outputs."""
    if args.json is not None and args.jsonl is not None:
        parser.error("--json is an alias of --jsonl: give one of them")
    jsonl = args.jsonl if args.jsonl is not None else args.json
    outs = [(spec, fmt) for spec, fmt in ((jsonl, JSONL), (args.csv, CSV)) if spec is not None]
    if not outs:
        return [("-", JSONL)]
    if len(outs) == 2 and _same_file(outs[0][0], outs[1][0]):
        parser.error(f"--csv and --jsonl both write to {outs[1][0]}: give two different files")
    for spec, _ in outs:
        if holds_result(spec) and not (args.overwrite or args.resume):
            parser.error(f"{spec} already holds results: --resume adds the inputs missing from "
                         "it, --overwrite replaces it")
        if spec != "-" and os.path.isdir(spec):
            parser.error(f"{spec} is a folder, not a result file")
    return outs


def _same_file(a: str, b: str) -> bool:
    if a == "-" or b == "-":
        return a == b
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist yet: compare where they would be
        return os.path.realpath(a) == os.path.realpath(b)


def _say(text: str) -> None:
    print(f"nsnet: {text}", file=sys.stderr)


def _scan_notes(scan: ImageScan, verbose: bool) -> list[str]:
    notes = []
    if scan.subfolders:
        notes.append(f"skipped {scan.subfolders} subfolder(s) (use --recursive to include them)")
    if scan.hidden:
        notes.append(f"skipped {scan.hidden} hidden entr{'y' if scan.hidden == 1 else 'ies'} "
                     "(use --hidden to include them)")
    odd = scan.non_regular
    if odd:
        notes.append(f"skipped {len(odd)} non-regular entr{'y' if len(odd) == 1 else 'ies'} named "
                     "like images" + ("" if verbose else " (--verbose lists them)"))
    if verbose:
        notes += [f"  skipped {path!r}: {reason}" for path, reason in scan.skipped]
    return notes


def cmd_detect(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``nsnet detect``; returns the exit status."""
    from ..allocator import keep_freed_frames
    from ..quiet import native_stderr_to_logging, quiet_libraries

    keep_freed_frames(large_frames=True)  # a batch job: frames over 32 MB reused too

    missing = [p for p in args.paths if not os.path.exists(p)]
    if missing:  # a typo, not an image that failed: nothing has been done yet
        parser.error("no such file or folder: " + ", ".join(repr(p) for p in missing))
    outputs = _outputs(args, parser)
    args.provenance_reader = provenance_option(args, parser)
    fields = DETECT_FIELDS + (PROVENANCE_COLUMNS if args.provenance else ())
    mode = "resume" if args.resume else "overwrite" if args.overwrite else "new"
    writers: list[ResultWriter] = []
    try:
        for spec, fmt in outputs:
            writers.append(ResultWriter(spec, fmt, mode=mode, fields=fields))
    except ResultFileError as e:
        parser.error(str(e))
    except OSError as e:
        parser.error(f"cannot open output file: {e}")
    try:
        try:  # before the model loads: the hash is what a resumed file is checked against
            sha = model_sha256(args.model)
        except OSError:
            sha = ""  # the Detector reports why the model cannot be read
        for w in writers:
            if sha and w.model_sha256s - {sha}:
                parser.error(f"{w.spec} holds results of another model (sha256 "
                             f"{', '.join(sorted(w.model_sha256s))}, not {sha}): resume it with "
                             "that model, or --overwrite")
        scan = scan_image_paths(args.paths, args.recursive, hidden=args.hidden)
        quiet_libraries(verbose=args.verbose)
        with native_stderr_to_logging(enabled=not args.verbose):
            return _run(args, parser, writers, scan, sha)
    finally:
        for w in writers:
            w.close()


def _options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[Any, Any]:
    """(BackendOptions, InputOptions) of the command line; a combination an option would be
    ignored in (``--decode processes --pipeline gpu``) is a usage error."""
    from ..options import BackendOptions, InputOptions

    try:
        return (BackendOptions(engine=args.backend, device=args.device, precision=args.precision,
                               providers=provider_list(args.providers)),
                InputOptions(batch_size=args.batch_size, workers=args.workers, executor=args.decode,
                             pipeline=args.pipeline, max_pixels=args.max_pixels,
                             provenance=args.provenance_reader))
    except ValueError as e:
        parser.error(str(e).replace("executor=", "--decode ").replace("pipeline=", "--pipeline "))


def _check_resume(det: Any, writers: list[ResultWriter], settings: str) -> str | None:
    """Why a resumed file cannot take this run's rows, or None."""
    for w in writers:
        if w.thresholds - {det.threshold}:
            return (f"{w.spec} holds results scored with threshold "
                    f"{', '.join(f'{t:g}' for t in sorted(w.thresholds))}, not {det.threshold:g}: "
                    "resume it with that --threshold, or --overwrite")
        if w.settings - {settings}:
            return (f"{w.spec} holds results scored with other settings ({'; '.join(sorted(w.settings))}; "
                    f"this run: {settings}): resume it with those options, or --overwrite")
    return None


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser, writers: list[ResultWriter],
         scan: ImageScan, sha: str) -> int:
    """Load the model, then score and report; the writers are open and checked."""
    from ..detector import Detector

    backend, options = _options(args, parser)
    try:
        det = Detector(args.model, threshold=args.threshold, backend=backend, options=options)
    except (NSNetError, ValueError) as e:
        _say(f"error: cannot load model: {e}")
        return 1
    settings = det.settings()
    refused = _check_resume(det, writers, settings)
    if refused:
        det.close()
        parser.error(refused)  # nothing written yet: the file is as it was
    journal = InflightJournal([w.spec for w in writers])
    if not args.resume:
        journal.clear()  # another run's journal says nothing about this one's inputs
    try:
        for w in writers:
            w.begin()  # only now: a run that cannot start leaves an earlier file as it was
        for msg in scan.warnings:
            _say(f"warning: {msg}")
        todo = [p for p in scan.files if not all(p in w.done for w in writers)]
        already = len(scan.files) - len(todo)
        left_over = journal.left_over() if args.resume else set()
        isolate = [p for p in todo if p in left_over]  # in flight when a run died: maybe its killer
        bar = progress_bar(len(todo), args.quiet)
        counts, failure, interrupted = _score(
            det, todo, writers, sha, settings, bar, args.batch_size, _cache(args, det, sha),
            journal=journal, isolated=_isolated(args, backend, options, isolate))
        if bar is not None:
            bar.close()
        if failure is None and not interrupted:  # every input has its row: none killed a run
            journal.clear()  # (otherwise the next --resume decodes the journal's rest in workers)
    finally:
        det.close()
    scored, errors, decided = counts
    done = scored + errors
    if failure is not None:
        _say(f"error: inference failed after {done} of {len(todo)} inputs (their rows are "
             f"written): {failure}")
        return 1
    if interrupted:
        _say(f"interrupted after {done} of {len(todo)} inputs; their rows are written "
             "(--resume continues the run)")
        return 130
    if not args.quiet:
        band = det.meta.band
        rule = (f"verdict band {band.t_real:g}..{band.t_fake:g}" if band is not None
                else f"threshold {det.threshold:g}")
        if band is not None:  # the band decides: count verdicts, as is_fake follows them
            outcome = ", ".join(f"{decided[v]} {v}" for v in ("ai-generated", "real", "uncertain"))
        else:
            outcome = f"{decided[True]} fake"
        _say(f"{plural(len(todo), 'input')}: {scored} scored, {outcome}, {plural(errors, 'error')} "
             f"({rule}, {det.backend.name} on {det.backend.device})")
        if already:
            _say(f"{already} inputs already in the results were not scored again (--resume)")
        if isolate:
            _say(f"{plural(len(isolate), 'input')} in flight when an earlier run stopped were decoded "
                 "in worker processes (a decoder crash costs only its own input)")
        for note in _scan_notes(scan, args.verbose):
            _say(note)
        where = ", ".join("stdout" if w.spec == "-" else w.spec for w in writers)
        _say(f"results written to {where}")
    return 0


def _cache(args: argparse.Namespace, det: Any, sha: str) -> Any:
    """The --cache `ResultCache`, keyed by this model and every option that changes a row; None
    without --cache. A damaged cache file is reported, moved aside and rebuilt."""
    if not args.cache:
        return None
    from ..cache import ResultCache, result_options

    options = result_options(det, provenance=args.provenance, trust_anchors=args.trust_anchors)
    cache = ResultCache(args.cache, model_sha256=sha, options=options)
    for problem in cache.problems:
        _say(f"warning: {problem}")
    return cache


def _isolated(args: argparse.Namespace, backend: Any, options: Any, paths: list[str]) -> tuple[list[str], Any]:
    """(``paths``, a factory of the Detector that scores them with every input decoded in a worker
    process: CPU pipeline, ``--decode processes``), for the inputs a dead run had in flight."""
    from dataclasses import replace

    from ..detector import Detector

    def make() -> Any:
        workers = max(1, min(options.workers, len(paths)))
        return Detector(args.model, threshold=args.threshold, backend=backend,
                        options=replace(options, executor="processes", pipeline="cpu", workers=workers))
    return paths, make


def _score(det: Any, todo: list[str], writers: list[ResultWriter], sha: str, settings: str, bar: Any,
           batch_size: int, cache: Any = None, journal: InflightJournal | None = None,
           isolated: tuple[list[str], Any] = ([], None),
           ) -> tuple[tuple[int, int, Counter], NSNetError | None, bool]:
    """Score ``todo``, writing each batch's rows before the progress bar counts them; the inputs
    of ``isolated`` (paths, Detector factory) first, by that Detector, the others by ``det``, each
    chunk named in ``journal`` before it is decoded in this process.
    Returns ((scored, errors, count of each verdict and is_fake value), the backend's failure or
    None, interrupted).

    Ctrl-C stops after the batch in progress is written (never in the middle of writing it);
    a second Ctrl-C stops at once."""
    from ..cache import score_once

    scored = errors = pending = 0
    decided: Counter = Counter()
    failure, interrupted = None, False
    stop = threading.Event()

    def on_sigint(signum: int, frame: Any) -> None:
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def flush() -> None:
        nonlocal pending
        for w in writers:
            w.flush()
        if bar is not None and pending:
            bar.update(pending)
        pending = 0

    def before_chunk(names: list[str]) -> None:
        flush()  # every row so far on disk before the journal stops naming the earlier inputs
        if journal is not None:
            journal.record(names)

    def results() -> Any:
        first, make = isolated
        if first:
            with make() as iso:
                yield from score_once(iso, first, cache)
        chosen = set(first)
        yield from score_once(det, [p for p in todo if p not in chosen], cache, on_chunk=before_chunk)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if main_thread else None
    try:
        for pred, reused in results():
            row = result_row(pred, threshold=det.threshold, model_sha256=sha)
            row[SETTINGS], row[CACHED] = settings, reused
            if det.provenance is not None:
                row.update(provenance_columns(pred.provenance))
            for w in writers:
                if pred.source not in w.done:
                    w.add(row)
            if pred.error is None:
                scored += 1
                decided[pred.verdict if pred.verdict is not None else pred.is_fake] += 1
            else:
                errors += 1
            pending += 1
            if pending == batch_size:  # the batch's last row: the next batch is inferred next
                flush()
                if stop.is_set():
                    interrupted = True
                    break
    except NSNetError as e:  # the backend failed on a batch: the model, not an input, is at fault
        failure = e
    except KeyboardInterrupt:  # the second Ctrl-C
        interrupted = True
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        flush()
        if cache is not None:
            cache.close()
    return (scored, errors, decided), failure, interrupted
