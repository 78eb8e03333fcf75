"""Export a run directory to ONNX: folded NS-Net, FP32 / FP16 / INT8, optional ORT fusions.

    python export/to_onnx.py --ckpt RUN_DIR --out nsnet.onnx [--fp16] [--opset N] [--optimize] [--int8]
                             [--json report.json]

Graph: input ``images`` float32 [B,3,S,S] (dynamic B) -> outputs ``logit`` [B], ``prob_fake`` [B];
``metadata_props`` per docs/formats.md. Every export is parity-checked against the unfolded
PyTorch model on random inputs before it is reported written, through the SDK's own ONNX Runtime
backend (export/parity.py; FP16 in a child process); INT8 parity is reported, not bounded.

- ``--optimize``: ONNX Runtime's transformer optimizer (model_type "clip"): Attention,
  SkipLayerNormalization, BiasGelu fusions, saved into the file (offline, provider-neutral:
  opt_level 0, so no hardware-specific layout is baked in).
- ``--fp16``: FP16 weights and compute, float32 I/O; LayerNorm (incl. the fused
  SkipLayerNormalization), Softmax and the sigmoid stay float32: CLIP ViTs have activation
  outliers that overflow fp16 in those reductions.
- ``--int8``: dynamic INT8 (per-channel symmetric 7-bit weights, MatMul + fused Attention) of
  the optimised FP32 graph, for CPU serving (7 bits: exact on AVX2 CPUs without VNNI, see
  `quantize_int8`).
- Models over 1 GiB of weights (ViT-L-14 FP32) are written with external data ``<out>.data``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path


from export.parity import Parity, artifact_logits, compare, parity_inputs, reference_logits
from nsnet_sdk.artifact import artifact_metadata, read_model_meta, read_onnx_metadata
from nsnet_sdk.constants import DEFAULT_THRESHOLD
from nsnet_sdk.containers import sha256_file

DEFAULT_OPSET = 17            # first opset with LayerNormalization: LN exports as one op
EXTERNAL_DATA_BYTES = 1 << 30  # weights above this go to <out>.data (protobuf's hard limit is 2 GiB)
# Ops kept in float32 in FP16 models: reductions that overflow with CLIP's activation outliers.
FP16_KEEP_FP32 = ["LayerNormalization", "SkipLayerNormalization", "Softmax", "Sigmoid"]
# Fused operators reported after --optimize (what the optimizer reports for model_type "clip").
FUSED_OPS = ("Attention", "MultiHeadAttention", "LayerNormalization", "SkipLayerNormalization",
             "Gelu", "FastGelu", "BiasGelu", "QuickGelu")

log = logging.getLogger("export.to_onnx")


class ExportError(Exception):
    """Export could not produce a valid model (failed check, parity past bounds)."""


class CheckpointError(ExportError):
    """The run directory is missing or cannot be loaded (CLI exit code 2)."""




def load_run(ckpt_dir: str | Path):
    """(NSNet, meta) of a run directory; `ExportError` with the path when missing or corrupt."""
    from nsnet_sdk.model import load_checkpoint
    from nsnet_sdk.model.checkpoint import WEIGHTS

    run = Path(ckpt_dir)
    if not run.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {run}")
    try:
        model, meta = load_checkpoint(run)
    except Exception as e:  # safetensors/json/open_clip raise assorted types for a damaged run dir
        raise CheckpointError(f"cannot load checkpoint {run}: {type(e).__name__}: {e}") from e
    meta = dict(meta, source_sha256=sha256_file(run / WEIGHTS))
    return model, meta


def _set_metadata(proto, metadata: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for k, v in metadata.items():
        proto.metadata_props.add(key=k, value=v)


def op_counts(model) -> dict[str, int]:
    """Node count per op type of a ModelProto or path (top-level graph)."""
    import onnx

    if not hasattr(model, "graph"):
        model = onnx.load(str(model), load_external_data=False)
    return dict(Counter(n.op_type for n in model.graph.node))


def _torch_export(folded, path: Path, size: int, opset: int) -> None:
    import torch

    dummy = torch.zeros(2, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript-exporter deprecation notice
        # dynamo=False: the TorchScript exporter emits attention as plain MatMul/Reshape/Transpose/
        # Softmax, the pattern ORT's optimizer fuses; the dynamo exporter's decomposition is not matched.
        torch.onnx.export(
            folded, (dummy,), str(path), input_names=["images"], output_names=["logit", "prob_fake"],
            dynamic_axes={"images": {0: "batch"}, "logit": {0: "batch"}, "prob_fake": {0: "batch"}},
            opset_version=opset, do_constant_folding=True, dynamo=False,
        )


def _optimize(model_path: Path, heads: int, width: int):
    """ORT transformer fusions; returns (ModelProto, fused-op counts)."""
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    opt = optimize_model(str(model_path), model_type="clip", num_heads=heads, hidden_size=width, opt_level=0)
    fused = {k: v for k, v in op_counts(opt.model).items() if k in FUSED_OPS}
    return opt.model, fused


def to_fp16(model):
    """FP16 weights and compute with float32 I/O; `FP16_KEEP_FP32` ops stay float32."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    wrapped = OnnxModel(model)
    wrapped.convert_float_to_float16(keep_io_types=True, op_block_list=FP16_KEEP_FP32)
    return wrapped.model


