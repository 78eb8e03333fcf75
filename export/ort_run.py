"""The SDK's ONNX Runtime backend in a child process, so that a native crash is a failed check.

onnxruntime's CPU provider can crash the process (segfault) on FP16 CLIP graphs (see
nsnet_sdk/ort_options.py). Export and verify run FP16 files through `IsolatedOrtBackend`: the child
builds `nsnet_sdk.backends.onnxruntime.OrtBackend` on the CPU provider and scores the batches it is
sent over a pipe, one at a time (memory stays one batch); a crash comes back as `OrtCrashError`
naming the signal.

    python -m export.ort_run MODEL.onnx     (the child; spoken to over stdin/stdout by the parent)
"""
from __future__ import annotations

import io
import json
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

_ARRAY, _JSON, _ERROR = b"A", b"J", b"E"
_HEADER = struct.Struct("<cQ")  # tag, payload length


class OrtCrashError(RuntimeError):
    """The child running ONNX Runtime died (signal, non-zero exit), failed, or stopped answering."""


def _send(stream: BinaryIO, tag: bytes, payload: bytes) -> None:
    stream.write(_HEADER.pack(tag, len(payload)) + payload)
    stream.flush()


def _array_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _read_exact(stream: BinaryIO, n: int, timeout: float | None) -> bytes | None:
    """``n`` bytes from a raw pipe, or None at end of stream; `TimeoutError` after ``timeout`` s."""
    out = bytearray()
    while len(out) < n:
        if timeout is not None and not select.select([stream], [], [], timeout)[0]:
            raise TimeoutError
        chunk = stream.read(n - len(out))
        if not chunk:
            return None
        out += chunk
    return bytes(out)


def _receive(stream: BinaryIO, timeout: float | None = None) -> tuple[bytes, bytes] | None:
    head = _read_exact(stream, _HEADER.size, timeout)
    if head is None:
        return None
    tag, n = _HEADER.unpack(head)
    body = _read_exact(stream, n, timeout)
    return None if body is None else (tag, body)


class IsolatedOrtBackend:
    """`nsnet_sdk.backends.onnxruntime.OrtBackend` (CPU provider) in a child process; the same
    ``metadata`` / ``device`` / ``run`` / ``close`` surface. Every failure of the child, load
    included, is an `OrtCrashError` naming the model."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, timeout: float = 900.0) -> None:
        self.path, self.timeout = Path(path), float(timeout)
        # stderr to a file: a chatty child must never block on a full pipe nobody reads.
        self._stderr = tempfile.TemporaryFile()
        # bufsize=0: raw pipes, so select() sees exactly what has not been read yet.
        # The child imports this very checkout's `export` and `nsnet_sdk`, installed or not.
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        self._proc = subprocess.Popen([sys.executable, "-m", "export.ort_run", str(self.path)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._stderr, bufsize=0, env=env)
        hello = json.loads(self._answer(_JSON, "loading"))
        self.metadata: dict[str, str] = hello["metadata"]
        self.device: str = hello["device"]

    def _fail(self, what: str) -> OrtCrashError:
        proc = self._proc
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        self._stderr.seek(0)
        tail = self._stderr.read().decode("utf-8", "replace").strip().splitlines()[-3:]
        how = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
        self._close_pipes()
        return OrtCrashError(f"{self.path}: ONNX Runtime child crashed with {how} while {what}: "
                             f"{' | '.join(tail)}")

    def _answer(self, want: bytes, what: str) -> bytes:
        try:
            msg = _receive(self._proc.stdout, self.timeout)
        except TimeoutError:
            self._proc.kill()
            raise OrtCrashError(f"{self.path}: ONNX Runtime child did not answer within "
                                f"{self.timeout:.0f}s while {what}") from None
        if msg is None:
            raise self._fail(what)
        tag, body = msg
        if tag == _ERROR:
            self.close()
            raise OrtCrashError(f"{self.path}: {body.decode('utf-8', 'replace')}")
        if tag != want:
            raise self._fail(f"{what} (unexpected reply {tag!r})")
        return body

    def run(self, images: np.ndarray) -> np.ndarray:
        """float32 (B,3,S,S) → float32 logits (B,), computed in the child."""
        if self._proc.stdin is None:
            raise OrtCrashError(f"{self.path}: the isolated ONNX Runtime backend is closed")
        try:
            _send(self._proc.stdin, _ARRAY, _array_bytes(np.ascontiguousarray(images, np.float32)))
        except (BrokenPipeError, OSError):
            raise self._fail(f"sending a batch of {len(images)}") from None
        body = self._answer(_ARRAY, f"running a batch of {len(images)}")
        return np.load(io.BytesIO(body), allow_pickle=False)

    def _close_pipes(self) -> None:
        for s in (self._proc.stdin, self._proc.stdout, self._stderr):
            if s is not None:
                s.close()
        self._proc.stdin = None

    def close(self) -> None:
        """End the child (idempotent)."""
        if self._proc.stdin is None:
            return
        try:
            _send(self._proc.stdin, _ARRAY, b"")  # empty payload: done
        except OSError:
            pass
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._close_pipes()


def _serve(model: str) -> int:
    """The child: load the SDK backend, then score each batch read from stdin until an empty one."""
    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    from nsnet_sdk.backends import load_backend
    from nsnet_sdk.errors import NSNetError

    try:
        backend = load_backend("onnxruntime", model, providers=["CPUExecutionProvider"])
    except NSNetError as e:
        _send(out, _ERROR, f"{type(e).__name__}: {e}".encode())
        return 1
    _send(out, _JSON, json.dumps({"metadata": backend.metadata, "device": backend.device}).encode())
    while True:
        msg = _receive(inp)
        if msg is None or not msg[1]:
            return 0
        images = np.load(io.BytesIO(msg[1]), allow_pickle=False)
        try:
            logit = backend.run(images)
        except NSNetError as e:
            _send(out, _ERROR, f"{type(e).__name__}: {e}".encode())
            return 1
        _send(out, _ARRAY, _array_bytes(np.asarray(logit, np.float32)))


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1]))
