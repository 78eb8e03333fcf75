"""Fixed cost and per-image rate of `nsnet batch` (in process, and on a local Ray it starts) beside
the in-process `Detector` on the same model, images and machine, in one run.

    python -m benchmarks.batch_cost --model nsnet.onnx [--images DIR | --synthetic N [--size 512]]
        [--workers 2] [--batch-size 32] [--repeat 2] [--skip-ray] [--json out.json]

Engines: the Detector; `run_batch` in process, decoding in worker processes (the default, which a
native decoder crash cannot take down) and in threads (``batch_in_process_threads``), so the cost of
that isolation is measured too; `run_batch` on a local Ray.

Each engine scores every image from a cold start (a new Detector; a new output folder; for Ray a
new local Ray), ``--repeat`` rounds with the engines interleaved, the best figure of each kept.
Per-image rate = the images after the first batch ÷ the time after it; fixed cost = the time to
the first batch's results less that batch at the steady rate (model load, Ray start and actors,
listing, the first read).
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
from typing import Any, Callable

from benchmarks._machine import library_versions, machine
from nsnet_sdk.constants import DEFAULT_BATCH_SIZE
from benchmarks.throughput import BenchError, image_files, synthetic_files


Run = Callable[[list[str], Callable[[int], None]], None]  # files, on_results(count)


def _detector(model: str, batch_size: int) -> Run:
    def run(files: list[str], seen: Callable[[int], None]) -> None:
        from nsnet_sdk import Detector, InputOptions

        with Detector(model, options=InputOptions(batch_size=batch_size)) as det:
            for _ in det.predict_iter(files, on_error="record"):
                seen(1)
    return run


def _batch(model: str, batch_size: int, work: Path, use_ray: bool, workers: int,
           decode: str = "processes") -> Run:
    def run(files: list[str], seen: Callable[[int], None]) -> None:
        from nsnet_sdk.batch import run_batch

        out = Path(tempfile.mkdtemp(prefix="out-", dir=work))
        listing = out.with_suffix(".txt")
        listing.write_text("\n".join(files) + "\n")
        run_batch([str(listing)], model, out, use_ray=use_ray, workers=workers,
                  batch_size=batch_size, decode=decode, on_rows=lambda rows: seen(len(rows)))
        shutil.rmtree(out)
    return run


def cost(run: Run, files: list[str], batch_size: int) -> dict[str, float]:
    """One cold run: fixed cost = time to the first results less their share at the steady rate;
    per-image rate = the images after the first group ÷ the time after it."""
    start = time.perf_counter()
    marks: list[tuple[float, int]] = []
    total = 0

    def seen(n: int) -> None:
        nonlocal total
        total += n
        if not marks or total >= batch_size and len(marks) == 1:
            marks.append((time.perf_counter(), total))  # first result; end of the first group

    run(files, seen)
    end = time.perf_counter()
    t_first, n_first = marks[-1]
    rate = (len(files) - n_first) / max(end - t_first, 1e-9)
    return {"seconds": round(end - start, 2), "images_per_s": round(rate, 1),
            "fixed_s": round(t_first - start - n_first / rate, 2)}


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    return {"seconds": min(r["seconds"] for r in runs),
            "images_per_s": max(r["images_per_s"] for r in runs),
            "fixed_s": min(r["fixed_s"] for r in runs)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", type=Path, help="folder of images (recursive)")
    src.add_argument("--synthetic", type=int, default=200, help="N synthetic JPEGs (200)")
    p.add_argument("--size", type=int, default=512, help="synthetic image side (512)")
    p.add_argument("--workers", type=int, default=2, help="Ray actors (2)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--repeat", type=int, default=2,
                   help="rounds, engines interleaved; the best time of each run counts (2)")
    p.add_argument("--skip-ray", action="store_true", help="measure without the Ray engine")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="nsnet-batch-cost-") as tmp:
            work = Path(tmp)
            files = (image_files(args.images) if args.images
                     else synthetic_files(args.synthetic, args.size, work / "imgs"))
            if len(files) <= 2 * args.batch_size:
                raise BenchError(f"need more than 2 batches of images, got {len(files)}")
            # in process: decode isolation (worker processes, the default) against threads: its cost
            engines = {"detector": _detector(args.model, args.batch_size),
                       "batch_in_process": _batch(args.model, args.batch_size, work, False, 1),
                       "batch_in_process_threads": _batch(args.model, args.batch_size, work, False, 1,
                                                          "threads")}
            if not args.skip_ray:
                engines["batch_ray"] = _batch(args.model, args.batch_size, work, True, args.workers)
            runs: dict[str, list] = {name: [] for name in engines}
            for _ in range(max(1, args.repeat)):  # interleaved, so load drifts hit every engine
                for name, run in engines.items():
                    runs[name].append(cost(run, files, args.batch_size))
            results = {name: best(r) for name, r in runs.items()}
    except BenchError as e:
        print(f"batch_cost: {e}", file=sys.stderr)
        return 2
    base = results["detector"]
    for name, r in results.items():
        r["rate_ratio_to_detector"] = round(r["images_per_s"] / base["images_per_s"], 2)
        r["fixed_minus_detector_s"] = round(r["fixed_s"] - base["fixed_s"], 2)
    report: dict[str, Any] = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
        "libraries": library_versions(), "images": len(files),
        "workers": args.workers, "batch_size": args.batch_size, "repeat": args.repeat,
        "results": results}
    print(f"{'engine':26} {'fixed s':>8} {'img/s':>8} {'rate ×det':>10} {'total s':>8}")
    for name, r in results.items():
        print(f"{name:26} {r['fixed_s']:8.2f} {r['images_per_s']:8.1f} "
              f"{r['rate_ratio_to_detector']:10.2f} {r['seconds']:8.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
