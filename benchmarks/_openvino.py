"""OpenVINO rows of benchmarks/throughput.py: FP32, BF16 (where the CPU has it in hardware) and
NNCF INT8 of the given FP32 export, beside ONNX Runtime and PyTorch in the same run.

The INT8 file is made by `export.to_openvino.quantize` (in a child process: NNCF holds copies of
the weights) calibrated on the benchmark's own image files; the parity inputs of the run are
other, seeded synthetic images, so parity is measured on held-out inputs.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CALIBRATION_SAMPLES = 64  # enough for NNCF's min/max statistics of a ViT; keeps the run short


def cpu_summary() -> dict:
    """The CPU's relevant feature flags and class (`nsnet_sdk.backends.openvino.isa_class`)."""
    from nsnet_sdk.backends.openvino import isa_class
    from nsnet_sdk.cpuinfo import cpu_features

    f = cpu_features()
    keep = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
            "amx_tile", "amx_bf16", "amx_int8")
    return {"isa": isa_class(f), "flags": [k for k in keep if k in f]}


def plan(model: Path, workdir: Path, calibration: Path, timeout: float, not_run: list[str]) -> list[dict]:
    """The OpenVINO configurations (each a child of benchmarks/_measure.py); what cannot run is
    appended to ``not_run`` with the reason."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        not_run.append("OpenVINO: not installed (pip install 'nsnet-sdk[openvino]')")
        return []
    from nsnet_sdk.backends.openvino import bf16_supported
    from nsnet_sdk.cpuinfo import cpu_features

    base = dict(backend="openvino", label="openvino", device="cpu", model=str(model))
    cfgs = [dict(base, name="openvino fp32", precision="fp32")]
    if bf16_supported(cpu_features()):
        cfgs.append(dict(base, name="openvino bf16", precision="bf16"))
    else:
        not_run.append("OpenVINO bf16: no AMX or AVX-512-BF16 on this CPU")
    out = workdir / "models" / "int8-ov.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    code = ("import sys; from pathlib import Path; from export.to_openvino import quantize; "
            f"quantize(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), subset_size={CALIBRATION_SAMPLES})")
    proc = subprocess.run([sys.executable, "-c", code, str(model), str(out), str(calibration)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if proc.returncode == 0:
        cfgs.append(dict(base, name="openvino int8", precision="int8", model=str(out)))
    else:
        tail = " | ".join(proc.stderr.strip().splitlines()[-2:])
        not_run.append(f"OpenVINO int8: NNCF quantisation failed: {tail}")
    return cfgs


def engine_table(report: dict, batch: int | None = None) -> dict:
    """`nsnet_sdk/backends/cpu_engines.json` rows from a throughput report (CPU run): each
    deployable engine's speed against ONNX Runtime FP32 at ``batch`` (default the largest) — ``ratio``
    from the CPU ms per image (on a shared machine the CPU cost of an image moves much less than the
    wall-clock rate), ``wall_ratio`` from images/s — its parity against PyTorch FP32 and the CPU
    flags its kernels needed (from OpenVINO's primitives)."""
    model = [r for r in report["results"] if r["stage"] == "model" and r["backend"] != "torch"]
    batch = batch or max(r["batch_size"] for r in model)
    speed = {(r["backend"], r["precision"]): r["images_per_s"] for r in model if r["batch_size"] == batch}
    cpu = {(c["backend"], c["precision"]): c["cpu_ms_per_image"] for c in report["cpu_time"]
           if c["stage"] == "model" and c["batch_size"] == batch and "variant" not in c}
    base, base_cpu = speed[("onnxruntime", "fp32")], cpu[("onnxruntime", "fp32")]
    parity = {p["config"]: p for p in report["parity"]}
    kernels = {k["config"]: " ".join(k["kernels"]) for k in report.get("kernels", [])}
    isa = report["machine"]["cpu_features"]["isa"]
    rows = []
    for (backend, precision), ips in sorted(speed.items()):
        name = f"{backend} {'optimized' if (backend, precision) == ('onnxruntime', 'fp32') else precision}"
        used = kernels.get(f"{backend} {precision}", "")
        needs = sorted({flag for flag, mark in (("amx_bf16", "amx_bf16"), ("amx_int8", "amx_i8"),
                                                 ("avx512f", "avx512"), ("avx2", "avx2")) if mark in used})
        p = parity.get(name, {})
        rows.append({"isa": isa, "backend": backend, "precision": "fp32" if precision == "fp32" else precision,
                     "artifact": {"onnxruntime": {"int8": "int8-dynamic"}}.get(backend, {}).get(precision,
                                 "int8" if precision == "int8" else "fp32"),
                     "needs": needs, "ratio": round(base_cpu / cpu[(backend, precision)], 3),
                     "wall_ratio": round(ips / base, 3),
                     "parity": {k: p[k] for k in ("max_abs_logit", "max_abs_prob", "agreement") if k in p},
                     "measured": f"{report['backbone']} batch {batch}, {report['machine']['cpu']} "
                                 f"{report['machine']['cpu_count']} vCPU, {report['date'][:10]}"})
    return {"about": "CPU engines measured by python -m benchmarks.throughput (ratio: ONNX Runtime FP32's "
                     "CPU ms per image / this engine's, wall_ratio: images/s / ONNX Runtime FP32's, same "
                     "run; parity vs PyTorch FP32); rebuild with python -m "
                     "benchmarks._openvino REPORT.json > nsnet_sdk/backends/cpu_engines.json",
            "command": "python " + report["command"].split(" ", 1)[1], "rows": rows}


if __name__ == "__main__":
    import json

    print(json.dumps(engine_table(json.loads(Path(sys.argv[1]).read_text())), indent=1))
