"""Throughput, latency and memory of every backend and of the whole pipeline, against PyTorch in the same run.

    python -m benchmarks.throughput --model nsnet.onnx [--engine nsnet.engine] [--ckpt RUN_DIR]
        [--batch-sizes 1,8,32,128] [--images DIR | --synthetic N [--size 512]] [--workers 1,2,4]
        [--json out.json] [--plot out.png] [--threads T] [--iters N] [--warmup N] [--device auto]
        [--pipeline cpu,gpu]

Given only the FP32 ``--model``, the optimised (ONNX Runtime fusions) and INT8 variants are derived
through export/ and their parity (max |Δlogit|, correlation) is reported beside their speed; the
reference is the unfolded PyTorch checkpoint (``--ckpt``), else the given FP32 graph. The PyTorch
eager FP32 baseline (``--ckpt``) runs in the same run with the same thread count as ONNX Runtime.

Stages: ``model`` (the backend's ``run`` on ready batches: images/s, per-batch latency p50/p99),
``preprocess`` (decode + patch mosaic + normalise from files per worker count; per-image latency),
``end_to_end`` (files → `Detector.predict_iter`: decode, preprocess and inference overlapped;
latency = time between consecutive batches of results). Each backend × precision runs in its own
child process (benchmarks/_measure.py), so its peak RSS is its own and a crash is a failed row, not
a failed run. ``--pipeline`` adds per-stage rows (decode, select, model; end-to-end against
model-only; CPU cores one device needs) for the CPU and/or GPU input pipeline (benchmarks/_pipeline.py).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from nsnet_sdk.constants import DEFAULT_THRESHOLD, RUN_CONFIG
from benchmarks import _openvino, _variants
from benchmarks._machine import cuda_device_name, library_versions, machine
from benchmarks._pipeline import pipeline_stages
from benchmarks._report import e2e_fraction, plot, print_report, ratios

HERE = Path(__file__).resolve().parent


class BenchError(Exception):
    """A usage problem the CLI reports in one line (exit 2)."""


# -- inputs -------------------------------------------------------------------------------------

def positive_ints(text: str) -> list[int]:
    """'1,8,32' → [1, 8, 32] (argparse type; each value ≥ 1)."""
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return sorted(set(vals))


def synthetic_files(n: int, size: int, root: Path) -> list[str]:
    """``n`` photo-like ``size``×``size`` JPEGs (q90) under ``root``: decode cost like a camera image."""
    import cv2
    from benchmarks.preprocess import photo_like  # the same synthetic photos as the preprocess benchmark

    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = root / f"synthetic_{i:05d}.jpg"
        cv2.imwrite(str(p), photo_like(size, size, i)[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append(str(p))
    return out


def image_files(root: Path) -> list[str]:
    """The image files under ``root`` (recursive, sorted): what `nsnet detect --recursive` scores."""
    from nsnet_sdk.pipeline import IMAGE_SUFFIXES, iter_image_paths

    files, _ = iter_image_paths([str(root)], recursive=True)
    if not files:
        raise BenchError(f"--images {root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    return files


# -- environment --------------------------------------------------------------------------------

# -- configurations -----------------------------------------------------------------------------

def plan(args, variants: list[_variants.Variant], device: str, cuda_ort: bool) -> list[dict]:
    """The (backend, precision) configurations of this run, each one child process.

    ``reference``: a configuration whose rows go to ``reference_results`` (the plain FP32 export,
    kept to show what the fusions buy) rather than to ``results``.
    """
    by = {v.name: v for v in variants}
    cfgs: list[dict] = []
    if args.ckpt:
        cfgs.append(dict(name="torch fp32", backend="torch", label="torch", precision="fp32",
                         model=str(args.ckpt), device=device))
        if device == "cuda":
            cfgs.append(dict(name="torch fp16 autocast", backend="torch", label="torch", precision="fp16",
                             model=str(args.ckpt), device=device, autocast_fp16=True, cuda_graphs=True))
    cpu = ["CPUExecutionProvider"]
    if device == "cpu":
        for v in variants:
            cfgs.append(dict(name=f"onnxruntime {v.name}", backend="onnxruntime", label="onnxruntime",
                             precision=v.precision, model=str(v.path), device="cpu", providers=cpu,
                             variant=v.name, reference=v.name == "plain"))
            if v.name == "optimized":  # ONNX Runtime's own default: intra-op threads spinning
                cfgs.append(dict(cfgs[-1], name="onnxruntime spinning", label="onnxruntime-spin",
                                 env={"NSNET_ORT_SPINNING": "1"}))
    elif cuda_ort:
        gpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        for name in ("optimized", "fp16"):
            if name in by:
                v = by[name]
                cfgs.append(dict(name=f"onnxruntime-cuda {v.name}", backend="onnxruntime", label="onnxruntime",
                                 precision=v.precision, model=str(v.path), device="cuda", providers=gpu,
                                 variant=v.name))
    if args.engine:
        from nsnet_sdk.artifact import engine_sidecar

        side = engine_sidecar(args.engine)
        meta = json.loads(side.read_text()) if side.is_file() else {}
        cfgs.append(dict(name="tensorrt", backend="tensorrt", label="tensorrt",
                         precision=str(meta.get("nsnet.precision", "fp16")), model=str(args.engine), device="cuda"))
    return cfgs


def on_gpu(device: str | None) -> bool:
    """Whether a backend's reported ``device`` is a GPU: ``cuda``/``cuda:N`` (torch, TensorRT) or a
    GPU execution provider of ONNX Runtime."""
    d = str(device or "").lower()
    return d.startswith("cuda") or d in ("cudaexecutionprovider", "tensorrtexecutionprovider")


def device_flag(spec: dict, device: str | None) -> dict | None:
    """A flag for a configuration planned for CUDA whose backend reports it ran elsewhere (ONNX
    Runtime falling back to its CPU provider, say): its rows are not CUDA figures."""
    if spec.get("device") != "cuda" or on_gpu(device):
        return None
    return {"config": spec["name"], "planned": "cuda", "ran_on": str(device)}


def run_child(spec: dict, workdir: Path, timeout: float) -> tuple[dict | None, str | None]:
    """Run benchmarks/_measure.py on ``spec``; (result, None) or (None, why it failed)."""
    slug = spec["name"].replace(" ", "_")
    spec = dict(spec, out=str(workdir / f"{slug}.json"))
    spec_path = workdir / f"{slug}.spec.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), **spec.get("env", {}))
    cmd = [sys.executable, str(HERE / "_measure.py"), str(spec_path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None, f"did not finish in {timeout:.0f} s"
    if proc.returncode != 0:
        rc = proc.returncode
        how = f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}"
        tail = " | ".join((proc.stderr or "").strip().splitlines()[-3:])
        return None, f"{how}: {tail}"
    return json.loads(Path(spec["out"]).read_text()), None


def parity_report(cfgs: list[dict], workdir: Path, threshold: float) -> list[dict]:
    """max |Δlogit|, |Δprob|, agreement and correlation of every configuration against the
    reference: PyTorch FP32 (the unfolded checkpoint) if it ran, else the given FP32 graph."""
    from export.parity import compare

    logits = {}
    for c in cfgs:
        p = workdir / (c["name"].replace(" ", "_") + ".logits.npy")
        if p.is_file():
            logits[c["name"]] = np.load(p)
    ref_name = "torch fp32" if "torch fp32" in logits else next(
        (c["name"] for c in cfgs if c.get("variant") in ("plain", "optimized") and c["name"] in logits), None)
    if ref_name is None:
        return []
    ref = logits[ref_name]
    out = []
    for c in cfgs:
        if c["name"] == ref_name or c["name"] not in logits:
            continue
        lo = logits[c["name"]]
        par = compare(c["precision"], ref, lo, threshold)
        out.append({"config": c["name"], "reference": ref_name, "precision": c["precision"], "n": par.n,
                    "max_abs_logit": par.max_abs_logit, "max_abs_prob": par.max_abs_prob,
                    "agreement": par.agreement, "logit_corr": par.logit_corr})
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path, help="the FP32 .onnx export")
    p.add_argument("--engine", type=Path, help="TensorRT engine (CUDA machines)")
    p.add_argument("--ckpt", type=Path, help="run directory: PyTorch eager baseline and parity reference")
    p.add_argument("--batch-sizes", type=positive_ints, default=[1, 8, 32, 128], help="e.g. 1,8,32,128")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", type=Path, help="directory of image files (recursive)")
    src.add_argument("--synthetic", type=int, metavar="N", help="N synthetic photo-like JPEGs (default 64)")
    p.add_argument("--size", type=int, default=512, help="side of the synthetic images (default 512)")
    p.add_argument("--workers", type=positive_ints, default=[1, 2, 4], help="decode worker counts, e.g. 1,2,4")
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--plot", type=Path, help="PNG of images/s against batch size")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="intra-op threads for every backend (default: all cores)")
    p.add_argument("--iters", type=int, default=20, help="timed batches per model row (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first (default 3)")
    p.add_argument("--parity-n", type=int, default=32, help="inputs for the parity report (0 skips)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: CUDA rows when a CUDA device is visible, else CPU rows")
    p.add_argument("--pipeline", type=lambda t: [v for v in t.split(",") if v], default=[],
                   help="stage timings of these input pipelines, e.g. cpu,gpu (docs/nvidia.md)")
    p.add_argument("--no-int8", action="store_true", help="skip the INT8 variant")
    p.add_argument("--no-openvino", action="store_true", help="skip the OpenVINO rows (CPU runs)")
    p.add_argument("--workdir", type=Path, help="keep derived models and child outputs here")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per configuration (default 3600)")
    return p


def run(args: argparse.Namespace, argv: list[str]) -> dict:
    """Everything but printing: derive variants, run every configuration, collect the report."""
    from tqdm import tqdm

    if not args.model.is_file() or args.model.suffix != ".onnx":
        raise BenchError(f"--model {args.model}: not an .onnx file")
    if args.ckpt and not (args.ckpt / RUN_CONFIG).is_file():
        raise BenchError(f"--ckpt {args.ckpt}: not a run directory (no {RUN_CONFIG})")
    if args.engine and not args.engine.is_file():
        raise BenchError(f"--engine {args.engine}: not found")
    if set(args.pipeline) - {"cpu", "gpu"}:
        raise BenchError(f"--pipeline: expected cpu and/or gpu, got {','.join(args.pipeline)}")
    if args.threads < 1 or args.iters < 1 or args.warmup < 0 or args.size < 32:
        raise BenchError("--threads and --iters must be >= 1, --warmup >= 0, --size >= 32")
    from nsnet_sdk.artifact import read_onnx_metadata
    from nsnet_sdk.errors import ModelLoadError

    try:
        meta = read_onnx_metadata(args.model)
    except ModelLoadError as e:
        raise BenchError(f"--model {e}") from e
    if "nsnet.preprocess" not in meta:
        raise BenchError(f"--model {args.model}: not an NS-Net export (no nsnet.* metadata; see export/to_onnx.py)")
    gpu = cuda_device_name()
    device = args.device if args.device != "auto" else ("cuda" if gpu else "cpu")
    if device == "cuda" and not gpu:
        raise BenchError("--device cuda: no CUDA device visible to torch")
    import onnxruntime as ort

    cuda_ort = "CUDAExecutionProvider" in ort.get_available_providers()
    not_run = []
    if device == "cpu":
        not_run.append("CUDA rows (PyTorch FP16 autocast + CUDA graphs, ONNX Runtime CUDA, TensorRT): "
                       + ("no CUDA device" if not gpu else "--device cpu"))
    if device == "cuda" and not cuda_ort:
        not_run.append("ONNX Runtime CUDA: CUDAExecutionProvider not available (onnxruntime-gpu not installed)")
    if not args.engine:
        not_run.append("TensorRT: no --engine given")
    if not args.ckpt:
        not_run.append("PyTorch baseline: no --ckpt given (parity against the given FP32 graph)")

    tmp = tempfile.TemporaryDirectory(prefix="nsnet-bench-") if args.workdir is None else None
    workdir = Path(tmp.name) if tmp else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        files = image_files(args.images) if args.images else \
            synthetic_files(args.synthetic or 64, args.size, workdir / "images")
        t = time.perf_counter()
        try:
            variants = _variants.derive_in_child(args.model, workdir / "models", timeout=args.timeout,
                                                 int8=not args.no_int8 and device == "cpu",
                                                 fp16=device == "cuda" and cuda_ort)
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"deriving variants of {args.model} took over {args.timeout:.0f} s") from e
        derive_s = time.perf_counter() - t
        cfgs = plan(args, variants, device, cuda_ort)
        if device == "cpu" and not args.no_openvino:  # calibrated on the run's files, not the parity set
            cfgs += _openvino.plan(args.model, workdir, args.images or workdir / "images", args.timeout, not_run)

        parity_path = None
        if args.parity_n > 0:
            from export.verify import synthetic_batches
            from nsnet_sdk.pipeline import PatchConfig

            cfg = PatchConfig.from_dict(json.loads(meta["nsnet.preprocess"]))
            parity_path = workdir / "parity_inputs.npy"
            np.save(parity_path, np.concatenate(list(synthetic_batches(args.parity_n, cfg, seed=0))))

        common = dict(threads=args.threads, batch_sizes=args.batch_sizes, workers=args.workers,
                      e2e_batch_size=max(args.batch_sizes), files=files, iters=args.iters,
                      warmup=args.warmup, parity_inputs=str(parity_path) if parity_path else None)
        results, reference, device_mem, cpu_time, failed, input_errors, kernels = [], [], [], [], [], set(), []
        flagged: list[dict] = []
        # Labelled with the run's serving configuration: the engine (its sidecar's precision) on a
        # CUDA run with one, else ONNX Runtime FP32.
        serving = next((c for c in cfgs if c["backend"] == "tensorrt"), None) if device == "cuda" else None
        pre = dict(common, kind="preprocess", name="preprocess",
                   label=serving["label"] if serving else "onnxruntime",
                   precision=serving["precision"] if serving else "fp32",
                   preprocess=json.loads(meta["nsnet.preprocess"]))
        for spec in tqdm([pre] + [dict(common, kind="model", **c) for c in cfgs], desc="configurations",
                         unit="config", file=sys.stderr):
            tqdm.write(f"  {spec['name']} ...", file=sys.stderr)
            if spec.get("reference"):
                spec = dict(spec, e2e=False)  # the plain graph is a model-stage reference only
            res, err = run_child(spec, workdir, args.timeout)
            if err:
                failed.append({"config": spec["name"], "error": err})
                continue
            flag = device_flag(spec, res.get("device"))
            if flag:
                flagged.append(flag)
            dest = reference if spec.get("reference") else results
            dest.extend(dict(r, variant=spec["variant"]) if spec.get("reference") else r for r in res["rows"])
            reference.extend(res["extra_rows"])
            device_mem.extend(res["device_memory"])
            cpu_time.extend(dict(c, variant=spec["variant"]) if spec.get("reference") else c
                            for c in res.get("cpu_time", []))
            input_errors.update(res.get("input_errors", []))
            kernels.extend([{"config": spec["name"], "kernels": res["kernels"]}] if res.get("kernels") else [])

        report = {
            "command": " ".join(shlex.quote(a) for a in [sys.executable, "-m", "benchmarks.throughput", *argv]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": dict(machine(), cpu_features=_openvino.cpu_summary()), "libraries": library_versions(),
            "kernels": kernels,  # CPU primitives each OpenVINO row ran (e.g. brgemm_avx512_amx_bf16)
            "backbone": meta.get("nsnet.backbone", ""), "device": device, "threads": args.threads,
            "inputs": (f"{len(files)} files from {args.images}" if args.images
                       else f"{len(files)} synthetic {args.size}x{args.size} JPEGs"),
            "iters": args.iters, "warmup": args.warmup,
            "models": [{"variant": v.name, "precision": v.precision, "path": str(v.path), "derived": v.derived,
                        "ops": v.ops} for v in variants],
            "derive_seconds": round(derive_s, 1),
            "results": results,
            "reference_results": reference,
            "parity": parity_report(cfgs, workdir, float(meta.get("nsnet.threshold", DEFAULT_THRESHOLD))),
            "end_to_end_vs_model": [], "device_memory": device_mem, "cpu_time": cpu_time,
            "input_errors": sorted(input_errors),
            "failed": failed, "not_run": not_run, "not_on_gpu": flagged,
        }
        report["end_to_end_vs_model"] = e2e_fraction(results)
        report["pipeline_stages"] = pipeline_stages(args.pipeline, args.ckpt or args.model, files,
                                                    device, args.batch_sizes, args.iters)
        report["speedup_vs_torch_fp32"] = [
            {"backend": k[0], "precision": k[1], "batch_size": k[2], "ratio": v}
            for k, v in ratios(results).items() if k[0] != "torch" or k[1] != "fp32"]
        return report
    finally:
        if tmp:
            tmp.cleanup()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        report = run(args, argv)
    except BenchError as e:
        parser.error(str(e))  # exit 2 with the usage line
    except RuntimeError as e:  # a derived variant could not be built: nothing to compare
        print(f"error: {e}", file=sys.stderr)
        return 1
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json}", file=sys.stderr)
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
