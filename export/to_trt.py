"""Build a TensorRT engine from an exported NS-Net ONNX file.

    python export/to_trt.py --onnx nsnet.onnx --out nsnet.engine [--fp16] [--min-batch 1]
                            [--opt-batch 32] [--max-batch 128] [--workspace-gb 8]
                            [--timing-cache FILE]

Precision lives in the ONNX graph (strong typing). TensorRT deprecated weakly typed builds
(BuilderFlag.FP16) in 10.12 and removed them in 11.x (BuilderFlag.FP16 no longer exists there; the
STRONGLY_TYPED creation flag is kept but ignored, strong typing being always on), so ``--fp16``
does not set a builder flag:
an FP32 ONNX file is first converted with export's own FP16 conversion (FP16 weights and compute,
LayerNormalization / Softmax / Sigmoid kept in FP32, float32 I/O: the same graph as
``to_onnx.py --fp16``), and the network is parsed as strongly typed, so TensorRT runs each layer
in exactly the type the graph gives it. An FP16 ONNX file is used as is.

The sidecar records what was built: the TensorRT version and the engine's layers counted by output
type (``nsnet.trt.layer_types``, e.g. ``Half=812,Float=97``, from TensorRT's engine inspector).

One optimisation profile covers the dynamic batch (min/opt/max). FP32 builds clear TensorRT's TF32
flag (on by default), so an engine labelled fp32 computes in FP32. The timing cache is loaded from
and saved back to ``--timing-cache``, so rebuilds (other batch ranges, new weights) skip kernel
timing; a cache made on another GPU or TensorRT version is refused and a fresh one started. The
metadata travels in the sidecar ``<engine>.json`` (docs/formats.md). Engines run in the SDK's
TensorRT backend (`nsnet_sdk.backends.tensorrt`), which export/verify.py checks them through.

Written against the TensorRT 10/11 Python API; exercised only where TensorRT and CUDA exist.
Without them the CLI prints one line and exits 1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from nsnet_sdk.artifact import ONNXRUNTIME, engine_sidecar, read_model_meta, sidecar_document, write_sidecar


class TrtUnavailableError(RuntimeError):
    """TensorRT or a CUDA device is missing on this machine."""


class TrtBuildError(RuntimeError):
    """The ONNX file could not be parsed or the engine could not be built."""


def cuda_device_count() -> int:
    """CUDA devices the CUDA runtime (cuda-python) sees; 0 without cuda-python, a driver or a GPU.
    Through the CUDA runtime, not torch: a TensorRT install needs no torch."""
    from nsnet_sdk.backends.tensorrt import import_cudart

    try:
        cudart = import_cudart()
    except ImportError:
        return 0
    err, count = cudart.cudaGetDeviceCount()
    return int(count) if int(err) == 0 else 0


def _require_trt():
    """(tensorrt module) or `TrtUnavailableError` naming what is missing."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TrtUnavailableError(f"TensorRT is not installed (pip install 'nsnet-sdk[gpu-cu12]' or "
                                  f"'nsnet-sdk[gpu-cu13]', the driver's CUDA major): {e}") from None
    if cuda_device_count() == 0:
        raise TrtUnavailableError("no CUDA device visible to the CUDA runtime (cuda-python): "
                                  "TensorRT engines are built and run on a GPU")
    return trt


def clears_tf32(precision: str) -> bool:
    """Whether a build of ``precision`` must clear TensorRT's TF32 flag. TF32 is on by default (also
    in 11.x, strongly typed networks included): an engine labelled fp32 would run its matmuls in
    TF32 (10-bit mantissa) and miss verify's FP32 bound. FP16 graphs keep it for their FP32 layers."""
    return precision == "fp32"


