"""OpenVINO backend for CPUs: the exported ``.onnx`` read directly (no IR conversion step), run in
FP32, BF16 (AMX / AVX-512-BF16 only) or INT8 (an NNCF-quantised artifact from
``python -m export.to_openvino``), with OpenVINO's latency or throughput hint and a thread count.

Also the CPU engine choice: `choose_cpu_engine` is a pure function of the CPU's features and the
measured table `cpu_engines.json` (rows written from ``python -m benchmarks.throughput``), so that
the fastest engine within a precision's parity bound is picked by data, never by a timing at load.
Imports ``openvino`` only when a backend is built.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from . import device_array
from ..cpuinfo import cpu_features
from ..errors import BackendUnavailableError, InferenceError, ModelLoadError

PRECISIONS = ("fp32", "bf16", "int8")
HINTS = ("latency", "throughput")
ENGINE_TABLE = Path(__file__).with_name("cpu_engines.json")

# Parity bounds against the FP32 reference, per precision (docs/openvino.md): FP32 as every FP32
# artifact; BF16 and INT8 measured on held-out inputs (export/to_openvino.py checks them).
PARITY_BOUNDS: dict[str, dict[str, float]] = {
    "fp32": {"max_abs_logit": 1e-4},
    "bf16": {"max_abs_prob": 2e-2, "agreement": 0.99},
    "int8": {"max_abs_prob": 5e-2, "agreement": 0.97},
}
_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
_ISA_ORDER = ("amx", "avx512", "avx2", "baseline")  # best first


# -- CPU features and the engine choice ---------------------------------------------------------

def isa_class(features: Iterable[str]) -> str:
    """``"amx"`` (AMX tiles with BF16/INT8), ``"avx512"``, ``"avx2"`` or ``"baseline"``: the rows
    of `cpu_engines.json` measured on the same class apply to this CPU."""
    f = set(features)
    if {"amx_bf16", "amx_int8", "avx512f"} <= f:
        return "amx"
    if "avx512f" in f:
        return "avx512"
    return "avx2" if {"avx2", "fma"} <= f else "baseline"


def bf16_supported(features: Iterable[str]) -> bool:
    """BF16 arithmetic in hardware (AMX or AVX-512-BF16). OpenVINO lists BF16 among its CPU
    capabilities on any AVX-512 CPU, emulating it where these are absent: slower, not faster."""
    return any(flag in set(features) for flag in _BF16_FLAGS)


def within_bound(precision: str, parity: Mapping[str, float]) -> bool:
    """Whether measured ``parity`` (keys of `export.parity.Parity`) is within ``precision``'s
    bound: max |Δlogit| for FP32; max |Δprob| and decision agreement for BF16 and INT8."""
    bound = PARITY_BOUNDS[precision]
    if "max_abs_logit" in bound:
        return float(parity.get("max_abs_logit", np.inf)) <= bound["max_abs_logit"]
    return (float(parity.get("max_abs_prob", np.inf)) <= bound["max_abs_prob"]
            and float(parity.get("agreement", 0.0)) >= bound["agreement"])


class EngineChoice(NamedTuple):
    """A CPU engine for an artifact: ``backend`` ("onnxruntime" | "openvino"), the ``precision``
    it runs in, and ``why`` (the measured row and the features behind it, for `nsnet info`)."""

    backend: str
    precision: str
    why: str
    row: Mapping[str, Any] | None = None  # the measured table row chosen (None: the baseline)


def load_engine_table(path: str | Path = ENGINE_TABLE) -> list[dict[str, Any]]:
    """The measured rows (see `cpu_engines.json`'s ``about``)."""
    return list(json.loads(Path(path).read_text(encoding="utf-8"))["rows"])


def choose_cpu_engine(features: Iterable[str], table: Sequence[Mapping[str, Any]], *,
                      precision: str = "fp32", artifact_precision: str = "fp32",
                      available: Iterable[str] = ("onnxruntime", "openvino")) -> EngineChoice:
    """The fastest engine for this CPU whose measured parity is within ``precision``'s bound.

    ``table`` rows: ``isa`` (class measured on), ``backend``, ``precision``, ``needs`` (CPU flags),
    ``artifact`` (precision of the file it runs), ``ratio`` (images/s ÷ ONNX Runtime FP32, same run)
    and ``parity``. Rows of this CPU's `isa_class` are used; where that class was never measured,
    the nearest lower measured class (its ISA is a subset of this CPU's). Without any usable row:
    ONNX Runtime in the artifact's precision, the baseline.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    feats, have = set(features), set(available)
    mine = isa_class(feats)
    measured = [c for c in _ISA_ORDER[_ISA_ORDER.index(mine):] if any(r["isa"] == c for r in table)]
    rows = [r for r in table if measured and r["isa"] == measured[0] and r["backend"] in have
            and r.get("artifact", "fp32") == artifact_precision
            and set(r.get("needs", ())) <= feats and within_bound(precision, r.get("parity", {}))]
    if not rows:
        return EngineChoice("onnxruntime" if "onnxruntime" in have or not have else sorted(have)[0],
                            artifact_precision,
                            f"no measured engine for this CPU ({mine}) and a {artifact_precision} artifact "
                            f"within the {precision} bound: ONNX Runtime, the baseline")
    best = max(rows, key=lambda r: float(r["ratio"]))
    used = ", ".join(sorted(set(best.get("needs", ())))) or "no special instructions"
    return EngineChoice(best["backend"], best["precision"],
                        f"{best['backend']} {best['precision']}: {float(best['ratio']):.2f}x ONNX Runtime "
                        f"FP32, measured on the {measured[0]} class ({best.get('measured', 'measured table')}; "
                        f"uses {used}); parity within the {precision} bound; this CPU: {mine}", dict(best))


def installed_cpu_engines() -> list[str]:
    """The CPU runtimes installed here that the choice may pick (found, not imported)."""
    from importlib.util import find_spec

    return [name for name in ("onnxruntime", "openvino") if find_spec(name) is not None]


def auto_cpu_engine(precision: str = "fp32", artifact_precision: str = "fp32") -> EngineChoice:
    """`choose_cpu_engine` for this machine: its /proc/cpuinfo flags, the checked-in table, and the
    runtimes installed here (``device="cpu"`` with backend auto)."""
    return choose_cpu_engine(cpu_features(), load_engine_table(), precision=precision,
                             artifact_precision=artifact_precision, available=installed_cpu_engines())


# -- the backend --------------------------------------------------------------------------------

class OpenVinoBackend:
    """Runs an exported NS-Net ``.onnx`` (FP32, or INT8 from export/to_openvino.py) with OpenVINO
    on the CPU.

    ``precision``: None → the artifact's (fp32 or int8); ``"bf16"`` runs an FP32 artifact with
    ``INFERENCE_PRECISION_HINT=bf16`` and needs AMX or AVX-512-BF16. ``hint``: ``"latency"``
    (default: one request, all threads) or ``"throughput"`` (OpenVINO's streams; a batch is split
    across them). ``intra_op_threads``: ``INFERENCE_NUM_THREADS`` (None: OpenVINO's choice).
    """

    name = "openvino"

    def __init__(self, path: str | Path, precision: str | None = None, hint: str | None = None,
                 intra_op_threads: int | None = None) -> None:
        from ..artifact import ONNXRUNTIME, read_model_meta

        self.path = Path(path)
        src = str(self.path)
        if hint is not None and hint not in HINTS:
            raise ValueError(f"hint must be one of {HINTS}, got {hint!r}")
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        try:
            import openvino as ov
        except ImportError as e:
            raise BackendUnavailableError(f"{src}: OpenVINO is not installed: pip install "
                                          "'nsnet-sdk[openvino]'", source=src) from e
        meta = read_model_meta(self.path, ONNXRUNTIME)  # every nsnet.* field validated
        self.metadata = meta.metadata()
        self.precision = _run_precision(src, meta.precision, precision)
        self.features = cpu_features()
        if self.precision == "bf16" and not bf16_supported(self.features):
            raise BackendUnavailableError(
                f"{src}: precision='bf16' needs a CPU with AMX or AVX-512-BF16 ({'/'.join(_BF16_FLAGS)}"
                f" in /proc/cpuinfo); this one has neither: use precision='fp32'", source=src)
        config: dict[str, Any] = {
            # An INT8 artifact's non-quantised layers stay FP32: its parity bound was measured so.
            "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
            "PERFORMANCE_HINT": (hint or "latency").upper(),
        }
        if intra_op_threads:
            config["INFERENCE_NUM_THREADS"] = int(intra_op_threads)
        self.hint = hint or "latency"
        core = ov.Core()
        try:
            model = core.read_model(src)
            self._compiled = core.compile_model(model, "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own
            raise ModelLoadError(f"{src}: OpenVINO could not load the model: {e}", source=src) from e
        names = {n for o in self._compiled.outputs for n in o.get_names()}
        inputs = {n for i in self._compiled.inputs for n in i.get_names()}
        if "images" not in inputs or "logit" not in names:
            raise ModelLoadError(f"{src}: expected input 'images' and output 'logit', found inputs "
                                 f"{sorted(inputs)} and outputs {sorted(names)}", source=src)
        self._logit = self._compiled.output("logit")
        self._requests = max(1, int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._request = self._compiled.create_infer_request()
        self._queue = ov.AsyncInferQueue(self._compiled, self._requests) if self._requests > 1 else None
        caps = " ".join(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        self.device = f"CPU ({isa_class(self.features)}; {self.precision}; {self.hint})"
        self.why = (f"OpenVINO {ov.__version__} {self.precision} on {isa_class(self.features)} "
                    f"(OpenVINO CPU capabilities: {caps}; {self._requests} infer request(s))")

    def run(self, images: Any) -> np.ndarray:
        """float32 (B,3,S,S) host array → float32 logits (B,)."""
        if device_array(images) is not None:
            raise InferenceError(f"{self.path}: OpenVINO runs on the CPU; got a CUDA array",
                                 source=str(self.path))
        images = np.ascontiguousarray(images, dtype=np.float32)
        n = len(images)
        try:
            if self._queue is None or n < 2:
                out = self._request.infer({"images": images})[self._logit]
                return np.asarray(out, np.float32).reshape(n)
            # Throughput hint: one slice of the batch per stream, run concurrently.
            parts = np.array_split(np.arange(n), min(n, self._requests))
            results: dict[int, np.ndarray] = {}
            self._queue.set_callback(lambda req, i: results.__setitem__(
                i, np.array(req.get_tensor(self._logit).data, np.float32).reshape(-1)))
            for i, idx in enumerate(parts):
                self._queue.start_async({"images": images[idx[0]:idx[-1] + 1]}, i)
            self._queue.wait_all()
            return np.concatenate([results[i] for i in range(len(parts))]).reshape(n)
        except Exception as e:  # OpenVINO's own errors (shape, memory)
            raise InferenceError(f"{self.path}: OpenVINO failed on a batch of {n}: {e}",
                                 source=str(self.path)) from e

    def kernels(self) -> dict[str, int]:
        """Count of the CPU primitives OpenVINO picked for its compute layers (e.g.
        ``brgemm_avx512_amx_bf16``): which instructions a run really used. Meaningful after the
        first `run` (with a dynamic batch, primitives are chosen at the first shape)."""
        heavy = ("FullyConnected", "MatMul", "Convolution", "Subgraph", "ScaledDotProductAttention")
        out: dict[str, int] = {}
        for op in self._compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            if info["layerType"].astype(str) in heavy:
                kind = info["primitiveType"].astype(str)
                out[kind] = out.get(kind, 0) + 1
        return out

    def close(self) -> None:
        self._queue = self._request = self._compiled = None


def _run_precision(src: str, artifact: str, asked: str | None) -> str:
    """The precision a run uses: an INT8 artifact runs as INT8; an FP32 one as FP32 or BF16."""
    if artifact == "int8":
        if asked not in (None, "int8"):
            raise ModelLoadError(f"{src}: an INT8 artifact runs as int8, not {asked!r}: pass the FP32 "
                                 "export for fp32/bf16", source=src)
        return "int8"
    if artifact != "fp32":
        raise ModelLoadError(f"{src}: OpenVINO runs FP32 and INT8 artifacts; this one is "
                             f"{artifact!r}: pass the FP32 export", source=src)
    if asked == "int8":
        raise ModelLoadError(f"{src}: int8 needs a quantised artifact: python -m export.to_openvino "
                             f"--onnx {src} --calibration IMAGES_DIR", source=src)
    return asked or "fp32"
