"""TensorRT backend: a serialised engine (``nsnet.engine`` + ``nsnet.engine.json`` sidecar) run
with the TensorRT 10/11 tensor API and cuda-python; pinned host buffers, one non-blocking stream,
async copies. A CUDA input is bound by its device pointer (no copy), and a producer may write a
host batch straight into pinned memory the backend lends (`TensorRTBackend.input_buffer`).

The stream is created non-blocking: a blocking stream synchronises implicitly with the legacy
default stream, so every kernel another thread queues there (the torch pipeline preparing batch
n+1) would wait for this engine's batch n and the other way round. The price: work on the legacy
default stream is no longer ordered before this stream's, so a CUDA input must either be complete
(its producer synchronised) or say the stream it was written on (``__cuda_array_interface__``
version 3 ``stream``), which this stream then waits on through an event, without a host wait.

Batches larger than the engine's optimisation profile are split; smaller than its minimum are
padded. Written against the documented APIs; exercised only where CUDA and TensorRT exist.
"""
from __future__ import annotations

import ctypes
import functools
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import ModelMeta, read_sidecar
from ..errors import BackendUnavailableError, InferenceError, ModelLoadError
from . import device_array


def import_cudart():
    """The CUDA runtime bindings of cuda-python (`ImportError` when not installed)."""
    try:  # cuda-python >= 12.6 moved the bindings; older releases expose cuda.cudart
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    return cudart


@functools.lru_cache(maxsize=None)
def _pinned_block(nbytes: int) -> type:
    """A ctypes type for ``nbytes`` of lent pinned memory: a subclass, because plain ctypes arrays
    take no weak references (the finaliser in `TensorRTBackend.input_buffer` needs one)."""
    return type("PinnedBlock", (ctypes.c_char * nbytes,), {})


def producer_stream(x: Any) -> int | None:
    """The CUDA stream a CUDA array says it was written on (``__cuda_array_interface__`` version 3
    ``stream``: 1 legacy default, 2 per-thread default, else a ``cudaStream_t``), or None."""
    cai = getattr(x, "__cuda_array_interface__", None) or {}
    stream = cai.get("stream") if int(cai.get("version", 0)) >= 3 else None
    return int(stream) if stream else None