def set_timing_cache(config, data: bytes, log=print) -> bool:
    """Attach a timing cache made from ``data`` to the builder ``config``; returns True when ``data``
    was used, False when a fresh cache was started instead.

    A cache from another GPU or TensorRT version is refused (``ignore_mismatch=False``) rather than
    used: its timings do not describe this device. `TrtBuildError` if even a fresh cache is refused.
    """
    if data:
        cache = config.create_timing_cache(data)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return True
        log("timing cache does not match this GPU/TensorRT version: starting a fresh one")
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise TrtBuildError("TensorRT refused a fresh timing cache")
    return False


def network_flags(trt) -> int:
    """Network creation flags: STRONGLY_TYPED on TensorRT 10 (opt-in there); none from 11 on, where
    strong typing is always on and the flag is deprecated and ignored."""
    if int(str(trt.__version__).split(".")[0]) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _dtype_label(fmt: str) -> str:
    f = fmt.lower()
    for key, label in (("bf16", "BFloat16"), ("fp16", "Half"), ("half", "Half"), ("fp32", "Float"),
                       ("float", "Float"), ("int8", "Int8"), ("int32", "Int32"), ("int64", "Int64")):
        if key in f:
            return label
    return "Other"


def layer_types(trt, plan: bytes, logger) -> str:
    """The engine's layers counted by the type of their first output ("Half=812,Float=97"), from
    TensorRT's engine inspector (layer detail kept by ProfilingVerbosity.DETAILED), or
    ``unknown (...)`` when the inspector gives no answer."""
    try:
        engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
        text = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
        counts: dict[str, int] = {}
        for layer in json.loads(text).get("Layers", []):
            outputs = layer.get("Outputs") if isinstance(layer, dict) else None
            if outputs:
                label = _dtype_label(str(outputs[0].get("Format/Datatype", "")))
                counts[label] = counts.get(label, 0) + 1
    except Exception as e:  # noqa: BLE001 - a diagnosis must not fail a finished build
        return f"unknown ({type(e).__name__}: {e})"
    return ",".join(f"{k}={v}" for k, v in sorted(counts.items())) or "unknown (no layer detail)"


def _parse_errors(parser) -> str:
    """Every parser error with the ONNX node it is about."""
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        where = ""
        name = err.node_name() if hasattr(err, "node_name") else ""
        op = err.node_operator() if hasattr(err, "node_operator") else ""
        if name or op:
            where = f" at node {name!r} ({op})"
        elif err.node() >= 0:
            where = f" at node #{err.node()}"
        lines.append(f"  {err.code()}{where}: {err.desc()}")
    return "\n".join(lines)


def _fp16_onnx(onnx_path: Path, tmp: Path) -> Path:
    """FP32 ONNX → mixed-precision FP16 ONNX (export's conversion), saved in ``tmp``."""
    import onnx

    from export.to_onnx import save_onnx, to_fp16

    model = onnx.load(str(onnx_path))
    if any(n.domain == "com.microsoft" for n in model.graph.node):
        raise TrtBuildError(f"{onnx_path}: contains ONNX Runtime contrib ops (an --optimize'd graph); "
                            "TensorRT needs the plain export (to_onnx.py without --optimize/--int8)")
    out = tmp / "fp16.onnx"
    save_onnx(to_fp16(model), out)
    return out


