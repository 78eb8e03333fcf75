"""Patch-selection speed on one core: the compiled kernel, the ONNX-graph fallback and a per-patch
reference, in the same run, as ratios.

    python -m benchmarks.preprocess [--repeat 30] [--files 24] [--json out.json]

Rows, at 512×512, 1024×768 and 2048×1536:
- ``patch_mosaic`` (entropy + selection + mosaic) with the compiled kernel, the fallback
  (``reference`` kernel: the ONNX Runtime graph) and the per-patch reference (a Python loop,
  ``np.fft.fft2`` each), with the speed-ups;
- the Detector's per-image work from a JPEG q90 file (read, decode, mosaic, normalise) with each
  kernel, and how much of it holds the GIL (what caps decode threads in one process);
- the CPU cores one 4,000 images/s GPU needs at that cost;
- the allocator's page-fault tax (``--allocator``, on by default): decode and the whole per-image
  work at 1024×768 and 4000×3000 (a 36 MB decode buffer, above glibc's 32 MB mmap-threshold cap),
  each in a fresh process with glibc's defaults, with the SDK's tuning (`nsnet_sdk.allocator.keep_freed_frames`: what
  the ``nsnet`` CLI and decode worker processes set) and with the tuning plus ``M_MMAP_MAX=0``
  (``large_frames``: what ``nsnet detect`` and its decode workers set); minor faults from
  ``resource.getrusage``; ``kernel ms``: the entropy kernel alone on the decoded images, so that
  ``rest/decode`` = (total − kernel) / decode shows the work outside the kernel.
"""
from __future__ import annotations

import os

# One core means one core: pin BLAS and OpenCV before numpy/cv2 start their pools.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from nsnet_sdk.cpuinfo import cpu_model
from nsnet_sdk.pipeline.executors import prepare_into  # noqa: E402
from nsnet_sdk.pipeline import (DEFAULT, MAX_PIXELS, kernel_name, load_image,  # noqa: E402
                                patch_entropies, patch_mosaic, select_kernel)

cv2.setNumThreads(1)
SIZES = ((512, 512), (768, 1024), (1536, 2048))  # (h, w)
GPU_RATE = 4000  # images/s of one ViT-L/14 TensorRT engine to keep fed
ALLOC_SIZES = ((768, 1024), (3000, 4000))
ALLOC_MODES = ("glibc default", "tuned", "tuned + no mmap")


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
    """Median CPU time of one call (process time: other jobs on a shared box inflate wall time)."""
    fn()  # warm caches and lazily built matrices
    times = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return statistics.median(times) * 1e3


