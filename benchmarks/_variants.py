"""Derive the optimised, INT8 and FP16 ONNX variants of a given FP32 model through `export/`.

The benchmark is handed one FP32 ``.onnx`` file; what it compares are the graphs we ship from it:
ONNX Runtime's transformer fusions (Attention, SkipLayerNormalization, BiasGelu), dynamic INT8 of
the fused graph, and (for GPU providers) FP16 of the fused graph. Every transformation is
`export.to_onnx.derive_onnx` (never re-implemented here).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

FUSED = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "LayerNormalization",
         "BiasGelu", "Gelu", "FastGelu", "QuickGelu", "MatMul", "MatMulInteger", "DynamicQuantizeMatMul",
         "QAttention", "Softmax")


@dataclass
class Variant:
    """One ONNX file to benchmark: ``name`` (plain | optimized | int8 | fp16), its precision,
    where it came from, and its operator counts (what shows whether the fusions fired)."""

    name: str
    precision: str
    path: Path
    derived: bool
    ops: dict[str, int] = field(default_factory=dict)


def op_summary(path: Path) -> dict[str, int]:
    """Counts of the operators that tell a fused/quantised graph from a plain one."""
    from export.to_onnx import op_counts

    return {k: v for k, v in sorted(op_counts(path).items()) if k in FUSED}


def derive(model: Path, workdir: Path, *, int8: bool = True, fp16: bool = False) -> list[Variant]:
    """The variants of FP32 ``model``: itself (``plain``, or ``optimized`` when it already carries
    fused Attention nodes), the fused graph, and, as asked, INT8 and FP16 of the fused graph.

    Written under ``workdir`` by `export.to_onnx.derive_onnx` (metadata copied, precision updated).
    """
    from export.to_onnx import derive_onnx
    from nsnet_sdk.artifact import read_onnx_metadata

    meta = read_onnx_metadata(model)
    if meta.get("nsnet.precision", "fp32") != "fp32":
        raise ValueError(f"{model}: --model must be the FP32 export (nsnet.precision = "
                         f"{meta.get('nsnet.precision')!r})")
    ops = op_summary(model)
    workdir.mkdir(parents=True, exist_ok=True)
    if ops.get("Attention", 0):
        out = [Variant("optimized", "fp32", model, False, ops)]
        optimized = model
    else:
        out = [Variant("plain", "fp32", model, False, ops)]
        optimized = derive_onnx(model, workdir / "optimized.onnx", optimize=True)
        out.append(Variant("optimized", "fp32", optimized, True, op_summary(optimized)))
    if int8:
        q = derive_onnx(optimized, workdir / "int8.onnx", int8=True)
        out.append(Variant("int8", "int8", q, True, op_summary(q)))
    if fp16:
        h = derive_onnx(optimized, workdir / "fp16.onnx", fp16=True)
        out.append(Variant("fp16", "fp16", h, True, op_summary(h)))
    return out


def derive_in_child(model: Path, workdir: Path, *, int8: bool, fp16: bool, timeout: float) -> list[Variant]:
    """`derive` in a child process: the optimizer and quantizer hold several copies of the weights
    (GBs for ViT-L-14) that the benchmark's parent process should not keep for the whole run."""
    import json
    import subprocess
    import sys

    cmd = [sys.executable, __file__, str(model), str(workdir)] + ["--int8"] * int8 + ["--fp16"] * fp16
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"deriving variants of {model} failed (exit {proc.returncode}): {tail}")
    return [Variant(v["name"], v["precision"], Path(v["path"]), v["derived"], v["ops"])
            for v in json.loads(proc.stdout.strip().splitlines()[-1])]


if __name__ == "__main__":
    import json
    import logging
    import sys

    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization's advice to pre-process
    args = sys.argv[1:]
    found = derive(Path(args[0]), Path(args[1]), int8="--int8" in args, fp16="--fp16" in args)
    print(json.dumps([dict(v.__dict__, path=str(v.path)) for v in found]))
