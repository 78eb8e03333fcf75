"""Throughput of the Detector's decode stage with threads and with processes, in the same run.

    python -m benchmarks.decode_pool [--files 96] [--workers 1,2] [--batch-size 16] [--json out.json]

Files → decode → patch mosaic → normalise into shared batch buffers, with the same bounded
read-ahead the Detector uses; the model is left out, so this is the end-to-end ceiling when the
accelerator is not the bottleneck. Pool start-up (spawning worker processes) is timed separately.
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import deque  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402

from nsnet_sdk.cpuinfo import cpu_model
from nsnet_sdk.pipeline.executors import make_decoder  # noqa: E402
from nsnet_sdk.pipeline import DEFAULT, MAX_PIXELS, kernel_name  # noqa: E402
from benchmarks.preprocess import photo_like, write_report  # noqa: E402  (same photos, same report)

cv2.setNumThreads(1)


def run(paths: list[str], mode: str, workers: int, bs: int) -> dict:
    ahead = 1 + math.ceil(workers / bs)
    t0 = time.perf_counter()
    dec = make_decoder(mode, workers, DEFAULT, MAX_PIXELS, bs, 1 + ahead)
    try:
        # Start-up: the first batch through a fresh pool (spawn + imports for processes).
        handles = dec.submit_batch(paths[:bs], paths[:bs], 0)
        assert all(dec.result(h, "")[0] is None for h in handles)
        startup = time.perf_counter() - t0
        free, inflight, done = list(range(1 + ahead)), deque(), 0
        t = time.perf_counter()
        for i in range(0, len(paths), bs):
            if not free:
                oldest, handles = inflight.popleft()
                done += sum(dec.result(h, "")[0] is None for h in handles)
                free.append(oldest)
            buf = free.pop()
            inflight.append((buf, dec.submit_batch(paths[i:i + bs], paths[i:i + bs], buf)))
        while inflight:
            buf, handles = inflight.popleft()
            done += sum(dec.result(h, "")[0] is None for h in handles)
        dt = time.perf_counter() - t
    finally:
        dec.close()
    assert done == len(paths)
    return {"mode": mode, "workers": workers, "images_per_s": len(paths) / dt, "startup_s": startup}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=96)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--sizes", default="512x512,1024x768", help="WxH of the JPEG q90 files")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]
    rows = []
    print(f"decode stage, files → batch buffers ({cpu_model()}, {os.cpu_count()} cores, kernel {kernel_name()})")
    print(f"{'image':>10} {'workers':>7} {'threads img/s':>14} {'processes img/s':>16} {'ratio':>6} {'spawn s':>8}")
    with tempfile.TemporaryDirectory() as d:
        for size in args.sizes.split(","):
            w, h = (int(v) for v in size.split("x"))
            paths = []
            for i in range(args.files):
                p = Path(d) / f"{size}_{i}.jpg"
                cv2.imwrite(str(p), photo_like(h, w, i)[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
                paths.append(str(p))
            for nw in workers:
                th = run(paths, "threads", nw, args.batch_size)
                pr = run(paths, "processes", nw, args.batch_size)
                ratio = pr["images_per_s"] / th["images_per_s"]
                rows += [dict(th, size=size), dict(pr, size=size, ratio_vs_threads=ratio)]
                print(f"{size:>10} {nw:>7} {th['images_per_s']:>14.0f} {pr['images_per_s']:>16.0f} "
                      f"{ratio:>5.2f}x {pr['startup_s']:>8.2f}")
    if args.json:
        write_report(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
