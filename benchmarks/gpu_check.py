"""`make gpu-check`: the NVIDIA path proved in one command on the machine at hand.

    python -m benchmarks.gpu_check [--device cuda|cpu] [--backbone ViT-L-14] [--batch-sizes 1,2,...,128]
        [--images 64] [--size 1024] [--iters 5] [--out benchmarks/results] [--no-tests]

Steps, each reported as ran (on which device), skipped (why: only what cannot apply to the device,
e.g. TensorRT with ``--device cpu``, or what was turned off) or failed (with the real error):

1. imports: every library the device's steps need, imported here; a failure prints Python's own
   error (not a paraphrase) and fails the run;
2. tests: every ``gpu``-marked test (``pytest -m gpu``); on ``--device cuda`` a skipped test fails
   the step (it was asked to run and could not), on ``--device cpu`` skips are expected (no CUDA);
   the first-GPU-run checklist of docs/nvidia.md (`CHECKLIST`) is reported item by item from it;
3. rows: a random-weight ``--backbone`` with the PyTorch backend (FP16 + CUDA graphs on CUDA, FP32
   on the CPU), ONNX Runtime (CUDA provider on CUDA, CPU provider on the CPU) and TensorRT FP16 (CUDA
   only) at each batch size, CPU against GPU input pipeline (benchmarks/_pipeline.py), each with its
   stage-overlap figure: the sum of the per-image stage times over the end-to-end time per image
   (above 1: stages overlap; 1: they run one after another).

Writes ``gpu_check_<device>.json`` and ``.md`` (named after the GPU) under ``--out``; exits 1 when a
step failed, 2 when ``--device cuda`` finds no CUDA device, else 0.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

from benchmarks._pipeline import markdown_table, measure_pipeline
from nsnet_sdk.cpuinfo import cpu_model
from benchmarks.throughput import positive_ints, synthetic_files

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# The first-GPU-run checklist (docs/nvidia.md): what only a GPU can show, and the test showing it.
CHECKLIST = [
    ("CUDA graph capture while pipeline threads allocate, run FFTs and synchronise (thread_local)",
     "tests/test_nvidia_gpu.py::test_cuda_graph_capture_survives_another_thread_allocating_and_synchronising"),
    ("TensorRT FP16 engine from an FP16 ONNX graph has FP16 layers; its sidecar records them",
     "tests/test_nvidia_gpu.py::test_an_fp16_engine_has_fp16_layers_and_its_sidecar_says_so"),
    ("TensorRT non-blocking stream waits for a CUDA array's own stream (event, no host sync)",
     "tests/test_nvidia_gpu.py::test_tensorrt_waits_on_the_device_for_the_stream_the_input_was_written_on"),
    ("TensorRT engine vs ONNX Runtime; batches split and padded; set_tensor_address accepted",
     "tests/test_sdk_tensorrt.py::test_tensorrt_engine_matches_onnx_runtime"),
    ("TensorRT binds a torch CUDA tensor in place",
     "tests/test_sdk_tensorrt.py::test_a_torch_cuda_tensor_runs_in_place_and_matches_the_host_path"),
    ("onnxruntime-gpu runs the CUDA provider, or names it and ORT's reason",
     "tests/test_nvidia_ort.py::test_the_real_gpu_wheel_runs_cuda_or_raises_the_loader_reason"),
]
IMPORTS = {"cpu": ["torch", "onnxruntime", "open_clip"],
           "cuda": ["torch", "onnxruntime", "open_clip", "tensorrt", "cuda.bindings.runtime",
                    "nvidia.nvimgcodec"]}


def step(name: str, status: str, device: str | None = None, detail: str = "") -> dict:
    """One report line: ``status`` is "ran", "skipped" or "failed"."""
    assert status in ("ran", "skipped", "failed"), status
    return {"step": name, "status": status, "device": device, "detail": detail}


def check_imports(modules: list[str]) -> list[dict]:
    """One step per module: imported, or failed with Python's own error."""
    out = []
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - ImportError, or a library failing at import (OSError)
            out.append(step(f"import {name}", "failed", None, f"{type(e).__name__}: {e}"))
        else:
            out.append(step(f"import {name}", "ran", None, getattr(mod, "__version__", "")))
    return out


