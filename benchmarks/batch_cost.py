"""Fixed cost and per-image rate of `nsnet batch` (in process, and on a local Ray it starts) beside
the in-process `Detector` on the same model, images and machine, in one run.

    python -m benchmarks.batch_cost --model nsnet.onnx [--images DIR | --synthetic N [--size 512]]
        [--small 40] [--workers 2] [--batch-size 32] [--skip-ray] [--json out.json]

Each engine scores the first ``--small`` images and then all of them, each time from a cold start
(a new Detector; a new output folder; for Ray a new local Ray). From the two wall times,
per-image rate = extra images ÷ extra seconds, and fixed cost = the small run's time less its
images at that rate (model load, Ray start, listing, the last part written).
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

from benchmarks.throughput import BenchError, image_files, library_versions, machine, synthetic_files


def _detector(model: str, batch_size: int) -> Callable[[list[str]], None]:
    def run(files: list[str]) -> None:
        from nsnet_sdk import Detector

        with Detector(model, batch_size=batch_size) as det:
            for _ in det.predict_iter(files, on_error="record"):
                pass
    return run


def _batch(model: str, batch_size: int, work: Path, use_ray: bool,
           workers: int) -> Callable[[list[str]], None]:
    def run(files: list[str]) -> None:
        from nsnet_sdk.batch import run_batch

        out = Path(tempfile.mkdtemp(prefix="out-", dir=work))
        listing = out.with_suffix(".txt")
        listing.write_text("\n".join(files) + "\n")
        run_batch([str(listing)], model, out, use_ray=use_ray, workers=workers,
                  batch_size=batch_size)
        shutil.rmtree(out)
    return run


def cost(run: Callable[[list[str]], None], files: list[str], small: int) -> dict[str, float]:
    """Wall times on ``small`` and on all ``files``; per-image rate and fixed cost from them."""
    times = []
    for n in (small, len(files)):
        start = time.perf_counter()
        run(files[:n])
        times.append(time.perf_counter() - start)
    rate = (len(files) - small) / max(times[1] - times[0], 1e-9)
    return {"seconds_small": round(times[0], 2), "seconds_all": round(times[1], 2),
            "images_per_s": round(rate, 1), "fixed_s": round(times[0] - small / rate, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", type=Path, help="folder of images (recursive)")
    src.add_argument("--synthetic", type=int, default=200, help="N synthetic JPEGs (200)")
    p.add_argument("--size", type=int, default=512, help="synthetic image side (512)")
    p.add_argument("--small", type=int, default=40, help="images in the small run (40)")
    p.add_argument("--workers", type=int, default=2, help="Ray actors (2)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--skip-ray", action="store_true", help="measure without the Ray engine")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="nsnet-batch-cost-") as tmp:
            work = Path(tmp)
            files = (image_files(args.images) if args.images
                     else synthetic_files(args.synthetic, args.size, work / "imgs"))
            if len(files) <= args.small:
                raise BenchError(f"need more than --small {args.small} images, got {len(files)}")
            engines = {"detector": _detector(args.model, args.batch_size),
                       "batch_in_process": _batch(args.model, args.batch_size, work, False, 1)}
            if not args.skip_ray:
                engines["batch_ray"] = _batch(args.model, args.batch_size, work, True, args.workers)
            results = {name: cost(run, files, args.small) for name, run in engines.items()}
    except BenchError as e:
        print(f"batch_cost: {e}", file=sys.stderr)
        return 2
    base = results["detector"]
    for name, r in results.items():
        r["rate_ratio_to_detector"] = round(r["images_per_s"] / base["images_per_s"], 2)
        r["fixed_minus_detector_s"] = round(r["fixed_s"] - base["fixed_s"], 2)
    report: dict[str, Any] = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
        "libraries": library_versions(), "images": len(files), "small": args.small,
        "workers": args.workers, "batch_size": args.batch_size, "results": results}
    print(f"{'engine':18} {'fixed s':>8} {'img/s':>8} {'rate ×det':>10} {'small s':>8} {'all s':>8}")
    for name, r in results.items():
        print(f"{name:18} {r['fixed_s']:8.2f} {r['images_per_s']:8.1f} "
              f"{r['rate_ratio_to_detector']:10.2f} {r['seconds_small']:8.2f} {r['seconds_all']:8.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
