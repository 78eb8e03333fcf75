"""Write a Triton Inference Server model repository for an NS-Net ONNX model or TensorRT engine.

    python export/to_triton.py --model nsnet.onnx --out model_repository/ [--max-batch 64]
        [--instances 1] [--preprocess python|client]

Layout (docs/nvidia.md, "Triton"):

    model_repository/
      nsnet/             config.pbtxt, 1/model.onnx (onnxruntime_onnx) or 1/model.plan (tensorrt_plan)
      nsnet_preprocess/  config.pbtxt, 1/model.py   Python backend: encoded bytes → normalised mosaic
      nsnet_ensemble/    config.pbtxt, 1/           bytes in → logit and prob_fake out

``--preprocess client`` writes only ``nsnet``: the client sends mosaics it made with
`nsnet_sdk.pipeline.preprocess_batch`. The Python model's code is runtime code,
`nsnet_sdk.pipeline.triton.TritonPythonModel`: the generated ``model.py`` only imports it, so the
container needs the installed package (``pip install 'nsnet-sdk[cpu]'``), not this checkout.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from nsnet_sdk.artifact import artifact_kind, read_model_meta
from nsnet_sdk.errors import NSNetError
from nsnet_sdk.pipeline import PatchConfig
from nsnet_sdk.pipeline.triton import BYTES_INPUT, CONFIG_PARAMETER

MODEL, PREPROCESS, ENSEMBLE = "nsnet", "nsnet_preprocess", "nsnet_ensemble"
# ONNX TensorProto element types → Triton data types (those an NS-Net export can carry).
_ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 7: "TYPE_INT64", 6: "TYPE_INT32"}


@dataclass(frozen=True)
class Tensor:
    """One model input or output as Triton sees it: its name, type and per-item dims."""

    name: str
    dtype: str
    dims: tuple[int, ...]  # without the batch dimension; () for one value per item


@dataclass(frozen=True)
class ModelIO:
    platform: str  # "onnxruntime_onnx" or "tensorrt_plan"
    filename: str  # what Triton loads from <model>/1/
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    config: PatchConfig
    max_batch: int | None  # the engine profile's bound; None for ONNX (any batch)


def read_model(path: Path) -> ModelIO:
    """Names, types and shapes Triton needs, read from the ONNX graph or the engine's sidecar;
    the metadata validated by `nsnet_sdk.artifact.read_model_meta` (`ModelLoadError` if unusable)."""
    kind = artifact_kind(path)
    meta = read_model_meta(path, kind) if kind in ("onnxruntime", "tensorrt") else None
    if kind == "onnxruntime":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        init = {i.name for i in model.graph.initializer}

        def tensor(v) -> Tensor:
            shape = [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
            return Tensor(v.name, _ONNX_TO_TRITON[v.type.tensor_type.elem_type], tuple(shape[1:]))

        inputs = tuple(tensor(v) for v in model.graph.input if v.name not in init)
        outputs = tuple(tensor(v) for v in model.graph.output)
        platform, filename, max_batch = "onnxruntime_onnx", "model.onnx", None
    elif kind == "tensorrt":
        cfg = meta.preprocess
        # The engine keeps the ONNX export's I/O contract (docs/formats.md): images → logit, prob_fake.
        inputs = (Tensor("images", "TYPE_FP32", (3, cfg.size, cfg.size)),)
        outputs = (Tensor("logit", "TYPE_FP32", ()), Tensor("prob_fake", "TYPE_FP32", ()))
        platform, filename = "tensorrt_plan", "model.plan"
        max_batch = _engine_max_batch(path, meta.engine_batches)
    else:
        raise ValueError(f"{path}: Triton serves an .onnx model or a TensorRT .engine/.plan, not a {kind} artifact")
    return ModelIO(platform, filename, inputs, outputs, meta.preprocess, max_batch)


def _engine_max_batch(path: Path, profile: tuple[int, int, int] | None) -> int:
    """The largest batch Triton may send the engine. Triton's dynamic batcher forms batches of
    any size from 1 to ``max_batch_size`` and its TensorRT backend does not pad them, so an engine
    whose profile starts above 1 would reject every smaller batch: refused, as is an engine whose
    sidecar does not say its profile."""
    if profile is None:
        raise ValueError(f"{path}: the engine's sidecar records no optimisation profile "
                         "(nsnet.trt.min_batch/opt_batch/max_batch); rebuild it with export/to_trt.py")
    if profile[0] > 1:
        raise ValueError(f"{path}: the engine was built with minimum batch {profile[0]}, but Triton "
                         "sends batches of 1 and up without padding; rebuild it with --min-batch 1")
    return profile[2]


def _dims(t: Tensor) -> str:
    # Triton needs at least one dim per item: a per-item scalar is declared [1] and reshaped to [].
    if t.dims:
        return f"dims: [ {', '.join(map(str, t.dims))} ]"
    return "dims: [ 1 ]\n    reshape: { shape: [ ] }"


def _io(kind: str, tensors: Sequence[Tensor]) -> str:
    body = ",\n".join(f"  {{\n    name: \"{t.name}\"\n    data_type: {t.dtype}\n    {_dims(t)}\n  }}"
                      for t in tensors)
    return f"{kind} [\n{body}\n]\n"


def model_config(io: ModelIO, max_batch: int, instances: int) -> str:
    """config.pbtxt of the network: dynamic batching up to ``max_batch``, ``instances`` per GPU."""
    return (f"name: \"{MODEL}\"\nplatform: \"{io.platform}\"\nmax_batch_size: {max_batch}\n"
            + _io("input", io.inputs) + _io("output", io.outputs)
            + f"dynamic_batching {{\n  max_queue_delay_microseconds: 500\n}}\n"
            f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_GPU\n  }}\n]\n")


def preprocess_config(io: ModelIO, max_batch: int, instances: int) -> str:
    """config.pbtxt of the Python-backend preprocessing: bytes → the network's input tensor."""
    image = io.inputs[0]
    return (f"name: \"{PREPROCESS}\"\nbackend: \"python\"\nmax_batch_size: {max_batch}\n"
            + _io("input", [Tensor(BYTES_INPUT, "TYPE_STRING", (1,))])
            + _io("output", [Tensor(image.name, "TYPE_FP32", image.dims)])
            + f"dynamic_batching {{\n  max_queue_delay_microseconds: 500\n}}\n"
            f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_CPU\n  }}\n]\n"
            f"parameters {{\n  key: \"{CONFIG_PARAMETER}\"\n  value: {{ string_value: {json.dumps(io.config.to_json())} }}\n}}\n")


