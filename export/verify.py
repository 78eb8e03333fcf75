"""Parity report: the same inputs through PyTorch, ONNX FP32/FP16(/INT8) and a TensorRT engine.

    python export/verify.py --ckpt RUN_DIR --onnx nsnet.onnx [--onnx-fp16 nsnet.fp16.onnx]
                            [--onnx-int8 nsnet.int8.onnx] [--engine nsnet.engine]
                            [--images DIR | --synthetic N] [--json report.json]

The reference is the unfolded PyTorch ``NSNet`` of the run directory. Inputs are real images
(``--images``) or synthetic ones (``--synthetic N``, seeded), both through nsnet_sdk.preprocess
with the checkpoint's PatchConfig. Bounds by the artifact's precision (ONNX metadata, engine
sidecar): FP32 max |Δlogit| ≤ 1e-4; FP16 (ONNX or engine) max |Δprob| ≤ 5e-3 and ≥ 99.9 % decision
agreement; INT8 reported only.

Exit codes: 0 every artifact within bounds, 1 any past its bounds, crashed or unreadable (a damaged
model file is a failed row), 2 usage error, a missing/corrupt checkpoint, a missing model file, or an
image directory that is missing or holds no readable image.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from export.to_onnx import CheckpointError, Parity, compare, load_run, read_metadata, reference_logits


def synthetic_images(n: int, cfg, seed: int = 0) -> np.ndarray:
    """(n,3,S,S) inputs from seeded random images of varied size and texture, preprocessed."""
    from nsnet_sdk.preprocess import preprocess_batch

    rng = np.random.default_rng(seed)
    imgs = []
    for i in range(n):
        h, w = int(rng.integers(240, 400)), int(rng.integers(240, 400))
        # Smooth gradient + noise of random strength: patches of both low and high entropy.
        yy, xx = np.mgrid[0:h, 0:w]
        base = (np.stack([xx / w, yy / h, (xx + yy) / (w + h)], -1) * 255 * rng.uniform(0.2, 1.0))
        noise = rng.normal(0, rng.uniform(2, 60), (h, w, 3)) * (xx[..., None] > w * rng.uniform(0.2, 0.8))
        imgs.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return preprocess_batch(imgs, cfg)


def image_dir_inputs(root: Path, cfg) -> tuple[np.ndarray, list[str], list[str]]:
    """Preprocessed images of ``root`` (recursive): (batch, sources, errors). Bad files are skipped."""
    from nsnet_sdk.preprocess import iter_image_paths
    from nsnet_sdk.errors import NSNetError
    from nsnet_sdk.preprocess import load_image, preprocess

    files, _ = iter_image_paths([str(root)], recursive=True)  # what `nsnet detect --recursive` scores
    batch, sources, errors = [], [], []
    for f in files:
        try:
            batch.append(preprocess(load_image(f), cfg))
            sources.append(str(f))
        except NSNetError as e:
            errors.append(f"{f}: {type(e).__name__}: {e}")
    arr = np.stack(batch) if batch else np.zeros((0, 3, cfg.size, cfg.size), np.float32)
    return arr, sources, errors


def _row(name: str, path: str, parity: Parity | None, error: str | None = None) -> dict:
    row = {"name": name, "path": path}
    if parity is not None:
        row.update(asdict(parity), passes=parity.passes())
    else:
        row.update(precision=None, passes=False, error=error)
    return row


def _check_file(name: str, path: Path, want: str | None, images: np.ndarray, ref: np.ndarray,
                threshold: float, sha: str) -> dict:
    """Run one ONNX file and compare; precision (so the bound) from its metadata."""
    from export import ort_run

    try:
        meta = read_metadata(path)
    except Exception as e:  # onnx raises DecodeError/OSError/... for a damaged file
        return _row(name, str(path), None, f"cannot read {path}: {type(e).__name__}: {e}")
    precision = meta.get("nsnet.precision", want or "fp32")
    # Isolated when either the file or the flag it came under says FP16: an FP16 graph that ONNX
    # Runtime crashes on must end as a failed row, never take this process down.
    runner = ort_run.run_isolated if "fp16" in (precision, want) else ort_run.run
    try:
        logit, prob = runner(path, images, precision)
    except Exception as e:  # OrtCrashError, or ORT refusing the graph
        return _row(name, str(path), None, f"{type(e).__name__}: {e}")
    row = _row(name, str(path), compare(precision, ref, logit, prob, threshold))
    if meta.get("nsnet.source_sha256") not in (None, sha):
        row["warning"] = "nsnet.source_sha256 differs from this checkpoint's weights"
    return row


def _check_engine(path: Path, images: np.ndarray, ref: np.ndarray, threshold: float) -> dict:
    """Run an engine and compare; precision (so the bound) from its sidecar, as built by to_trt.py."""
    from export.to_trt import TrtUnavailableError, run_engine
    from nsnet_sdk.artifact import read_sidecar

    try:
        logit, prob = run_engine(path, images)
        precision = read_sidecar(path).get("nsnet.precision", "fp16")
    except TrtUnavailableError as e:
        return _row("tensorrt", str(path), None, str(e))
    except Exception as e:  # TensorRT/CUDA runtime errors are untyped
        return _row("tensorrt", str(path), None, f"{type(e).__name__}: {e}")
    return _row("tensorrt", str(path), compare(precision, ref, logit, prob, threshold))


def _print_table(rows: list[dict], n: int, source: str) -> None:
    print(f"parity against PyTorch (unfolded NSNet), {n} inputs from {source}")
    print(f"{'artifact':<12} {'prec':<5} {'max|Δlogit|':>12} {'max|Δprob|':>11} {'agree':>8} {'corr':>8}  result")
    for r in rows:
        if r.get("error"):
            print(f"{r['name']:<12} {'-':<5} {'-':>12} {'-':>11} {'-':>8} {'-':>8}  FAIL  {r['error']}")
            continue
        print(f"{r['name']:<12} {r['precision']:<5} {r['max_abs_logit']:>12.3g} {r['max_abs_prob']:>11.3g} "
              f"{100 * r['agreement']:>7.2f}% {r['logit_corr']:>8.5f}  {'ok' if r['passes'] else 'FAIL'}"
              + (f"  ({r['warning']})" if r.get("warning") else ""))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python export/verify.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="run directory (the reference)")
    p.add_argument("--onnx", help="FP32 (or optimised FP32) ONNX model")
    p.add_argument("--onnx-fp16", help="FP16 ONNX model (run in a child process)")
    p.add_argument("--onnx-int8", help="INT8 ONNX model (reported, not bounded)")
    p.add_argument("--engine", help="TensorRT engine (needs tensorrt and a CUDA device)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", help="directory of images (searched recursively)")
    src.add_argument("--synthetic", type=int, default=None, metavar="N", help="N synthetic images (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args(argv)
    if not (args.onnx or args.onnx_fp16 or args.onnx_int8 or args.engine):
        p.error("give at least one of --onnx, --onnx-fp16, --onnx-int8, --engine")
    if args.synthetic is not None and args.synthetic < 1:
        p.error("--synthetic needs N >= 1")
    for flag in ("onnx", "onnx_fp16", "onnx_int8", "engine"):
        path = getattr(args, flag)
        if path and not Path(path).is_file():
            p.error(f"--{flag.replace('_', '-')}: file not found: {path}")

    if not Path(args.ckpt).is_dir():
        print(f"error: checkpoint directory not found: {args.ckpt}", file=sys.stderr)
        return 2

    from nsnet_sdk.preprocess import PatchConfig

    try:
        model, meta = load_run(args.ckpt)
        cfg = PatchConfig.from_dict(meta["preprocess"])
    except (CheckpointError, KeyError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    threshold = float(meta.get("threshold", 0.5))

    if args.images:
        root = Path(args.images)
        if not root.is_dir():
            p.error(f"--images: not a directory: {root}")
        images, _, errors = image_dir_inputs(root, cfg)
        for e in errors:
            print(f"skipped {e}", file=sys.stderr)
        if len(images) == 0:
            print(f"error: no readable images under {root}", file=sys.stderr)
            return 2
        source = str(root)
    else:
        n = args.synthetic or 32
        images, source = synthetic_images(n, cfg, args.seed), f"synthetic (seed {args.seed})"

    ref = reference_logits(model, images)
    sha = meta["source_sha256"]
    rows = []
    for name, flag, want in (("onnx", args.onnx, "fp32"), ("onnx-fp16", args.onnx_fp16, "fp16"),
                             ("onnx-int8", args.onnx_int8, "int8")):
        if flag:
            rows.append(_check_file(name, Path(flag), want, images, ref, threshold, sha))
    if args.engine:
        rows.append(_check_engine(Path(args.engine), images, ref, threshold))

    _print_table(rows, len(images), source)
    if args.json:
        Path(args.json).write_text(json.dumps({"n": int(len(images)), "source": source, "rows": rows}, indent=2))
    return 0 if all(r["passes"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
