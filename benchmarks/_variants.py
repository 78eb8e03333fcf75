"""Derive the optimised, INT8 and FP16 ONNX variants of a given FP32 model through `export/`.

The benchmark is handed one FP32 ``.onnx`` file; what it compares are the graphs we ship from it:
ONNX Runtime's transformer fusions (Attention, SkipLayerNormalization, BiasGelu), dynamic INT8 of
the fused graph, and (for GPU providers) FP16 of the fused graph. Every transformation is
export/to_onnx.py's own (never re-implemented here); only the plumbing from a file rather than a
run directory is ours. NOTE: those are the module's private helpers (`_optimize`, `_quantize_int8`,
`_to_fp16`, `_save`); see docs/benchmarks.md for the public hook proposed to export.
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


def tower_shape(backbone: str) -> tuple[int, int]:
    """(heads, width) of an open_clip visual tower, for the optimizer's fusion patterns."""
    import open_clip

    import training  # noqa: F401  (registers nsnet-tiny with open_clip)

    cfg = open_clip.get_model_config(backbone)
    if cfg is None:
        raise ValueError(f"unknown backbone {backbone!r} in the model's nsnet.backbone metadata")
    vc = cfg["vision_cfg"]
    width = int(vc["width"])
    return width // int(vc.get("head_width", 64)), width


def _set_meta(proto, meta: dict[str, str], precision: str) -> None:
    del proto.metadata_props[:]
    for k, v in dict(meta, **{"nsnet.precision": precision}).items():
        proto.metadata_props.add(key=k, value=v)


def derive(model: Path, workdir: Path, *, int8: bool = True, fp16: bool = False) -> list[Variant]:
    """The variants of FP32 ``model``: itself (``plain``, or ``optimized`` when it already carries
    fused Attention nodes), the fused graph, and, as asked, INT8 and FP16 of the fused graph.

    Written under ``workdir``; metadata copied from ``model`` with ``nsnet.precision`` updated.
    """
    import onnx

    from export.to_onnx import _optimize, _quantize_int8, _save, _to_fp16, read_metadata

    meta = read_metadata(model)
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
        heads, width = tower_shape(meta["nsnet.backbone"])
        proto, _ = _optimize(model, heads, width)
        _set_meta(proto, meta, "fp32")
        optimized = workdir / "optimized.onnx"
        _save(proto, optimized)
        del proto
        out.append(Variant("optimized", "fp32", optimized, True, op_summary(optimized)))
    if int8:
        q = workdir / "int8.onnx"
        _quantize_int8(optimized, workdir / "int8.raw.onnx")
        proto = onnx.load(str(workdir / "int8.raw.onnx"))
        _set_meta(proto, meta, "int8")
        _save(proto, q)
        out.append(Variant("int8", "int8", q, True, op_summary(q)))
    if fp16:
        h = workdir / "fp16.onnx"
        proto = _to_fp16(onnx.load(str(optimized)))
        _set_meta(proto, meta, "fp16")
        _save(proto, h)
        out.append(Variant("fp16", "fp16", h, True, op_summary(h)))
    return out