def ensemble_config(io: ModelIO, max_batch: int) -> str:
    """config.pbtxt of the ensemble: ``image_bytes`` → nsnet_preprocess → nsnet → outputs."""
    image = io.inputs[0]
    outs = "\n".join(f"      output_map {{ key: \"{t.name}\" value: \"{t.name}\" }}" for t in io.outputs)
    shown = tuple(Tensor(t.name, t.dtype, t.dims or (1,)) for t in io.outputs)  # as the API shows them
    return (f"name: \"{ENSEMBLE}\"\nplatform: \"ensemble\"\nmax_batch_size: {max_batch}\n"
            + _io("input", [Tensor(BYTES_INPUT, "TYPE_STRING", (1,))]) + _io("output", shown)
            + "ensemble_scheduling {\n  step [\n"
            f"    {{\n      model_name: \"{PREPROCESS}\"\n      model_version: -1\n"
            f"      input_map {{ key: \"{BYTES_INPUT}\" value: \"{BYTES_INPUT}\" }}\n"
            f"      output_map {{ key: \"{image.name}\" value: \"mosaic\" }}\n    }},\n"
            f"    {{\n      model_name: \"{MODEL}\"\n      model_version: -1\n"
            f"      input_map {{ key: \"{image.name}\" value: \"mosaic\" }}\n{outs}\n    }}\n  ]\n}}\n")


# The whole model is runtime code in nsnet_sdk: the container needs the installed package only.
_MODEL_PY = '''"""Triton Python backend: encoded image bytes → the NS-Net network input (nsnet_sdk's pipeline)."""
from nsnet_sdk.pipeline.triton import TritonPythonModel  # noqa: F401  (the class Triton loads)
'''


def write_repository(model: Path, out: Path, *, max_batch: int = 64, instances: int = 1,
                     preprocess: str = "python") -> list[Path]:
    """Write the repository under ``out`` (existing model folders are replaced); returns the
    config.pbtxt paths written."""
    model = Path(model)
    if max_batch < 1 or instances < 1:
        raise ValueError(f"--max-batch and --instances must be >= 1, got {max_batch}, {instances}")
    if preprocess not in ("python", "client"):
        raise ValueError(f"--preprocess must be 'python' or 'client', got {preprocess!r}")
    io = read_model(model)
    if io.max_batch is not None and max_batch > io.max_batch:
        raise ValueError(f"{model}: --max-batch {max_batch} exceeds the engine profile's maximum "
                         f"batch {io.max_batch}; rebuild the engine or lower --max-batch")
    configs = {MODEL: model_config(io, max_batch, instances)}
    if preprocess == "python":
        configs[PREPROCESS] = preprocess_config(io, max_batch, instances)
        configs[ENSEMBLE] = ensemble_config(io, max_batch)
    written = []
    for name, text in configs.items():
        folder = Path(out) / name
        if folder.exists():
            shutil.rmtree(folder)
        (folder / "1").mkdir(parents=True)
        (folder / "config.pbtxt").write_text(text)
        written.append(folder / "config.pbtxt")
    shutil.copyfile(model, Path(out) / MODEL / "1" / io.filename)
    if preprocess == "python":
        (Path(out) / PREPROCESS / "1" / "model.py").write_text(_MODEL_PY)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, type=Path, help="nsnet.onnx or nsnet.engine (with its .json)")
    ap.add_argument("--out", required=True, type=Path, help="model repository folder")
    ap.add_argument("--max-batch", type=int, default=64, help="Triton max_batch_size (default 64)")
    ap.add_argument("--instances", type=int, default=1, help="model instances per GPU (default 1)")
    ap.add_argument("--preprocess", choices=("python", "client"), default="python",
                    help="python: add nsnet_preprocess + nsnet_ensemble (bytes in); client: network only")
    args = ap.parse_args(argv)
    try:
        written = write_repository(args.model, args.out, max_batch=args.max_batch,
                                   instances=args.instances, preprocess=args.preprocess)
    except (OSError, ValueError, KeyError, NSNetError) as e:
        print(f"to_triton: {e}", file=sys.stderr)
        return 1
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
