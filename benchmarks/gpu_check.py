"""`make gpu-check`: the NVIDIA path proved in one command on the machine at hand.

    python -m benchmarks.gpu_check [--device cuda|cpu] [--backbone ViT-L-14] [--batch-sizes 1,2,...,128]
        [--images 64] [--size 1024] [--iters 5] [--out benchmarks/results] [--no-tests]

1. runs every ``gpu``-marked test (pytest ``-m gpu``; skipped ones are listed with their reason);
2. benchmarks a random-weight ``--backbone`` with the PyTorch backend (FP16 + CUDA graphs on CUDA,
   FP32 on the CPU) at each batch size, CPU against GPU input pipeline, end-to-end against
   model-only (benchmarks/_pipeline.py);
3. adds ONNX Runtime CUDA and TensorRT rows where those libraries and a GPU exist (``--device cpu``
   runs the ONNX Runtime rows on its CPU provider, so the code path still runs); every row not run
   is written with the reason.

Writes ``gpu_check_<device>.json`` and ``.md`` (named after the GPU) under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from benchmarks._pipeline import markdown_table, measure_pipeline
from benchmarks.throughput import positive_ints, synthetic_files

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def run_tests(out: Path) -> dict:
    """pytest -m gpu over tests/: exit code, summary line and the skip reasons."""
    try:
        import pytest  # noqa: F401
    except ImportError:
        return {"skipped": "pytest is not installed (make gpu-wheels brings it)"}
    log = out / "gpu_check_tests.txt"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-m", "gpu", "tests"], cwd=ROOT,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    log.write_text(r.stdout + r.stderr)
    lines = r.stdout.strip().splitlines()
    return {"returncode": r.returncode, "summary": lines[-1] if lines else r.stderr.strip()[-300:],
            "skipped_reasons": sorted({ln.split(": ", 1)[-1] for ln in lines if ln.startswith("SKIPPED")}),
            "log": str(log.relative_to(ROOT) if log.is_relative_to(ROOT) else log)}


def device_name(device: str) -> str:
    if device == "cuda":
        import torch
        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()}, no GPU used)"


def make_run(out: Path, backbone: str) -> Path:
    """A random-weight run directory (training.train --epochs 0): nothing is downloaded."""
    from training.train import main as train_main

    rc = train_main(["--data", str(out / "no-data"), "--out", str(out), "--backbone", backbone,
                     "--pretrained", "none", "--epochs", "0", "--templates", "1", "--quiet"])
    if rc not in (0, None):
        raise RuntimeError(f"training.train exited {rc} building the {backbone} run directory")
    return out


def _rows(det_factory, label: dict, files: list[str], batch_sizes: list[int], iters: int) -> list[dict]:
    rows = []
    for pipeline in ("cpu", "gpu"):
        try:
            det = det_factory(pipeline)
        except Exception as e:  # a runtime that is present but cannot start is a skipped row
            rows.append({**label, "pipeline": pipeline, "skipped": f"{type(e).__name__}: {e}"})
            continue
        try:
            for bs in batch_sizes:
                rows.append({**measure_pipeline(det, files, bs, iters), **label})
                print(markdown_table(rows[-1:]).splitlines()[-1], flush=True)
        finally:
            det.close()
    return rows


def benchmark(args, work: Path) -> tuple[list[dict], list[dict]]:
    """(rows measured, rows skipped with their reason)."""
    import onnxruntime as ort

    from nsnet_sdk import BackendOptions, Detector, InputOptions

    cuda = args.device == "cuda"
    files = synthetic_files(args.images, args.size, work / "images")
    run = make_run(work / "run", args.backbone)
    rows, skipped = [], []
    dev = "cuda" if cuda else "cpu"

    def torch_det(pipeline: str):
        # On CUDA, the fast path: FP16 autocast + one CUDA graph per batch size.
        fast = dict(precision="fp16", cuda_graphs=True) if cuda else {}
        return Detector(run, backend=BackendOptions(device=dev, **fast), options=InputOptions(pipeline=pipeline))

    label = {"backend": "torch", "precision": "fp16+graphs" if cuda else "fp32"}
    rows += _rows(torch_det, label, files, args.batch_sizes, args.iters)

    providers = ort.get_available_providers()
    ort_ep = "CUDAExecutionProvider" if cuda else "CPUExecutionProvider"
    trt_reason = None
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        trt_reason = "tensorrt is not installed"
    if not cuda:
        trt_reason = "no GPU (--device cpu): a TensorRT engine runs only on CUDA"
    need_onnx = ort_ep in providers or trt_reason is None
    if not need_onnx:
        skipped.append({"backend": "onnxruntime", "precision": "fp32",
                        "skipped": f"{ort_ep} not available (providers: {', '.join(providers)}; "
                                   "pip install onnxruntime-gpu)"})
    if trt_reason:
        skipped.append({"backend": "tensorrt", "precision": "fp16", "skipped": trt_reason})
    if need_onnx:
        from export.to_onnx import export_onnx

        onnx_path = Path(export_onnx(run, work / "nsnet.onnx"))
        if ort_ep in providers:
            rows += _rows(lambda p: Detector(onnx_path, backend=BackendOptions(providers=[ort_ep], device=dev),
                                             options=InputOptions(pipeline=p)),
                          {"backend": f"onnxruntime ({ort_ep})", "precision": "fp32"},
                          files, args.batch_sizes, args.iters)
        else:
            skipped.append({"backend": "onnxruntime", "precision": "fp32",
                            "skipped": f"{ort_ep} not available (providers: {', '.join(providers)})"})
        if trt_reason is None:
            from export.to_trt import build_engine

            engine = work / "nsnet.engine"
            try:
                build_engine(onnx_path, engine, fp16=True, max_batch=max(args.batch_sizes),
                             opt_batch=max(args.batch_sizes))
            except Exception as e:
                skipped.append({"backend": "tensorrt", "precision": "fp16",
                                "skipped": f"engine build failed: {type(e).__name__}: {e}"})
            else:
                rows += _rows(lambda p: Detector(engine, backend=BackendOptions(device=0),
                                                 options=InputOptions(pipeline=p)),
                              {"backend": "tensorrt", "precision": "fp16"}, files, args.batch_sizes, args.iters)
    return rows, skipped


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--backbone", default="ViT-L-14", help="open_clip architecture, random weights")
    ap.add_argument("--batch-sizes", type=positive_ints, default=[1, 2, 4, 8, 16, 32, 64, 128])
    ap.add_argument("--images", type=int, default=64, help="synthetic JPEGs (default 64)")
    ap.add_argument("--size", type=int, default=1024, help="their side in pixels (default 1024)")
    ap.add_argument("--iters", type=int, default=5, help="timed repetitions per stage (default 5)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--no-tests", action="store_true", help="skip step 1 (the gpu-marked tests)")
    args = ap.parse_args(argv)
    if args.device == "cuda":
        try:
            import torch
            ok = torch.cuda.is_available()
        except ImportError:
            ok = False
        if not ok:
            print("gpu_check: no CUDA device visible to torch; `make gpu-check DEVICE=cpu` runs every "
                  "step on the CPU", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    name = device_name(args.device)
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:40] if args.device == "cuda" else "cpu"
    report = {"device": name, "kind": args.device, "backbone": args.backbone,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python -m benchmarks.gpu_check", *(argv if argv is not None else sys.argv[1:])])}
    report["tests"] = {"skipped": "--no-tests"} if args.no_tests else run_tests(args.out)
    print(f"tests: {report['tests']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="nsnet-gpu-check-") as tmp:
        rows, skipped = benchmark(args, Path(tmp))
    report["rows"], report["skipped_rows"] = rows, skipped
    (args.out / f"gpu_check_{slug}.json").write_text(json.dumps(report, indent=1))
    md = (f"# gpu-check on {name}\n\n{args.backbone}, random weights; {args.images} synthetic "
          f"{args.size}×{args.size} JPEGs; `{report['command']}` ({report['date']}).\n\n"
          f"Tests (`pytest -m gpu`): {report['tests'].get('summary') or report['tests'].get('skipped')}\n\n"
          + markdown_table(rows)
          + "".join(f"\nNot run: {r['backend']} {r['precision']}: {r['skipped']}" for r in skipped) + "\n")
    (args.out / f"gpu_check_{slug}.md").write_text(md)
    print(md)
    tests_rc = report["tests"].get("returncode", 0)
    return 1 if tests_rc not in (0, 5) else 0  # 5: no test collected


if __name__ == "__main__":
    sys.exit(main())
