"""``nsnet batch``: its parser and command (the work is `nsnet_sdk.batch`)."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from ..batch import DECODE, SMALL_JOB, BatchSummary, run_batch
from ..batch_ray import ADDRESS_FORMS
from ..constants import DEFAULT_BATCH_SIZE
from ..errors import NSNetError
from ..pipeline.config import MAX_PIXELS
from ..pipeline.executors import DECODE_MODES
from .args import add_provenance_options, plural, positive_int, probability, progress_bar, provenance_option


def add_parser(subparsers: Any) -> None:
    """Register ``nsnet batch`` (Ray is imported only when it runs)."""
    b = subparsers.add_parser(
        "batch", help="score many images (in process, or on a Ray cluster), Parquet output",
        description="Score folders (recursive), globs, URI prefixes (s3://bucket/prefix/) or "
        "text/Parquet listings of paths or URIs, writing one Parquet row per input, keyed as "
        "listed, under --out. A job of fewer than %d inputs without --address runs in this "
        "process; a larger one on Ray actors. Object-store credentials and endpoint come from "
        "the standard environment (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, AWS_PROFILE, ...). "
        "Needs the [ray] extra." % SMALL_JOB)
    b.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="folders, globs, files, URIs (a URI ending with / is a prefix), or "
                   ".txt/.lst/.csv/.parquet listings of paths/URIs")
    b.add_argument("--model", "-m", required=True, help="model artifact (.onnx, .engine: sent to "
                   "the workers by Ray; a run dir must be at the same path on every node)")
    b.add_argument("--out", required=True, metavar="DIR", help="folder for the Parquet files")
    b.add_argument("--address", help="Ray cluster: " + ADDRESS_FORMS + " (default: RAY_ADDRESS, "
                   "else a local Ray started for the job, and stopped with it)")
    b.add_argument("--ray", action="store_true",
                   help="use Ray even for a small job (default: only from %d inputs, or with "
                   "--address)" % SMALL_JOB)
    b.add_argument("--workers", type=positive_int, default=1, help="scoring actors (1)")
    b.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G",
                   help="GPUs per actor (0 = CPU actors)")
    b.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                   help=f"images per batch ({DEFAULT_BATCH_SIZE})")
    b.add_argument("--max-pixels", type=positive_int, default=MAX_PIXELS, metavar="N",
                   help=f"refuse images declaring more than N pixels ({MAX_PIXELS:,})")
    b.add_argument("--decode", choices=DECODE_MODES, default=DECODE,
                   help="a job run in this process decodes in worker processes (default: a decoder "
                   "that crashes on a file costs that file's row only) or in threads (no processes "
                   "to start; a crash ends the job). Ray actors always decode in a worker process "
                   "of their own: a crash costs its input's row")
    add_provenance_options(b, "; read here and sent to the workers")
    b.add_argument("--threshold", type=probability, help="decision threshold (default: the model's)")
    b.add_argument("--resume", action="store_true",
                   help="skip inputs already in --out (continue a stopped job)")
    talk = b.add_mutually_exclusive_group()
    talk.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    talk.add_argument("--verbose", "-v", action="store_true",
                      help="let Ray and the image libraries print their own messages")
    b.set_defaults(run=cmd_batch)


def cmd_batch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``nsnet batch``; exit 0 when every input has a row, 1 when the job failed, 2 on usage."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        parser.error("nsnet batch needs Ray: pip install 'nsnet-sdk[ray]'")
    if args.gpus_per_worker < 0:
        parser.error("--gpus-per-worker must be >= 0")
    provenance = provenance_option(args, parser)

    bar = None

    def start(s: BatchSummary) -> None:
        nonlocal bar
        for w in s.warnings:
            print(f"nsnet: warning: {w}", file=sys.stderr)
        # the listing is read as the job goes: the total is known up front only for a small job
        todo = s.inputs - s.skipped
        bar = progress_bar(todo if todo < SMALL_JOB else None, args.quiet)

    from ..quiet import native_stderr_to_logging, quiet_libraries

    quiet_libraries(verbose=args.verbose)
    # Ray's start-up notices and its native log lines (core_worker ... E) are about the machinery,
    # not the inputs: logged, not printed, unless --verbose. A failure still ends in one message.
    ray_init = None if args.verbose else {"logging_level": logging.ERROR}
    with native_stderr_to_logging(enabled=not args.verbose):
        try:
            summary = run_batch(args.inputs, args.model, args.out, address=args.address,
                                workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                                batch_size=args.batch_size, resume=args.resume, threshold=args.threshold,
                                threads_per_worker=None if args.gpus_per_worker else 1, ray_init=ray_init,
                                on_start=start, use_ray=True if args.ray else None, max_pixels=args.max_pixels,
                                decode=args.decode, provenance=provenance,
                                on_rows=lambda rows: bar.update(len(rows)) if bar is not None else None)
        except FileExistsError as e:
            parser.error(str(e))
        except (NSNetError, OSError) as e:
            print(f"nsnet: error: {e}", file=sys.stderr)
            return 1
        except Exception as e:  # a Ray failure (cluster unreachable, actors unable to load the model)
            print(f"nsnet: error: batch job failed: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        finally:
            if bar is not None:
                bar.close()
    if not args.quiet:
        print(format_summary(summary, args.out), file=sys.stderr)
    return 0


def format_summary(s: BatchSummary, out: str) -> str:
    """The final summary: images, errors, images/s overall and per worker."""
    lines = [f"nsnet: {plural(s.inputs, 'input')} ({s.engine}): {s.scored} scored, {plural(s.errors, 'error')}, "
             f"{s.skipped} already done; {s.images_per_s:.1f} images/s over {s.seconds:.1f}s; "
             f"{plural(s.files, 'Parquet file')} written to {out}"]
    for w, (n, busy) in sorted(s.per_worker.items()):
        lines.append(f"  worker {w}: {plural(n, 'image')}, {n / busy if busy > 0 else 0:.1f} images/s busy")
    return "\n".join(lines)