def photo_like(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(h // 16, 2), max(w // 16, 2), 3), dtype=np.uint8)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def gil_held_ms(fn: Callable[[], object], repeat: int) -> float:
    """Median CPU time per call outside the C functions that release the GIL (OpenCV, the compiled
    kernel, ONNX Runtime's run), found with a profile hook on C calls. NumPy calls count as held
    and the hook adds its own cost, so this is an upper bound."""
    inside: list[float] = []
    start: dict[int, float] = {}

    opencv = {id(f) for f in vars(cv2).values() if callable(f)}  # its functions name no module

    def releases(fn) -> bool:
        owner = getattr(fn, "__self__", None)
        if id(fn) in opencv or isinstance(owner, types.ModuleType) and owner.__name__.endswith("_entropy"):
            return True
        return (getattr(fn, "__module__", None) or "").startswith("onnxruntime") and fn.__name__ == "run"

    def hook(frame, event, arg):
        if event == "c_call" and releases(arg):
            start[id(frame)] = time.thread_time()
        elif event in ("c_return", "c_exception") and id(frame) in start:
            inside[-1] += time.thread_time() - start.pop(id(frame))

    held = []
    for _ in range(repeat):
        inside.append(0.0)
        t = time.thread_time()
        sys.setprofile(hook)
        try:
            fn()
        finally:
            sys.setprofile(None)
        held.append(time.thread_time() - t - inside[-1])
    return statistics.median(held) * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=30, help="timed calls per row (median reported)")
    ap.add_argument("--files", type=int, default=24, help="JPEG files per size for the decode rows")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--no-allocator", dest="allocator", action="store_false",
                    help="skip the allocator page-fault rows")
    ap.add_argument("--only-allocator", action="store_true", help="only the allocator rows")
    args = ap.parse_args(argv)
    if args.only_allocator:
        with tempfile.TemporaryDirectory() as d:
            rows = allocator_rows(Path(d), max(2, args.files // 6), max(2, args.repeat // 10))
        if args.json:
            write_report(args.json, rows)
        return 0

    fast = select_kernel("auto")  # measured at first use (nsnet_sdk.pipeline.patches.measured_variant)
    try:
        from nsnet_sdk.pipeline import _entropy
        # Every compiled variant, the auto choice first: shows whether the measured choice is right.
        kernels = [fast] + [v for v in _entropy.variants() if v != fast] + ["reference"]
    except ImportError:
        kernels = ["reference"]
    rows: list[dict] = []
    print(f"patch selection on one core  ({cpu_model()}, {os.cpu_count()} cores, "
          f"numpy {np.__version__}, opencv {cv2.__version__}); CPU ms per image, median")
    print(f"{'image':>10} {'kernel':>10} {'mosaic ms':>10} {'vs reference':>13} {'vs fallback':>12}")
    for h, w in SIZES:
        rgb = photo_like(h, w, 0)
        ref_out = reference_mosaic(rgb)
        ref = per_call_ms(lambda: reference_mosaic(rgb), max(3, args.repeat // 10))
        ms = {}
        for k in kernels:
            select_kernel(k)
            assert np.array_equal(patch_mosaic(rgb), ref_out), f"{k} disagrees with the reference"
            ms[k] = per_call_ms(lambda: patch_mosaic(rgb), args.repeat)
        for k in kernels:
            row = {"stage": "patch_mosaic", "size": f"{w}x{h}", "kernel": k, "ms": ms[k], "reference_ms": ref,
                   "speedup_vs_reference": ref / ms[k], "speedup_vs_fallback": ms["reference"] / ms[k]}
            rows.append(row)
            print(f"{w:>5}x{h:<4} {k:>10} {ms[k]:>10.3f} {ref / ms[k]:>12.1f}x {ms['reference'] / ms[k]:>11.2f}x")
        print(f"{w:>5}x{h:<4} {'per-patch':>10} {ref:>10.2f}")

    print("\nDetector per-image work from a JPEG q90 file: read + decode + mosaic + normalise (1 core)")
    print(f"{'image':>10} {'kernel':>10} {'total ms':>9} {'decode ms':>10} {'kernel ms':>10} {'rest ms':>8} "
          f"{'total/decode':>13} {'GIL-held ms':>12} {'threads cap img/s':>18} {f'cores for {GPU_RATE}/s':>16}")
    out = np.empty((3, DEFAULT.size, DEFAULT.size), np.float32)
    with tempfile.TemporaryDirectory() as d:
        for h, w in SIZES:
            paths = []
            for i in range(args.files):
                p = Path(d) / f"{w}x{h}_{i}.jpg"
                cv2.imwrite(str(p), photo_like(h, w, i)[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
                paths.append(str(p))
            datas = [Path(p).read_bytes() for p in paths]  # also warms the page cache

            def decode_only() -> None:
                for data in datas:
                    cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)

            dec = per_call_ms(decode_only, 3) / len(paths)
            rgbs = [load_image(p) for p in paths]
            for k in kernels:
                select_kernel(k)
                # The entropy kernel alone, on the decoded images: "rest" (read, checks, decode
                # wrapper, selection, mosaic copy, normalise) is the per-image work minus decode and kernel.
                kern = per_call_ms(lambda: [patch_entropies(x) for x in rgbs], 3) / len(paths)

                def all_files() -> None:
                    for p in paths:
                        assert prepare_into(p, p, DEFAULT, MAX_PIXELS, out)[0] is None

                total = per_call_ms(all_files, 3) / len(paths)
                held = gil_held_ms(all_files, 3) / len(paths)
                cap = 1e3 / held if held > 0 else float("inf")
                cores = GPU_RATE * total / 1e3
                rest = total - dec - kern
                rows.append({"stage": "decode+preprocess", "size": f"{w}x{h} JPEG q90", "kernel": k, "ms": total,
                             "decode_ms": dec, "kernel_ms": kern, "rest_ms": rest, "total_over_decode": total / dec,
                             "gil_held_ms": held, "threads_cap_images_per_s": cap,
                             "cores_for_4000_per_s": cores, "images_per_s_per_core": 1e3 / total})
                print(f"{w:>5}x{h:<4} {k:>10} {total:>9.2f} {dec:>10.2f} {kern:>10.2f} {rest:>8.2f} "
                      f"{total / dec:>12.2f}x {held:>12.3f} {cap:>18.0f} {cores:>16.1f}")
        if args.allocator:
            rows += allocator_rows(Path(d), max(2, args.files // 6), max(2, args.repeat // 10))
    select_kernel(None)
    print(f"\nkernel in use: {kernel_name()}; GIL-held: CPU time outside OpenCV / kernel / ONNX Runtime calls "
          "(upper bound); threads cap = 1 / GIL-held")
    if args.json:
        write_report(args.json, rows)
    return 0


def alloc_measure(mode: str, paths: list[str], repeat: int) -> dict:
    """In this (fresh) process: allocator set per ``mode``, then per image the CPU ms (user + sys)
    and minor page faults of ``cv2.imdecode`` alone and of the Detector's whole work (median)."""
    if mode != ALLOC_MODES[0]:
        from nsnet_sdk.allocator import keep_freed_frames

        # large_frames: M_MMAP_MAX = 0, even > 32 MB from the heap (what `nsnet detect` sets)
        keep_freed_frames(large_frames=mode == ALLOC_MODES[2])
    datas = [Path(p).read_bytes() for p in paths]
    out = np.empty((3, DEFAULT.size, DEFAULT.size), np.float32)

    def cost(fn: Callable[[int], object]) -> tuple[float, float, float]:
        fn(0)  # the first call grows the heap once: not what every later image pays
        ms, sys_ms, faults = [], [], []
        for _ in range(repeat):
            for i in range(len(paths)):
                a = resource.getrusage(resource.RUSAGE_SELF)
                fn(i)
                b = resource.getrusage(resource.RUSAGE_SELF)
                ms.append((b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime) * 1e3)
                sys_ms.append((b.ru_stime - a.ru_stime) * 1e3)
                faults.append(b.ru_minflt - a.ru_minflt)
        return statistics.median(ms), statistics.median(sys_ms), statistics.median(faults)

    dec = cost(lambda i: cv2.imdecode(np.frombuffer(datas[i], np.uint8), cv2.IMREAD_COLOR))
    tot = cost(lambda i: prepare_into(paths[i], paths[i], DEFAULT, MAX_PIXELS, out))
    rgbs = [load_image(p) for p in paths]
    kern = cost(lambda i: patch_entropies(rgbs[i]))
    return {"decode_ms": dec[0], "decode_sys_ms": dec[1], "decode_faults": dec[2],
            "total_ms": tot[0], "total_sys_ms": tot[1], "total_faults": tot[2], "kernel_ms": kern[0]}


def allocator_rows(root: Path, files: int, repeat: int) -> list[dict]:
    """`alloc_measure` of every mode in its own fresh process (mallopt cannot be undone)."""
    rows = []
    print("\nallocator page-fault tax, per image on one core (each mode a fresh process; CPU ms = user + sys)")
    print(f"{'image':>10} {'allocator':>16} {'decode ms':>10} {'faults':>7} {'total ms':>9} {'faults':>7} "
          f"{'sys ms':>7} {'total/decode':>13} {'kernel ms':>10} {'rest/decode':>12}")
    for h, w in ALLOC_SIZES:
        paths = []
        for i in range(files):
            p = root / f"alloc_{w}x{h}_{i}.jpg"
            cv2.imwrite(str(p), photo_like(h, w, i)[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
            paths.append(str(p))
        for mode in ALLOC_MODES:
            code = ("import json, sys; from benchmarks.preprocess import alloc_measure; "
                    "print(json.dumps(alloc_measure(sys.argv[1], sys.argv[3:], int(sys.argv[2]))))")
            proc = subprocess.run([sys.executable, "-c", code, mode, str(repeat), *paths], capture_output=True,
                                  text=True, check=True, cwd=Path(__file__).resolve().parents[1],
                                  env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
            r = dict(json.loads(proc.stdout.strip().splitlines()[-1]), stage="allocator",
                     size=f"{w}x{h} JPEG q90", allocator=mode)
            r["total_over_decode"] = r["total_ms"] / r["decode_ms"]
            # (total − kernel) / decode: the Detector's work outside the entropy kernel, vs decode alone
            r["rest_over_decode"] = (r["total_ms"] - r["kernel_ms"]) / r["decode_ms"]
            rows.append(r)
            print(f"{w:>5}x{h:<4} {mode:>16} {r['decode_ms']:>10.2f} {r['decode_faults']:>7.0f} "
                  f"{r['total_ms']:>9.2f} {r['total_faults']:>7.0f} {r['total_sys_ms']:>7.2f} "
                  f"{r['total_over_decode']:>12.2f}x {r['kernel_ms']:>10.2f} {r['rest_over_decode']:>11.2f}x")
    return rows


def write_report(path: str, rows: list[dict]) -> None:
    """The rows as JSON, with the machine they were measured on."""
    Path(path).write_text(json.dumps({"machine": platform.platform(), "cpu_count": os.cpu_count(),
                                      "results": rows}, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