def build_engine(onnx_path: str | Path, engine_path: str | Path, *, fp16: bool = True, min_batch: int = 1,
                 opt_batch: int = 32, max_batch: int = 128, workspace_gb: float | None = None,
                 timing_cache: str | Path | None = None, verbose: bool = False) -> Path:
    """Build ``engine_path`` (+ sidecar ``<engine>.json``) from ``onnx_path``; returns the engine path.

    Raises `TrtUnavailableError` without TensorRT/CUDA, `TrtBuildError` for parse/build failures
    (parser errors list the ONNX node names), ValueError for an invalid batch range.
    """
    from nsnet_sdk.errors import ModelLoadError

    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= min_batch <= opt_batch <= max_batch, got {min_batch}/{opt_batch}/{max_batch}")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise TrtBuildError(f"ONNX file not found: {onnx_path}")
    try:
        meta = read_model_meta(onnx_path, ONNXRUNTIME)
    except ModelLoadError as e:  # not an ONNX file, a damaged one, or invalid metadata
        raise TrtBuildError(str(e)) from e
    src_precision = meta.precision
    if src_precision == "int8":
        raise TrtBuildError(f"{onnx_path}: an ONNX Runtime INT8 (dynamic quantisation) model cannot be built")
    trt = _require_trt()

    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)

    with tempfile.TemporaryDirectory(prefix="nsnet-trt-") as tmp:
        src = onnx_path
        precision = src_precision
        if fp16 and src_precision == "fp32":
            src, precision = _fp16_onnx(onnx_path, Path(tmp)), "fp16"
        # parse_from_file resolves external data relative to the file.
        if not parser.parse_from_file(str(src)):
            raise TrtBuildError(f"{onnx_path}: TensorRT's ONNX parser failed:\n{_parse_errors(parser)}")

    config = builder.create_builder_config()
    # Layer names and types stay in the engine, so the sidecar can say what was built.
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if clears_tf32(precision):
        config.clear_flag(trt.BuilderFlag.TF32)
    if workspace_gb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    inp = network.get_input(0)
    if inp.name != "images":
        raise TrtBuildError(f"{onnx_path}: first input is {inp.name!r}, expected 'images'")
    item = tuple(int(d) for d in inp.shape[1:])
    profile = builder.create_optimization_profile()
    profile.set_shape("images", (min_batch, *item), (opt_batch, *item), (max_batch, *item))
    config.add_optimization_profile(profile)

    cache_file = Path(timing_cache) if timing_cache else None
    cache_bytes = cache_file.read_bytes() if cache_file and cache_file.is_file() else b""
    set_timing_cache(config, cache_bytes, log=lambda msg: print(f"warning: {msg}", file=sys.stderr))

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise TrtBuildError(f"{onnx_path}: TensorRT could not build an engine (see the log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_engine = engine_path.with_name(engine_path.name + ".tmp")
    tmp_engine.write_bytes(bytes(plan))
    os.replace(tmp_engine, engine_path)
    if cache_file:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))

    side = sidecar_document(meta.metadata(), precision=precision, min_batch=min_batch, opt_batch=opt_batch,
                            max_batch=max_batch, strongly_typed=True)
    side["nsnet.trt.version"] = str(trt.__version__)
    side["nsnet.trt.layer_types"] = layer_types(trt, bytes(plan), logger)
    write_sidecar(engine_path, side)
    return engine_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python export/to_trt.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx", required=True, help="exported ONNX file (plain FP32 or FP16, not --optimize'd)")
    p.add_argument("--out", required=True, help="engine path; the sidecar <out>.json is written beside it")
    p.add_argument("--fp16", action="store_true", help="FP16 engine (LayerNorm/Softmax kept in FP32)")
    p.add_argument("--min-batch", type=int, default=1)
    p.add_argument("--opt-batch", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=128)
    p.add_argument("--workspace-gb", type=float, default=None, help="builder workspace limit (default: TensorRT's)")
    p.add_argument("--timing-cache", default=None, help="timing cache file, read if present and written back")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if not 1 <= args.min_batch <= args.opt_batch <= args.max_batch:
        p.error("need 1 <= --min-batch <= --opt-batch <= --max-batch")
    if not Path(args.onnx).is_file():
        p.error(f"--onnx: file not found: {args.onnx}")
    try:
        path = build_engine(args.onnx, args.out, fp16=args.fp16, min_batch=args.min_batch,
                            opt_batch=args.opt_batch, max_batch=args.max_batch,
                            workspace_gb=args.workspace_gb, timing_cache=args.timing_cache, verbose=args.verbose)
    except (TrtUnavailableError, TrtBuildError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path} and {engine_sidecar(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
