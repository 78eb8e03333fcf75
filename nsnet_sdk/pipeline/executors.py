"""Decode workers for the Detector: decode → patch mosaic → normalise each input into a row of a
reused batch buffer, inline, in threads, or in worker processes that write into shared memory.

Threads share one interpreter, so the Python-level work of every image (about a fifth of
preprocessing once the entropy kernel is compiled) is serialised by the GIL; processes are not, at
the price of a spawn per worker (~0.3 s) and pickling each input (paths are a few bytes, arrays
are copied). Either way the caller keeps one result per input, in input order.
"""
from __future__ import annotations

import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from ..allocator import keep_freed_frames, large_frames
from ..errors import ImageDecodeError, as_input_error
from .inputs import require_image, size_warnings
from .config import PatchConfig
from .patches import preprocess
from .decode import decode_image

DECODE_MODES = ("threads", "processes")
# The failure of an executor rather than of an input (a worker lost, an input that could not be sent):
# such a result says nothing about the file, so caches never keep it.
WORKER_FAILED = "decode worker failed"
# (Future, index into the future's list of outcomes or None for a single outcome, and for worker
# processes the task's arguments, to retry the input alone when its worker died)
Handle = tuple
Outcome = tuple  # (the input's typed error or None, its warnings)

__all__ = ["DECODE_MODES", "prepare_into", "make_decoder"]


def prepare_into(src: Any, name: str, cfg: PatchConfig, max_pixels: int, out: np.ndarray,
                 bgr: bool = False) -> Outcome:
    """Decode + patch mosaic + normalise ``src`` into ``out`` (float32 (3, size, size)):
    (error, warnings: the decoder's, e.g. a missing end marker, then the size's). ``bgr``: array
    inputs are in OpenCV's BGR(A) order.

    The error, if any, is typed and names the input (anything untyped, e.g. ``ValueError:
    embedded null byte`` from a path, becomes an `ImageDecodeError` with the original as cause).
    The mosaic is cut from the decoder's BGR buffer (or a BGR array); only its 49 tiles are put in
    RGB order, by `normalize`.
    """
    try:
        require_image(src, name)
        img, img_bgr, decoded = decode_image(src, max_pixels, name=name, rgb=False)
        if bgr and isinstance(src, np.ndarray):
            img_bgr = True  # arrays keep their order (a 4th channel is flattened as alpha): BGR
        preprocess(img, cfg, out=out, bgr=img_bgr)
        return None, tuple(decoded) + size_warnings(img, cfg.patch)
    except Exception as e:  # recorded per input; one bad file must not stop a batch
        return as_input_error(e, name), ()


class _Decoder:
    """Batch buffers plus ``submit(src, name, buffer index, row) -> Future[NSNetError | None]``."""

    def __init__(self, cfg: PatchConfig, max_pixels: int, batch_size: int, n_buffers: int,
                 lend: Callable[[int], np.ndarray | None] | None = None) -> None:
        self.cfg, self.max_pixels = cfg, max_pixels
        self.shape = (n_buffers, batch_size, 3, cfg.size, cfg.size)
        self._local: list[np.ndarray | None] = [None] * n_buffers
        self._lend = lend

    def buffer(self, i: int) -> np.ndarray:
        """Batch buffer ``i`` (allocated on first use, so a short run stays small): one the backend
        lends (``lend(rows)``, its pinned memory) where it offers one, else a plain array."""
        if self._local[i] is None:
            lent = self._lend(self.shape[1]) if self._lend is not None else None
            ok = lent is not None and lent.shape == self.shape[1:] and lent.dtype == np.float32
            self._local[i] = lent if ok else np.empty(self.shape[1:], np.float32)
        return self._local[i]

    def submit(self, src: Any, name: str, buf: int, row: int, bgr: bool = False) -> Future:
        f: Future = Future()  # inline: the work is done at submit time
        f.set_result(prepare_into(src, name, self.cfg, self.max_pixels, self.buffer(buf)[row], bgr))
        return f

    def submit_batch(self, items: list[Any], names: list[str], buf: int,
                     bgr: bool = False) -> list[Handle]:
        """Queue ``items`` into rows 0.. of buffer ``buf``; one handle per item, for `result`."""
        return [(self.submit(x, names[j], buf, j, bgr), None) for j, x in enumerate(items)]

    def cancel(self, handles: list[Handle]) -> None:
        for fut, *_ in handles:
            fut.cancel()

    def result(self, handle: Handle, name: str) -> Outcome:
        """The input's outcome; a failure of the pool itself (a worker died, the input could not
        be sent to it) becomes that input's error instead of ending the whole run."""
        fut, index = handle[:2]
        try:
            out = fut.result()
            return out if index is None else out[index]
        except Exception as e:
            err = ImageDecodeError(f"{name}: {WORKER_FAILED}: {type(e).__name__}: {e}", source=name)
            err.__cause__ = e
            return err, ()

    def close(self) -> None:
        pass


