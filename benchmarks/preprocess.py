"""Patch-selection speed on one core, against a straightforward per-patch reference in the same run.

    python benchmarks/preprocess.py [--repeat 30] [--json out.json]

Rows: ``patch_mosaic`` at 512×512 and 2048×1536 next to the reference (a Python loop over patches,
``np.fft.fft2`` each), with the ratio; then the full ``load_image`` + ``preprocess`` rate on JPEG files.
"""
from __future__ import annotations

import os

# One core means one core: pin BLAS and OpenCV before numpy/cv2 start their pools.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from nsnet_sdk.preprocess import DEFAULT, load_image, patch_mosaic, preprocess  # noqa: E402

cv2.setNumThreads(1)


def reference_mosaic(rgb: np.ndarray, p: int = 32, grid: int = 7) -> np.ndarray:
    """The definition written plainly: one FFT per patch in a Python loop."""
    h, w = rgb.shape[:2]
    x = np.pad(rgb, ((0, max(0, p - h)), (0, max(0, p - w)), (0, 0)), mode="symmetric")
    nr, nc = x.shape[0] // p, x.shape[1] // p
    scores = []
    for r in range(nr):
        for c in range(nc):
            g = x[r * p : (r + 1) * p, c * p : (c + 1) * p].astype(np.float64).mean(axis=2)
            a = np.abs(np.fft.fft2(g))
            s = a.sum()
            q = a[a > 0] / s if s > 0 else np.zeros(0)
            scores.append(float(-(q * np.log(q)).sum()))
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    k = grid * grid
    idx = order[: (k + 1) // 2] + order[::-1][: k // 2] if len(order) >= k else [order[i % len(order)] for i in range(k)]
    out = np.empty((p * grid, p * grid, 3), np.uint8)
    for slot, i in enumerate(idx):
        r, c = divmod(i, nc)
        out[(slot // grid) * p : (slot // grid + 1) * p, (slot % grid) * p : (slot % grid + 1) * p] = x[
            r * p : (r + 1) * p, c * p : (c + 1) * p
        ]
    return out


def per_call_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm caches and lazily built matrices
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def photo_like(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(h // 16, 2), max(w // 16, 2), 3), dtype=np.uint8)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=30, help="timed calls per row (median reported)")
    ap.add_argument("--files", type=int, default=64, help="JPEG files for the load+preprocess row")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)

    rows = []
    print(f"patch selection on one core  ({platform.processor() or platform.machine()}, numpy {np.__version__}, "
          f"opencv {cv2.__version__})")
    print(f"{'image':>11} {'patch_mosaic ms':>16} {'reference ms':>13} {'speed-up':>9} {'images/s':>9}")
    for h, w in ((512, 512), (1536, 2048)):
        rgb = photo_like(h, w, 0)
        assert np.array_equal(patch_mosaic(rgb), reference_mosaic(rgb)), "fast path disagrees with reference"
        ours = per_call_ms(lambda: patch_mosaic(rgb), args.repeat)
        ref = per_call_ms(lambda: reference_mosaic(rgb), max(3, args.repeat // 10))
        rows.append({"stage": "patch_mosaic", "size": f"{w}x{h}", "ms": ours, "reference_ms": ref,
                     "speedup": ref / ours, "images_per_s": 1e3 / ours})
        print(f"{w:>5}x{h:<5} {ours:>16.3f} {ref:>13.2f} {ref / ours:>8.1f}x {1e3 / ours:>9.0f}")

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        paths = []
        for i in range(args.files):
            p = Path(d) / f"{i}.jpg"
            cv2.imwrite(str(p), photo_like(768, 1024, i)[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
            paths.append(p)
        for p in paths:  # page cache warm, so the row measures decode + preprocess, not the disk
            p.read_bytes()
        t = time.perf_counter()
        for p in paths:
            preprocess(load_image(p), DEFAULT)
        dt = time.perf_counter() - t
    rows.append({"stage": "load_image+preprocess", "size": "1024x768 JPEG q90", "ms": dt / len(paths) * 1e3,
                 "images_per_s": len(paths) / dt})
    print(f"load_image + preprocess, 1024x768 JPEG q90: {dt / len(paths) * 1e3:.2f} ms/image, "
          f"{len(paths) / dt:.0f} images/s on one core")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": platform.platform(), "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