def run_tests(out: Path, device: str) -> tuple[dict, dict[str, tuple[str, str]]]:
    """pytest -m gpu: (the step, {test id: (outcome, message)}) from pytest's JUnit XML."""
    try:
        import pytest  # noqa: F401
    except ImportError as e:
        return step("tests", "failed", None, f"cannot run pytest: {type(e).__name__}: {e}"), {}
    log, xml = out / "gpu_check_tests.txt", out / "gpu_check_tests.xml"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-m", "gpu", f"--junitxml={xml}",
                        "tests"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    log.write_text(r.stdout + r.stderr)
    results = junit_outcomes(xml) if xml.is_file() else {}
    lines = r.stdout.strip().splitlines()
    summary = lines[-1] if lines else r.stderr.strip()[-300:]
    skipped = {t: m for t, (o, m) in results.items() if o == "skipped"}
    if r.returncode not in (0, 5):  # 5: nothing collected
        return step("tests", "failed", device, f"pytest exited {r.returncode}: {summary} (log {log})"), results
    if device == "cuda" and skipped:
        reasons = sorted(set(skipped.values()))
        return step("tests", "failed", device, f"{len(skipped)} gpu tests could not run on CUDA: "
                    + "; ".join(reasons)), results
    return step("tests", "ran", device, summary), results


def junit_outcomes(xml: Path) -> dict[str, tuple[str, str]]:
    """{"tests/file.py::name": ("passed" | "skipped" | "failed", message)} from a JUnit XML file."""
    out = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        path = case.get("classname", "").replace(".", "/") + ".py"
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = "skipped" if tag == "skipped" else "failed"
                message = el.get("message", "")
                break
        out[f"{path}::{case.get('name')}"] = (outcome, message)
    return out


def checklist_steps(results: dict[str, tuple[str, str]], device: str, tests_asked: bool) -> list[dict]:
    """The checklist item by item: ran (its test passed), skipped (with pytest's reason; on CUDA a
    skip is a failure: the item was asked for and could not be shown) or failed."""
    out = []
    for what, test in CHECKLIST:
        name = f"checklist: {what}"
        if not tests_asked:
            out.append(step(name, "skipped", None, "--no-tests"))
            continue
        outcome, message = results.get(test, ("failed", f"{test} was not collected"))
        if outcome == "skipped" and device == "cuda":
            outcome = "failed"
        out.append(step(name, {"passed": "ran"}.get(outcome, outcome), device, message or test))
    return out


def device_name(device: str) -> str:
    if device == "cuda":
        import torch
        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores, {cpu_model()}, no GPU used)"


def make_run(out: Path, backbone: str) -> Path:
    """A random-weight run directory (training.train --epochs 0): nothing is downloaded."""
    from training.train import main as train_main

    rc = train_main(["--data", str(out / "no-data"), "--out", str(out), "--backbone", backbone,
                     "--pretrained", "none", "--epochs", "0", "--templates", "1", "--quiet"])
    if rc not in (0, None):
        raise RuntimeError(f"training.train exited {rc} building the {backbone} run directory")
    return out


def overlap(row: dict) -> float:
    """Sum of the per-image stage times over the end-to-end time per image."""
    stages = row["decode_ms_per_image"] + row["select_ms_per_image"] + row["model_ms_per_image"]
    return stages / (1e3 / row["end_to_end_images_per_s"])