class TensorRTBackend:
    """Runs a TensorRT engine whose input is ``images`` [B,3,S,S] and outputs include ``logit``."""

    name = "tensorrt"
    accepts_device_input = True  # a CUDA array is bound as 'images' by its pointer

    def __init__(self, path: str | Path, device_id: int = 0, *, meta: ModelMeta | None = None) -> None:
        """``meta``: the sidecar's validated metadata when the caller has already read it."""
        self.path = Path(path)
        self._meta = meta if meta is not None else ModelMeta.parse(read_sidecar(self.path), str(self.path))
        self.metadata = dict(self._meta.raw)
        try:
            import tensorrt as trt
            self._cudart = import_cudart()
        except ImportError as e:
            raise BackendUnavailableError(
                f"{self.path}: the TensorRT backend needs tensorrt and cuda-python (pip install "
                f"'nsnet-sdk[gpu-cu12]' or 'nsnet-sdk[gpu-cu13]', the driver's CUDA major): {e}",
                source=str(self.path)) from e
        self._trt = trt
        self._allocs: list[tuple[str, int]] = []
        self._stream = self._ready = None
        self.context = self.engine = None
        self._lock = threading.Lock()
        # The lent pinned buffers (`input_buffer`); re-entrant: a buffer's finaliser may run under it.
        self._pool_lock = threading.RLock()
        self._lent: dict[int, int] = {}  # address → bytes, while a caller holds it
        self._free_pinned: list[tuple[int, int]] = []
        self._device_id = int(device_id)
        self.device = f"cuda:{self._device_id}"
        try:
            self._load()
        except BaseException as e:
            self.close()  # whatever was allocated before the failure
            if isinstance(e, InferenceError):  # a CUDA call failed: the model cannot be loaded
                raise ModelLoadError(str(e), source=str(self.path)) from e
            raise

    def _load(self) -> None:
        trt, cudart = self._trt, self._cudart
        self._check(cudart.cudaSetDevice(self._device_id), "cudaSetDevice")
        try:
            blob = self.path.read_bytes()
        except OSError as e:
            raise ModelLoadError(f"{self.path}: cannot read the engine: {e}",
                                 source=str(self.path)) from e
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise ModelLoadError(f"{self.path}: TensorRT could not deserialise the engine (built "
                                 "with another TensorRT version or for another GPU?)",
                                 source=str(self.path))
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._outputs = [n for n in names
                         if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if "images" not in names or "logit" not in self._outputs:
            raise ModelLoadError(f"{self.path}: engine tensors {names} lack 'images'/'logit'",
                                 source=str(self.path))
        if self.engine.get_tensor_dtype("images") != trt.float32:
            raise ModelLoadError(f"{self.path}: engine input 'images' is "
                                 f"{self.engine.get_tensor_dtype('images')}, expected float32",
                                 source=str(self.path))
        self.context = self.engine.create_execution_context()
        lo, _opt, hi = self.engine.get_tensor_profile_shape("images", 0)
        self.min_batch, self.max_batch = max(1, int(lo[0])), int(hi[0])
        self._item_shape = tuple(int(d) for d in hi[1:])
        self._row_bytes = int(np.prod(self._item_shape)) * 4  # one float32 [3,S,S] input
        # The same I/O contract as an ONNX graph: [B,3,S,S], S from the recorded config (the
        # batch is the profile's; 'logit' is checked against it below).
        self._meta.check_io(
            str(self.path), (-1, *self._item_shape), (-1,))

        _, self._stream = self._check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
                                      "cudaStreamCreateWithFlags")
        _, self._ready = self._check(cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming),
                                     "cudaEventCreateWithFlags")
        in_bytes = self.max_batch * self._row_bytes
        self._d_in = self._malloc(in_bytes, pinned=False)
        self._h_in_ptr = self._malloc(in_bytes, pinned=True)
        self._h_in = self._host_view(self._h_in_ptr, np.float32, (self.max_batch, *self._item_shape))
        # Output buffers sized from the shapes the engine infers at the maximum batch, so an
        # output that is not [B] (an extra feature output, say) cannot overrun its buffer.
        if not self.context.set_input_shape("images", (self.max_batch, *self._item_shape)):
            raise ModelLoadError(f"{self.path}: engine refused its own maximum batch {self.max_batch}",
                                 source=str(self.path))
        shapes = {n: tuple(int(d) for d in self.context.get_tensor_shape(n)) for n in self._outputs}
        if shapes["logit"] != (self.max_batch,):
            raise ModelLoadError(f"{self.path}: engine output 'logit' has shape {shapes['logit']} at "
                                 f"batch {self.max_batch}, expected ({self.max_batch},)",
                                 source=str(self.path))
        self._d_out: dict[str, int] = {}
        for n in self._outputs:
            dt = np.dtype(trt.nptype(self.engine.get_tensor_dtype(n)))
            self._d_out[n] = self._malloc(int(np.prod(shapes[n])) * dt.itemsize, pinned=False)
        self._logit_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype("logit")))
        self._h_out_ptr = self._malloc(self.max_batch * self._logit_dtype.itemsize, pinned=True)
        self._h_out = self._host_view(self._h_out_ptr, self._logit_dtype, (self.max_batch,))

    def _check(self, result, what: str):
        err = result[0] if isinstance(result, tuple) else result
        if int(err) != 0:
            raise InferenceError(f"{self.path}: CUDA call {what} failed: {err}",
                                 source=str(self.path))
        return result

    def _malloc(self, nbytes: int, pinned: bool) -> int:
        cudart = self._cudart
        fn = cudart.cudaMallocHost if pinned else cudart.cudaMalloc
        _, ptr = self._check(fn(nbytes), "cudaMallocHost" if pinned else "cudaMalloc")
        self._allocs.append(("host" if pinned else "device", int(ptr)))
        return int(ptr)

    @staticmethod
    def _host_view(ptr: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return np.frombuffer((ctypes.c_char * n).from_address(ptr), dtype=dtype).reshape(shape)

    def run(self, images: Any) -> np.ndarray:
        """float32 (B,3,S,S) → float32 logits (B,), in chunks of at most the profile's max batch.

        ``images`` is a host array, or a CUDA array on this engine's GPU (a torch CUDA tensor or
        anything with ``__cuda_array_interface__``) whose memory is bound as ``images`` in place;
        its producer must have finished writing it (synchronised its stream) before the call, or
        name that stream as ``__cuda_array_interface__["stream"]`` (version 3)."""
        device = device_array(images, self._device_id)
        if device is not None:
            ptr, shape = device
            if shape[1:] != self._item_shape:
                raise InferenceError(f"{self.path}: CUDA input has shape {shape}, the engine takes "
                                     f"(B, {', '.join(map(str, self._item_shape))})",
                                     source=str(self.path))
            row, producer = self._row_bytes, producer_stream(images)
            out = np.empty(shape[0], dtype=np.float32)
            for start in range(0, shape[0], self.max_batch):
                n = min(self.max_batch, shape[0] - start)
                out[start:start + n] = self._run_chunk(n, device_ptr=ptr + start * row,
                                                       producer=producer)
            return out
        out = np.empty(len(images), dtype=np.float32)
        for start in range(0, len(images), self.max_batch):
            chunk = images[start:start + self.max_batch]
            out[start:start + len(chunk)] = self._run_chunk(len(chunk), host=chunk)
        return out

    def input_buffer(self, n: int) -> np.ndarray | None:
        """A pinned host array of n input rows for a producer to fill: `run` copies a batch lying in
        it straight to the device, with no host copy. It returns to the backend's pool once no view
        of it remains (a later call reuses it) and is freed at `close`. None once closed."""
        row = self._row_bytes
        with self._pool_lock:
            if self.context is None or n < 1:
                return None
            fits = [k for k, (_, size) in enumerate(self._free_pinned) if size >= n * row]
            ptr, size = (self._free_pinned.pop(fits[0]) if fits else
                         (self._malloc(n * row, pinned=True), n * row))
            self._lent[ptr] = size
        # The finaliser hangs on the memory's owner object, not on the array: numpy collapses view
        # bases, so a slice of the array references the owner but not the array, and a finaliser on
        # the array would fire (and the memory be lent again or freed) while the slice is in use.
        owner = _pinned_block(size).from_address(ptr)
        weakref.finalize(owner, self._returned, ptr, size)
        count = n * int(np.prod(self._item_shape))
        return np.frombuffer(owner, dtype=np.float32, count=count).reshape(n, *self._item_shape)

    def _returned(self, ptr: int, size: int) -> None:
        """The last view of a lent buffer is gone: back to the pool, or freed when closed."""
        with self._pool_lock:
            if self._lent.pop(ptr, None) is None:
                return
            if self.context is not None:
                self._free_pinned.append((ptr, size))
            else:  # `close` left it allocated while a view of it lived
                self._cudart.cudaFreeHost(ptr)

    def _lent_address(self, host: Any) -> int | None:
        """The address of ``host`` when it is a contiguous float32 run inside a lent buffer."""
        if not (isinstance(host, np.ndarray) and host.dtype == np.float32 and host.flags.c_contiguous):
            return None
        p = host.ctypes.data
        with self._pool_lock:
            lent = list(self._lent.items())
        inside = any(base <= p and p + host.nbytes <= base + size for base, size in lent)
        return p if inside else None

    def _run_chunk(self, n: int, host: np.ndarray | None = None, device_ptr: int = 0,
                   producer: int | None = None) -> np.ndarray:
        """One batch of n ≤ max_batch rows, from ``host`` or from device memory at ``device_ptr``
        (written on the stream ``producer`` when the input said so)."""
        # One context and one set of buffers: batches from several threads take turns.
        with self._lock:
            cudart, ctx = self._cudart, self.context
            if ctx is None:
                raise InferenceError(f"{self.path}: the TensorRT backend is closed",
                                     source=str(self.path))
            # The current device is per host thread, and the thread iterating results need not be
            # the one that built the backend.
            self._check(cudart.cudaSetDevice(self._device_id), "cudaSetDevice")
            b = max(n, self.min_batch)  # below the profile minimum: pad with zeros, drop the rows
            row = self._h_in[0].nbytes
            stream = self._stream
            kinds = cudart.cudaMemcpyKind
            src = None if host is None else self._lent_address(host)
            if host is not None and src is None:  # staged through the pinned buffer, padded there
                self._h_in[:n] = host
                if b > n:
                    self._h_in[n:b] = 0
                self._check(cudart.cudaMemcpyAsync(self._d_in, self._h_in_ptr, b * row,
                                                   kinds.cudaMemcpyHostToDevice, stream),
                            "cudaMemcpyAsync H2D")
                images_ptr = self._d_in
            elif host is not None:  # already in pinned memory (`input_buffer`): no host copy
                self._check(cudart.cudaMemcpyAsync(self._d_in, src, n * row,
                                                   kinds.cudaMemcpyHostToDevice, stream),
                            "cudaMemcpyAsync H2D")
                if b > n:
                    self._check(cudart.cudaMemsetAsync(self._d_in + n * row, 0, (b - n) * row, stream),
                                "cudaMemsetAsync")
                images_ptr = self._d_in
            elif b > n:  # a device batch below the minimum: into the device buffer, then pad
                self._check(cudart.cudaMemcpyAsync(self._d_in, device_ptr, n * row,
                                                   kinds.cudaMemcpyDeviceToDevice, stream),
                            "cudaMemcpyAsync D2D")
                self._check(cudart.cudaMemsetAsync(self._d_in + n * row, 0, (b - n) * row, stream),
                            "cudaMemsetAsync")
                images_ptr = self._d_in
            else:
                images_ptr = device_ptr  # read in place: no copy at all
            if not ctx.set_input_shape("images", (b, *self._item_shape)):
                raise InferenceError(f"{self.path}: engine refused batch shape {b}",
                                     source=str(self.path))
            if producer is not None:  # the input's own stream: wait for it on the device, not the host
                self._check(cudart.cudaEventRecord(self._ready, producer), "cudaEventRecord")
                self._check(cudart.cudaStreamWaitEvent(stream, self._ready, 0), "cudaStreamWaitEvent")
            # set_tensor_address returns False (and logs) for an unknown name or a misaligned
            # address; executing anyway would read or write whatever the old address holds.
            for name, ptr in (("images", images_ptr), *self._d_out.items()):
                if not ctx.set_tensor_address(name, ptr):
                    raise InferenceError(f"{self.path}: TensorRT refused the address of {name!r}",
                                         source=str(self.path))
            if not ctx.execute_async_v3(int(stream)):
                raise InferenceError(f"{self.path}: TensorRT execution failed", source=str(self.path))
            self._check(cudart.cudaMemcpyAsync(self._h_out_ptr, self._d_out["logit"],
                                               b * self._logit_dtype.itemsize,
                                               kinds.cudaMemcpyDeviceToHost, stream),
                        "cudaMemcpyAsync D2H")
            # Also what keeps a caller's device batch (and the lent buffer) in use until the
            # engine has read it: nothing returns before the stream is drained.
            self._check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
            return self._h_out[:n].astype(np.float32)

    def close(self) -> None:
        """Free the buffers and the stream and drop the context and engine (idempotent)."""
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        with self._lock, self._pool_lock:  # not while another thread's batch uses the buffers
            self.context = None  # before the engine it was created from
            self._free_pinned = []
            self.engine = None
            self._h_in = self._h_out = None  # views of the pinned memory freed below
            for kind, ptr in self._allocs:
                if ptr not in self._lent:  # a lent buffer still viewed is freed when its last view goes
                    (cudart.cudaFreeHost if kind == "host" else cudart.cudaFree)(ptr)
            self._allocs = []
            if self._ready is not None:
                cudart.cudaEventDestroy(self._ready)
                self._ready = None
            if self._stream is not None:
                cudart.cudaStreamDestroy(self._stream)
                self._stream = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
