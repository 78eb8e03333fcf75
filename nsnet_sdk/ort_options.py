"""ONNX Runtime session options by model precision and execution provider: the one place that
decides the graph-optimisation level, used by the SDK backend, export's parity checks and the
benchmarks alike.

Why it exists: onnxruntime 1.32 on the CPU provider crashes the whole process (segfault) when it
runs an FP16 CLIP graph at ORT_ENABLE_ALL (one of the layout/fusion passes that only level ALL
enables), while ORT_ENABLE_EXTENDED runs the same graph correctly. Nothing we ship may crash a
process, so FP16 on the CPU provider is capped at EXTENDED. Every other combination gets ALL.

Spinning: ONNX Runtime's intra-op threads busy-wait between operators by default. In the SDK the
same cores decode and select patches while the model runs (decode threads, or the calling thread
between batches), and spinning threads take their time slices: on the CPU provider spinning is
off unless asked for (``allow_spinning=True`` or ``NSNET_ORT_SPINNING=1``); docs/benchmarks.md has
the end-to-end figures. GPU providers keep ONNX Runtime's default (their CPU threads are idle).
"""
from __future__ import annotations

import os
from typing import Any

PRECISIONS = ("fp32", "fp16", "int8")


def _is_cpu(provider: Any) -> bool:
    # Providers may be given as "CPUExecutionProvider", "cpu", or ("CPUExecutionProvider", {...}).
    if isinstance(provider, (tuple, list)):
        provider = provider[0] if provider else ""
    return str(provider or "CPUExecutionProvider").lower() in ("cpu", "cpuexecutionprovider")


def graph_optimization_level(precision: str, provider: Any = "CPUExecutionProvider"):
    """The ``onnxruntime.GraphOptimizationLevel`` safe for ``precision`` on ``provider``."""
    import onnxruntime as ort

    p = str(precision).lower()
    if p not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    if p == "fp16" and _is_cpu(provider):
        return ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    return ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def session_options_for(precision: str, provider: Any = "CPUExecutionProvider", *,
                        intra_op_threads: int | None = None,
                        inter_op_threads: int | None = None,
                        log_severity: int = 3, allow_spinning: bool | None = None):
    """``onnxruntime.SessionOptions`` for a model of ``precision`` ("fp32" | "fp16" | "int8") run
    on ``provider`` (first provider of the session; name, short name or (name, options) tuple).

    ``intra_op_threads`` / ``inter_op_threads``: None keeps ONNX Runtime's defaults.
    ``log_severity``: 3 (errors only) keeps ORT's optimiser warnings out of user output.
    ``allow_spinning``: None → `spinning_default` (off on the CPU provider).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = graph_optimization_level(precision, provider)
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = int(log_severity)
    if intra_op_threads:
        so.intra_op_num_threads = int(intra_op_threads)
    if inter_op_threads:
        so.inter_op_num_threads = int(inter_op_threads)
    spin = spinning_default(provider) if allow_spinning is None else bool(allow_spinning)
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin else "0")
    return so


def spinning_default(provider: Any = "CPUExecutionProvider") -> bool:
    """Whether intra-op threads spin when not told: ``NSNET_ORT_SPINNING`` ("1"/"0") if set, else
    off on the CPU provider (decode shares its cores) and ONNX Runtime's default (on) elsewhere."""
    env = os.environ.get("NSNET_ORT_SPINNING", "").strip()
    if env in ("0", "1"):
        return env == "1"
    return not _is_cpu(provider)
