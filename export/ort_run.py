"""Run an exported model with ONNX Runtime (CPU), optionally in a child process.

A native crash inside ONNX Runtime (the FP16-on-CPU hazard in nsnet_sdk/ort_options.py)
kills the process that hosts it. Parity checks of FP16 graphs therefore run in a child process:
a crash there comes back as `OrtCrashError` naming the signal, and the caller reports a failure.

    python -m export.ort_run MODEL.onnx IN.npy OUT.npz PRECISION   (used by run_isolated)
"""
from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from nsnet_sdk.ort_options import session_options_for


class OrtCrashError(RuntimeError):
    """ONNX Runtime died (signal or non-zero exit) while running a model in the child process."""


def run(model: str | Path, images: np.ndarray, precision: str = "fp32", batch: int = 16,
        threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(logit, prob_fake) float64 arrays of ``images`` (N,3,S,S) float32, in this process."""
    import onnxruntime as ort

    so = session_options_for(precision, "CPUExecutionProvider", intra_op_threads=threads)
    sess = ort.InferenceSession(str(model), sess_options=so, providers=["CPUExecutionProvider"])
    logits, probs = [], []
    for i in range(0, len(images), batch):
        lo, pr = sess.run(["logit", "prob_fake"], {"images": np.ascontiguousarray(images[i:i + batch], np.float32)})
        logits.append(lo.reshape(-1))
        probs.append(pr.reshape(-1))
    return np.concatenate(logits).astype(np.float64), np.concatenate(probs).astype(np.float64)


def run_isolated(model: str | Path, images: np.ndarray, precision: str = "fp32",
                 timeout: float = 900.0) -> tuple[np.ndarray, np.ndarray]:
    """`run` in a child process; raises `OrtCrashError` if the child crashes or fails."""
    with tempfile.TemporaryDirectory(prefix="nsnet-ort-") as tmp:
        src, dst = Path(tmp) / "in.npy", Path(tmp) / "out.npz"
        np.save(src, np.ascontiguousarray(images, np.float32))
        cmd = [sys.executable, "-m", "export.ort_run", str(model), str(src), str(dst), precision]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise OrtCrashError(f"{model}: ONNX Runtime ({precision}) did not finish in {timeout:.0f}s") from e
        if proc.returncode != 0:
            rc = proc.returncode
            how = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
            tail = (proc.stderr or "").strip().splitlines()[-3:]
            raise OrtCrashError(f"{model}: ONNX Runtime ({precision}) crashed with {how}: {' | '.join(tail)}")
        with np.load(dst) as out:  # NpzFile holds the file open until closed
            return out["logit"], out["prob_fake"]


def _main(argv: list[str]) -> int:
    model, src, dst, precision = argv
    logit, prob = run(model, np.load(src), precision)
    np.savez(dst, logit=logit, prob_fake=prob)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
