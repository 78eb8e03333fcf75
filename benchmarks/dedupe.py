"""What scoring each distinct file once saves: a folder where half the files repeat others, scored
with every file decoded (`Detector.predict_iter`) and with each distinct file once
(`nsnet_sdk.cache.score_once`, what `nsnet detect` does), and the cost of a `--cache` hit, in one run.

    python -m benchmarks.dedupe --model nsnet.onnx [--files 200] [--size 512] [--repeat 3] [--json out.json]

Both scorers read every file (dedupe hashes each one); the ratio is wall time, best of ``--repeat``
rounds with the two interleaved. A cache hit is timed over a second pass whose every file is in
the SQLite cache.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks._machine import library_versions, machine
from benchmarks.throughput import synthetic_files


def repeated_folder(n: int, size: int, root: Path) -> list[str]:
    """``n`` files, half of them byte-identical copies of the other half."""
    unique = synthetic_files(max(1, n // 2), size, root / "unique")
    files = []
    for i in range(n):
        src = Path(unique[i % len(unique)])
        dst = root / "all" / f"{i:05d}{src.suffix}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        files.append(str(dst))
    return files


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict:
    from nsnet_sdk import Detector
    from nsnet_sdk.cache import ResultCache, score_once

    work = Path(tempfile.mkdtemp(prefix="nsnet-dedupe-"))
    try:
        files = repeated_folder(args.files, args.size, work)
        with Detector(args.model) as det:
            every = lambda: sum(1 for _ in det.predict_iter(files, on_error="record"))  # noqa: E731
            once = lambda: sum(1 for _ in score_once(det, files))  # noqa: E731
            every()  # warm-up: sessions, page cache
            t_every = min(_timed(every) for _ in range(args.repeat))
            t_once = min(_timed(once) for _ in range(args.repeat))
            with ResultCache(work / "cache.sqlite", model_sha256="bench", options={}) as cache:
                for _ in score_once(det, files, cache):  # fills the cache
                    pass
                t_hit = min(_timed(lambda: sum(1 for _ in score_once(det, files, cache)))
                            for _ in range(args.repeat))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
            "libraries": library_versions(), "files": len(files), "distinct": len(files) // 2 or 1,
            "size": args.size, "every_file_s": t_every, "each_distinct_once_s": t_once,
            "ratio": t_once / t_every, "cache_hit_ms": 1e3 * t_hit / len(files)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dedupe", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model artifact (.onnx, .engine, run dir)")
    p.add_argument("--files", type=int, default=200, help="files in the folder, half of them repeats (200)")
    p.add_argument("--size", type=int, default=512, help="synthetic image side (512)")
    p.add_argument("--repeat", type=int, default=3, help="rounds; the best time of each counts (3)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    result = run(args)
    print(f"{result['files']} files ({result['distinct']} distinct, {args.size}px, {result['machine']['cpu']}): "
          f"every file {result['every_file_s']:.3f} s, each distinct file once {result['each_distinct_once_s']:.3f} s "
          f"({result['ratio']:.2f}x); a cache hit {result['cache_hit_ms']:.3f} ms per file", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