def _rows(name: str, factory, label: dict, files: list[str], args) -> tuple[list[dict], dict]:
    """(rows, step) of one backend over both input pipelines; any error fails the step."""
    rows = []
    for pipeline in ("cpu", "gpu"):
        try:
            det = factory(pipeline)
        except Exception as e:  # noqa: BLE001 - reported as the step's failure
            return rows, step(name, "failed", args.device, f"{pipeline} pipeline: {type(e).__name__}: {e}")
        try:
            for bs in args.batch_sizes:
                row = {**measure_pipeline(det, files, bs, args.iters), **label}
                row["stage_overlap"] = overlap(row)
                rows.append(row)
                print(markdown_table([row]).splitlines()[-1], f"overlap {row['stage_overlap']:.2f}", flush=True)
        except Exception as e:  # noqa: BLE001
            return rows, step(name, "failed", args.device, f"{pipeline} pipeline: {type(e).__name__}: {e}")
        finally:
            det.close()
    where = sorted({r["backend_device"] for r in rows})
    return rows, step(name, "ran", ", ".join(where), f"{len(rows)} rows")


def benchmark(args, work: Path, failed_imports: set[str]) -> tuple[list[dict], list[dict]]:
    """(rows measured, one step per backend)."""
    cuda = args.device == "cuda"
    dev = "cuda" if cuda else "cpu"
    steps = []
    needs = lambda *mods: [m for m in mods if m in failed_imports]  # noqa: E731
    no_trt = step("rows: tensorrt", "skipped", None, "--device cpu: a TensorRT engine runs only on CUDA")
    if needs("torch", "open_clip"):  # the random-weight run directory is built with them
        why = f"needs {', '.join(needs('torch', 'open_clip'))} (import failed above)"
        return [], [step(f"rows: {b}", "failed", None, why) for b in ("torch", "onnxruntime")] + \
            [step("rows: tensorrt", "failed", None, why) if cuda else no_trt]
    from nsnet_sdk import BackendOptions, Detector, InputOptions

    files = synthetic_files(args.images, args.size, work / "images")
    run = make_run(work / "run", args.backbone)

    def torch_det(pipeline: str):
        # On CUDA, the fast path: FP16 autocast + one CUDA graph per batch size.
        fast = dict(precision="fp16", cuda_graphs=True) if cuda else {}
        return Detector(run, backend=BackendOptions(device=dev, **fast), options=InputOptions(pipeline=pipeline))

    rows, s = _rows("rows: torch", torch_det, {"backend": "torch", "precision": "fp16+graphs" if cuda else "fp32"},
                    files, args)
    steps.append(s)
    onnx_path = None
    if not needs("onnxruntime"):
        from export.to_onnx import export_onnx

        onnx_path = Path(export_onnx(run, work / "nsnet.onnx"))
        # A named provider must run: the backend raises (BackendUnavailableError, with ORT's
        # reason) rather than measuring the CPU under the CUDA label.
        ep = "CUDAExecutionProvider" if cuda else "CPUExecutionProvider"
        more, s = _rows("rows: onnxruntime", lambda p: Detector(onnx_path, backend=BackendOptions(providers=[ep], device=dev),
                                                                options=InputOptions(pipeline=p)),
                        {"backend": f"onnxruntime ({ep})", "precision": "fp32"}, files, args)
        rows += more
        steps.append(s)
    else:
        steps.append(step("rows: onnxruntime", "failed", None, "needs onnxruntime (import failed above)"))
    if not cuda:
        steps.append(no_trt)
    elif needs("tensorrt", "cuda.bindings.runtime") or onnx_path is None:
        steps.append(step("rows: tensorrt", "failed", None, "needs tensorrt, cuda-bindings and onnxruntime "
                          "(import failed above)"))
    else:
        from export.to_trt import build_engine

        engine = work / "nsnet.engine"
        try:
            build_engine(onnx_path, engine, fp16=True, max_batch=max(args.batch_sizes),
                         opt_batch=max(args.batch_sizes))
        except Exception as e:  # noqa: BLE001
            steps.append(step("rows: tensorrt", "failed", "cuda", f"engine build: {type(e).__name__}: {e}"))
        else:
            more, s = _rows("rows: tensorrt", lambda p: Detector(engine, backend=BackendOptions(device=0),
                                                                 options=InputOptions(pipeline=p)),
                            {"backend": "tensorrt", "precision": "fp16"}, files, args)
            rows += more
            steps.append(s)
    return rows, steps


