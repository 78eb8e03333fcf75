"""Per-image cost of `nsnet detect --provenance` and of `Detector.explain`, as ratios against plain
scoring measured in the same run on the same files.

    python -m benchmarks.beyond_score [--model M.onnx] [--files 32] [--size 512] [--json OUT]

Rows (median ms per image over ``--repeat`` rounds):
- ``provenance only``: `read_provenance` of plain JPEGs, of PNGs with generator text, of
  C2PA-signed JPEGs (validated with c2pa-python; skipped when it is not installed);
- ``detect`` vs ``detect --provenance``: `Detector.predict` over the JPEGs (batch 32, inline
  decoding) without and with ``provenance=True``, and the same over the C2PA-signed files;
- ``predict 1 image`` vs ``explain 1 image``: one image scored alone, and one explanation (a batch
  of 50 mosaics).
Without ``--model`` an nsnet-tiny model with random weights is trained for 0 epochs and exported
(seconds); pass a real export for figures that reflect its forward-pass cost.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from nsnet_sdk import BackendOptions, Detector, InputOptions
from nsnet_sdk.provenance import read_provenance

from benchmarks.provenance_samples import make_chain, sign_jpeg


def median_ms(fn: Callable[[], object], repeat: int, per: int = 1) -> float:
    fn()  # warm-up: sessions, caches, lazy imports
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times) / per


def photo_like(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 120 + 60 * np.sin(x / 23.0 + seed) * np.cos(y / 31.0)
    img = base[..., None] + rng.normal(0, 12, (h, w, 3)) + rng.integers(-40, 40, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_files(root: Path, n: int, size: int) -> dict[str, list[Path]]:
    import cv2

    out: dict[str, list[Path]] = {"jpeg": [], "png_text": [], "c2pa": []}
    for i in range(n):
        rgb = photo_like(size, size, i)
        p = root / f"plain_{i:03d}.jpg"
        cv2.imwrite(str(p), rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        out["jpeg"].append(p)
        ok, png = cv2.imencode(".png", rgb[..., ::-1])
        q = root / f"gen_{i:03d}.png"
        text = b"parameters\x00a photo of a cat\nSteps: 30, Sampler: DPM++ 2M, CFG scale: 7"
        import struct
        import zlib

        chunk = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", zlib.crc32(b"tEXt" + text))
        q.write_bytes(png.tobytes()[:33] + chunk + png.tobytes()[33:])
        out["png_text"].append(q)
    try:
        chain, key, _ = make_chain(root)
        for i, p in enumerate(out["jpeg"]):
            s = root / f"signed_{i:03d}.jpg"
            s.write_bytes(sign_jpeg(p.read_bytes(), chain, key))
            out["c2pa"].append(s)
    except Exception as e:  # c2pa-python or cryptography missing: those rows are skipped
        print(f"(no C2PA rows: {type(e).__name__}: {e})", file=sys.stderr)
    return out


def tiny_model(root: Path) -> Path:
    from export.to_onnx import export_onnx
    from training.train import main as train_main

    run = root / "run"
    train_main(["--data", str(root / "no-data"), "--out", str(run), "--backbone", "nsnet-tiny",
                "--pretrained", "none", "--epochs", "0", "--templates", "1", "--quiet"])
    return Path(export_onnx(run, root / "nsnet-tiny.onnx"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="an .onnx / .engine / run directory (default: nsnet-tiny, random weights)")
    ap.add_argument("--files", type=int, default=32, help="images per set (32)")
    ap.add_argument("--size", type=int, default=512, help="image side in pixels (512)")
    ap.add_argument("--repeat", type=int, default=5, help="timed rounds per row; the median is reported")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="nsnet-beyond-") as tmp:
        root = Path(tmp)
        model = Path(args.model) if args.model else tiny_model(root)
        files = write_files(root, args.files, args.size)
        n = args.files
        rows: list[tuple[str, float, str]] = []

        def add(name: str, ms: float, baseline: float | None = None) -> None:
            rows.append((name, ms, "" if baseline is None else f"{ms / baseline:.2f}×"))

        for kind in ("jpeg", "png_text", "c2pa"):
            if files[kind]:
                add(f"provenance only, {kind}", median_ms(lambda: [read_provenance(p) for p in files[kind]], args.repeat, n))
        backend = BackendOptions(intra_op_threads=args.threads)
        with Detector(model, backend=backend, options=InputOptions(workers=0, batch_size=32)) as det, \
                Detector(model, backend=backend, options=InputOptions(workers=0, batch_size=32, provenance=True)) as det_p:
            for kind in ("jpeg", "c2pa"):
                if not files[kind]:
                    continue
                paths = [str(p) for p in files[kind]]
                base = median_ms(lambda: det.predict(paths), args.repeat, n)
                add(f"detect, {kind}", base)
                add(f"detect --provenance, {kind}", median_ms(lambda: det_p.predict(paths), args.repeat, n), base)
            one = str(files["jpeg"][0])
            base = median_ms(lambda: det.predict(one), args.repeat * 4)
            add("predict 1 image", base)
            add("explain 1 image (50 mosaics, one batch)", median_ms(lambda: det.explain(one), args.repeat), base)
            backend = f"{det.backend.name} on {det.backend.device}"

    print(f"model {model.name} ({backend}), {n} files of {args.size}×{args.size} per set, median of {args.repeat}")
    print(f"{'row':48s} {'ms/image':>10s} {'ratio':>8s}")
    for name, ms, ratio in rows:
        print(f"{name:48s} {ms:10.2f} {ratio:>8s}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(model), "backend": backend, "files": n,
                                               "size": args.size, "rows": [
                                                   {"row": a, "ms_per_image": b, "ratio": c} for a, b, c in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