def save_onnx(model, path: Path) -> None:
    """Save a (rewritten) ModelProto: sorted, com.microsoft opset declared, external data over 1 GiB."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    # Rewritten graphs (fusions, fp16 casts) need sorting and the com.microsoft opset declared.
    OnnxModel(model).topological_sort()
    if any(n.domain == "com.microsoft" for n in model.graph.node) and \
            not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.add(domain="com.microsoft", version=1)
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()  # onnx appends to an existing external-data file
    size = sum(len(t.raw_data) for t in model.graph.initializer)
    external = size > EXTERNAL_DATA_BYTES
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)


def quantize_int8(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from nsnet_sdk.quiet import root_records_to

    # reduce_range: 7-bit weights. On x86 CPUs without VNNI, ONNX Runtime's u8×s8 kernels
    # (MatMulInteger, QAttention) sum pairs of products in int16 (vpmaddubsw), which saturates
    # with full-range 8-bit weights: on an AVX2-only EPYC the logits' correlation with the FP32
    # model fell to 0.83 (0.995 with 7-bit weights). With 7 bits every pair fits, so the kernel
    # is exact on every CPU; VNNI CPUs lose half a bit of weight resolution.
    # DefaultTensorType: ONNX shape inference cannot type com.microsoft ops' outputs; they are float.
    # The quantizer logs its advice to pre-process on the root logger: keep it in ours, at DEBUG.
    with root_records_to(log):
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=True, op_types_to_quantize=["MatMul", "Attention"],
                         extra_options={"MatMulConstBOnly": True,
                                        "DefaultTensorType": onnx.TensorProto.FLOAT})


def _transform(src: Path, tmp: Path, heads: int, width: int, *, fuse: bool, fp16: bool, int8: bool):
    """The shipped graph transformations of an FP32 file, in order: ORT fusions, FP16, INT8.
    Returns (ModelProto, fused-op counts); ``tmp`` holds intermediates."""
    import onnx

    fused: dict[str, int] = {}
    if fuse:
        proto, fused = _optimize(src, heads, width)
    else:
        proto = onnx.load(str(src))
    if fp16:
        proto = to_fp16(proto)
    if int8:  # quantize_dynamic works file to file
        save_onnx(proto, tmp / "fused.onnx")
        quantize_int8(tmp / "fused.onnx", tmp / "q.onnx")
        proto = onnx.load(str(tmp / "q.onnx"))
    return proto, fused


@dataclass
class ExportResult:
    path: Path
    precision: str
    parity: Parity | None
    fused: dict[str, int]


def export_onnx(ckpt_dir: str | Path, out_path: str | Path, *, fp16: bool = False, opset: int | None = None,
                optimize: bool = False, int8: bool = False) -> Path:
    """Export ``ckpt_dir`` to ``out_path`` (parity-checked); returns the path written.

    ``int8`` quantises the optimised FP32 graph (so it implies ``optimize``) and excludes ``fp16``.
    Raises `CheckpointError` for a missing/corrupt run directory, `ExportError` when a check fails.
    """
    return export_model(ckpt_dir, out_path, fp16=fp16, opset=opset, optimize=optimize, int8=int8).path


def export_model(ckpt_dir: str | Path, out_path: str | Path, *, fp16: bool = False, opset: int | None = None,
                 optimize: bool = False, int8: bool = False, parity_n: int = 4) -> ExportResult:
    """`export_onnx` returning the parity and fused-operator counts as well.

    The file is parity-checked on ``parity_n`` random inputs (0 skips it); past the bounds
    (FP32 ≤ 1e-4 logit, FP16 ≤ 5e-3 prob and ≥ 99.9 % agreement) or if ONNX Runtime crashes,
    `ExportError` is raised and nothing is left at ``out_path``.
    """
    import onnx

    from export.fold import fold_model

    if fp16 and int8:
        raise ExportError("--fp16 and --int8 are exclusive")
    out = Path(out_path)
    if out.suffix != ".onnx":
        raise ExportError(f"output must be an .onnx file: {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    optimize = optimize or int8
    opset = int(opset or DEFAULT_OPSET)
    if opset < DEFAULT_OPSET:
        raise ExportError(f"opset {opset} < {DEFAULT_OPSET}: LayerNormalization needs opset 17")

    model, meta = load_run(ckpt_dir)
    try:
        folded = fold_model(model)
    except NotImplementedError as e:  # an open_clip tower variant the fold does not cover
        raise ExportError(f"{ckpt_dir}: cannot fold backbone {meta.get('backbone')!r}: {e}") from e
    visual = model.visual
    size = int(visual.image_size[0])
    width = int(visual.transformer.width)
    heads = int(visual.transformer.resblocks[0].attn.num_heads)

    fused: dict[str, int] = {}
    parity = None
    with tempfile.TemporaryDirectory(prefix="nsnet-export-", dir=out.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        _torch_export(folded, raw, size, opset)
        proto, fused = _transform(raw, Path(tmp), heads, width, fuse=optimize, fp16=fp16, int8=int8)
        if optimize:
            log.info("fused operators: %s", fused)
            if fused.get("Attention", 0) != len(visual.transformer.resblocks):
                raise ExportError(f"--optimize: attention fusion did not fire in every block ({fused})")
        _set_metadata(proto, artifact_metadata(meta, precision=precision,
                                               source_sha256=meta["source_sha256"]))
        staged = Path(tmp) / out.name
        save_onnx(proto, staged)
        del proto
        onnx.checker.check_model(str(staged))  # by path: works with external data

        if parity_n > 0:
            from export.ort_run import OrtCrashError
            from nsnet_sdk.errors import NSNetError

            images = parity_inputs(parity_n, size)
            try:  # FP16 in a child process: a crash there is an ExportError, not a dead export
                logits = artifact_logits(staged, images, isolated=precision == "fp16")
            except (OrtCrashError, NSNetError) as e:
                raise ExportError(str(e)) from e
            parity = compare(precision, reference_logits(model, images), logits,
                             float(meta.get("threshold", DEFAULT_THRESHOLD)))
            log.info("parity %s", parity)
            if not parity.passes():
                raise ExportError(f"{out}: parity past bounds: {parity}")
        # Move into place only after every check passed.
        data = staged.with_name(staged.name + ".data")
        out_data = out.with_name(out.name + ".data")
        if out_data.exists():
            out_data.unlink()
        if data.exists():
            os.replace(data, out_data)
            os.chmod(out_data, 0o644)  # onnx creates it 0600; the model file itself is 0644
        os.replace(staged, out)
    return ExportResult(out, precision, parity, fused)


def tower_shape(backbone: str) -> tuple[int, int]:
    """(heads, width) of an open_clip ViT backbone, from its config (no weights built)."""
    import open_clip

    import nsnet_sdk.model  # noqa: F401  (registers the nsnet-tiny config with open_clip)

    cfg = open_clip.get_model_config(backbone)
    if cfg is None:
        raise ExportError(f"unknown open_clip backbone {backbone!r}")
    vc = cfg["vision_cfg"]
    width = int(vc["width"])
    return width // int(vc.get("head_width", 64)), width


def derive_onnx(src: str | Path, dst: str | Path, *, optimize: bool = False, fp16: bool = False,
                int8: bool = False) -> Path:
    """Variant of an FP32 export file without its checkpoint: fused (``optimize``), FP16 and/or INT8.

    The same transformations as `export_model` (INT8 implies the fusions), metadata copied with
    ``nsnet.precision`` updated. No parity check here: the caller has no reference model, so it
    compares the variant against ``src`` itself (as benchmarks/ does). Returns ``dst``.
    """
    import onnx

    src, dst = Path(src), Path(dst)
    if fp16 and int8:
        raise ExportError("fp16 and int8 are exclusive")
    meta = read_model_meta(src)
    if meta.precision != "fp32":
        raise ExportError(f"{src}: derive from the FP32 export (nsnet.precision = {meta.precision!r})")
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    already_fused = op_counts(src).get("Attention", 0) > 0
    with tempfile.TemporaryDirectory(prefix="nsnet-derive-", dir=dst.parent) as tmp:
        fuse = (optimize or int8) and not already_fused
        heads, width = tower_shape(meta.backbone) if fuse else (0, 0)
        proto, _ = _transform(src, Path(tmp), heads, width, fuse=fuse, fp16=fp16, int8=int8)
        _set_metadata(proto, meta.metadata(precision=precision))
        save_onnx(proto, dst)
    onnx.checker.check_model(str(dst))
    return dst


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python export/to_onnx.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="run directory (nsnet.safetensors + nsnet.json)")
    p.add_argument("--out", required=True, help="output .onnx path")
    p.add_argument("--fp16", action="store_true", help="FP16 weights/compute, float32 I/O")
    p.add_argument("--int8", action="store_true", help="dynamic INT8 quantisation for CPU (implies --optimize)")
    p.add_argument("--opset", type=int, default=None, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--optimize", action="store_true", help="apply ONNX Runtime transformer fusions")
    p.add_argument("--parity-n", type=int, default=4, help="random inputs for the parity check (0 skips)")
    p.add_argument("--json", help="also write the full report here (metadata, fused operators, parity)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.fp16 and args.int8:
        _parser().error("--fp16 and --int8 are exclusive")
    if not Path(args.ckpt).is_dir():  # before importing torch: an instant answer to a typo
        print(f"error: checkpoint directory not found: {args.ckpt}", file=sys.stderr)
        return 2
    if not log.handlers:  # main() may be called more than once in a process (demo/)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        res = export_model(args.ckpt, args.out, fp16=args.fp16, opset=args.opset, optimize=args.optimize,
                           int8=args.int8, parity_n=args.parity_n)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    report = {"out": str(res.path), "metadata": read_onnx_metadata(res.path), "fused_ops": res.fused,
              "parity": asdict(res.parity) if res.parity else None}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    data = res.path.with_name(res.path.name + ".data")
    print(summary_line(report, res.path.stat().st_size + (data.stat().st_size if data.exists() else 0)))
    return 0


def summary_line(report: dict, size_bytes: int) -> str:
    """The one line the CLI prints for an export ``report`` (the full report goes to ``--json``)."""
    md, parity = report["metadata"], report["parity"]
    fused = ", ".join(f"{op} {n}" for op, n in sorted(report["fused_ops"].items()) if n)
    check = ("parity not checked" if parity is None else
             f"parity on {parity['n']} input{'' if parity['n'] == 1 else 's'}: max|Δlogit| {parity['max_abs_logit']:.3g}")
    return (f"wrote {report['out']} ({size_bytes / 1e6:.1f} MB): precision {md['nsnet.precision']}, "
            f"threshold {md['nsnet.threshold']}" + (f", fused {fused}" if fused else "") + f"; {check}")


if __name__ == "__main__":
    sys.exit(main())