def exit_code(steps: list[dict]) -> int:
    """1 when any step failed, else 0."""
    return 1 if any(s["status"] == "failed" for s in steps) else 0


def steps_markdown(steps: list[dict]) -> str:
    lines = ["| step | status | device | detail |", "|---|---|---|---|"]
    lines += [f"| {s['step']} | {s['status']} | {s['device'] or ''} | {s['detail'].replace('|', '/')} |"
              for s in steps]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--backbone", default="ViT-L-14", help="open_clip architecture, random weights")
    ap.add_argument("--batch-sizes", type=positive_ints, default=[1, 2, 4, 8, 16, 32, 64, 128])
    ap.add_argument("--images", type=int, default=64, help="synthetic JPEGs (default 64)")
    ap.add_argument("--size", type=int, default=1024, help="their side in pixels (default 1024)")
    ap.add_argument("--iters", type=int, default=5, help="timed repetitions per stage (default 5)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--no-tests", action="store_true", help="skip step 2 (the gpu-marked tests)")
    args = ap.parse_args(argv)
    steps = check_imports((["pytest"] if not args.no_tests else []) + IMPORTS[args.device])
    failed_imports = {s["step"].removeprefix("import ") for s in steps if s["status"] == "failed"}
    for s in steps:
        if s["status"] == "failed":
            print(f"gpu_check: {s['step']} failed: {s['detail']}", file=sys.stderr)
    if args.device == "cuda" and "torch" not in failed_imports:
        import torch
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device visible to torch; `make gpu-check DEVICE=cpu` runs every "
                  "step on the CPU", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    name = device_name(args.device) if "torch" not in failed_imports else args.device
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:40] if args.device == "cuda" else "cpu"
    report = {"device": name, "kind": args.device, "backbone": args.backbone,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python -m benchmarks.gpu_check", *(argv if argv is not None else sys.argv[1:])])}
    if args.no_tests:
        steps.append(step("tests", "skipped", None, "--no-tests"))
        results = {}
    elif "pytest" in failed_imports:
        steps.append(step("tests", "failed", None, "pytest could not be imported (see above)"))
        results = {}
    else:
        s, results = run_tests(args.out, args.device)
        steps.append(s)
    steps += checklist_steps(results, args.device, not args.no_tests and "pytest" not in failed_imports)
    with tempfile.TemporaryDirectory(prefix="nsnet-gpu-check-") as tmp:
        try:
            rows, row_steps = benchmark(args, Path(tmp), failed_imports)
        except Exception as e:  # noqa: BLE001 - e.g. the run directory could not be built
            rows, row_steps = [], [step("rows", "failed", args.device, f"{type(e).__name__}: {e}")]
    steps += row_steps
    report["steps"], report["rows"] = steps, rows
    report["skipped_rows"] = [{"backend": s["step"].removeprefix("rows: "), "skipped": s["detail"]}
                              for s in row_steps if s["status"] == "skipped"]
    (args.out / f"gpu_check_{slug}.json").write_text(json.dumps(report, indent=1))
    md = (f"# gpu-check on {name}\n\n{args.backbone}, random weights; {args.images} synthetic "
          f"{args.size}×{args.size} JPEGs; `{report['command']}` ({report['date']}).\n\n"
          + steps_markdown(steps) + "\n" + markdown_table(rows)
          + "".join(f"\nStage overlap, {r['backend']} {r['pipeline']} batch {r['batch_size']}: "
                    f"{r['stage_overlap']:.2f}" for r in rows)
          + "".join(f"\nNot run: {r['backend']}: {r['skipped']}" for r in report["skipped_rows"]) + "\n")
    (args.out / f"gpu_check_{slug}.md").write_text(md)
    print(md)
    code = exit_code(steps)
    if code:
        print("gpu_check: FAILED: " + "; ".join(f"{s['step']}: {s['detail']}" for s in steps
                                                 if s["status"] == "failed"), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