class _ThreadDecoder(_Decoder):
    def __init__(self, workers: int, *args: Any) -> None:
        super().__init__(*args)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="nsnet-decode")

    def submit(self, src: Any, name: str, buf: int, row: int, bgr: bool = False) -> Future:
        return self._pool.submit(prepare_into, src, name, self.cfg, self.max_pixels, self.buffer(buf)[row], bgr)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class _ProcessDecoder(_Decoder):
    """Worker processes (spawned: no inherited ONNX Runtime / BLAS threads) that write each input
    straight into a shared-memory batch buffer; only the input and its error cross the pipe."""

    def __init__(self, workers: int, *args: Any) -> None:
        import multiprocessing as mp
        from multiprocessing.shared_memory import SharedMemory

        super().__init__(*args)
        self._workers = workers
        self._ctx = mp.get_context("spawn")
        self._shm = SharedMemory(create=True, size=int(np.prod(self.shape)) * 4)
        self._local = list(np.ndarray(self.shape, np.float32, buffer=self._shm.buf))
        self._initargs = (self._shm.name, self.shape, self.cfg.to_json(), self.max_pixels, large_frames())
        self._solo = None  # the one-worker pool that retries inputs whose worker died
        self._pool = self._start()

    def _start(self):
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(self._workers, mp_context=self._ctx, initializer=_attach,
                                   initargs=self._initargs)

    def _submit(self, fn, *args) -> Future:
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self._pool.submit(fn, *args)
        except BrokenProcessPool:  # a worker died on an earlier input: later inputs get a new pool
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._start()
            return self._pool.submit(fn, *args)

    def submit(self, src: Any, name: str, buf: int, row: int, bgr: bool = False) -> Future:
        return self._submit(_work, src, name, buf, row, bgr)

    def result(self, handle: Handle, name: str) -> Outcome:
        """As `_Decoder.result`, but a worker that died (a native decoder crash: a segfault, an
        abort) fails only the input that killed it: every input of the broken pool is decoded
        again alone, in a one-worker pool of its own, and only an input that kills that worker
        too is recorded as an error."""
        from concurrent.futures.process import BrokenProcessPool

        fut, index, args = handle
        try:
            out = fut.result()
            return out if index is None else out[index]
        except BrokenProcessPool:
            pass
        except Exception:
            return super().result(handle, name)
        try:
            return self._solo_pool().submit(_work, *args).result()
        except BrokenProcessPool as e:
            self._solo.shutdown(wait=False, cancel_futures=True)
            self._solo = None
            err = ImageDecodeError(f"{name}: the decoder crashed the process decoding this input (its worker died, "
                                   "also when it was decoded alone); the other inputs are unaffected",
                                   source=name)
            err.__cause__ = e
            return err, ()
        except Exception:
            return super().result((fut, index), name)

    def _solo_pool(self):
        from concurrent.futures import ProcessPoolExecutor

        if self._solo is None:
            self._solo = ProcessPoolExecutor(1, mp_context=self._ctx, initializer=_attach, initargs=self._initargs)
        return self._solo

    def submit_batch(self, items: list[Any], names: list[str], buf: int,
                     bgr: bool = False) -> list[Handle]:
        """Paths and bytes go as one task per worker (a round trip per image would leave workers
        waiting on the parent's queue threads); other inputs, which may not pickle, go one by one."""
        # memoryview does not pickle; bytearray/memoryview go as bytes (a copy), like a thread reads them
        items = [bytes(x) if isinstance(x, (bytearray, memoryview)) else x for x in items]
        handles: list[Handle] = [None] * len(items)  # type: ignore[list-item]
        light = [j for j, x in enumerate(items) if isinstance(x, (str, os.PathLike, bytes))]
        for j in sorted(set(range(len(items))) - set(light)):
            handles[j] = (self.submit(items[j], names[j], buf, j, bgr), None, (items[j], names[j], buf, j, bgr))
        size = max(1, -(-len(light) // self._workers))
        for start in range(0, len(light), size):
            rows = light[start:start + size]
            fut = self._submit(_work_many, [items[j] for j in rows], [names[j] for j in rows], buf, rows, bgr)
            for k, j in enumerate(rows):
                handles[j] = (fut, k, (items[j], names[j], buf, j, bgr))
        return handles

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._solo is not None:
            self._solo.shutdown(wait=True, cancel_futures=True)
        self._local = []  # the arrays view the mapping; they must go before it closes
        self._shm.unlink()
        try:
            self._shm.close()
        except BufferError:  # a caller still holds a view: the mapping goes when that view does
            pass


# -- worker-process side ---------------------------------------------------------------------------
_W: dict[str, Any] = {}


def _attach(shm_name: str, shape: tuple[int, ...], cfg_json: str, max_pixels: int,
            large_frames: bool = False) -> None:
    from multiprocessing import resource_tracker
    from multiprocessing.shared_memory import SharedMemory

    import cv2

    cv2.setNumThreads(1)  # each worker is one core's worth of work; OpenCV's own pool would oversubscribe
    keep_freed_frames(large_frames)
    _exit_with_parent()

    if sys.version_info >= (3, 13):
        shm = SharedMemory(shm_name, track=False)
    else:  # 3.12 and older register every attach, and the tracker would unlink the parent's block
        register, resource_tracker.register = resource_tracker.register, lambda *a, **k: None
        try:
            shm = SharedMemory(shm_name)
        finally:
            resource_tracker.register = register
    _W.update(shm=shm, buffers=np.ndarray(shape, np.float32, buffer=shm.buf),
              cfg=PatchConfig.from_json(cfg_json), max_pixels=max_pixels)


def _exit_with_parent(poll_s: float = 0.5) -> None:
    """End this worker when the process that started it is gone. A worker waiting on its task
    queue holds that queue's write end itself, so it never sees end-of-file when the parent is
    SIGKILLed (or OOM-killed) and would wait forever, holding memory and the parent's output
    pipes. Polled rather than PR_SET_PDEATHSIG: that signal follows the parent *thread* that
    spawned the worker, and pools are started from short-lived threads."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="nsnet-parent-watch", daemon=True).start()


def _work(src: Any, name: str, buf: int, row: int, bgr: bool) -> Outcome:
    return prepare_into(src, name, _W["cfg"], _W["max_pixels"], _W["buffers"][buf, row], bgr)


def _work_many(srcs: list[Any], names: list[str], buf: int, rows: list[int], bgr: bool) -> list[Outcome]:
    return [_work(s, n, buf, r, bgr) for s, n, r in zip(srcs, names, rows)]


def make_decoder(mode: str, workers: int, cfg: PatchConfig, max_pixels: int, batch_size: int,
                 n_buffers: int, lend: Callable[[int], np.ndarray | None] | None = None) -> _Decoder:
    """The decoder for ``mode`` (see `DECODE_MODES`); ``workers=0`` decodes on the calling thread.
    ``lend``: the backend's ``input_buffer``, used for the batch buffers of in-process decoding
    (worker processes write to shared memory instead)."""
    args = (cfg, max_pixels, batch_size, n_buffers)
    if workers == 0:
        return _Decoder(*args, lend)
    if mode == "processes":
        return _ProcessDecoder(workers, *args)
    return _ThreadDecoder(workers, *args, lend)
