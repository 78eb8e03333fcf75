"""`Detector`: one class over the TensorRT, ONNX Runtime, PyTorch and OpenVINO backends, configured
by two option groups (`nsnet_sdk.options`).

The pipeline overlaps decoding + patch selection of the next batches (a thread pool, where OpenCV
and the entropy kernel release the GIL, or a process pool writing into shared memory; see
`nsnet_sdk.pipeline.executors`) with inference of the current one on the calling thread. At most
``1 + ceil(workers / batch_size)`` batches are ever submitted ahead (none with ``workers=0``), each
decoded straight into one of a few reused buffers, so memory stays flat however many inputs an
iterator yields; results come back in input order, exactly one per input.
"""
from __future__ import annotations

import math
import os
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

import numpy as np

from .artifact import ModelMeta, artifact_kind, read_model_meta
from .backends import Backend, engine_choice, load_backend
from .pipeline.executors import make_decoder
from .errors import (InferenceError, PreprocessMismatchError, RandomWeightsWarning, as_input_error,
                     nonfinite_logit_error)
from .pipeline.gpu import resolve_pipeline  # torch loads only when a GPU pipeline is built
from .pipeline.inputs import check_channels, is_single_input, iter_inputs, source_name
from .options import AUTO, BackendOptions, InputOptions, as_backend_options, as_input_options, check_threshold
from .prediction import Prediction, decide, sigmoid
from .provenance import provenance_reader, with_provenance
from .pipeline import PatchConfig, kernel_name
from .pipeline.read import read_input_bytes

if TYPE_CHECKING:
    from .explain import Explanation

ON_ERROR = ("raise", "record")
ONNX_ENGINES = {"onnxruntime", "openvino"}  # the engines an .onnx file can run on


class _InlineExecutor:
    """Runs each task at submit time: the workers=0 (single-threaded) pipeline."""

    def submit(self, fn, *args) -> Future:
        return _done(fn(*args))

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


class Detector:
    """Scores images as real or AI-generated with an exported NS-Net model.

    Inputs: paths, encoded bytes, PIL images, or numpy arrays in **RGB** order (H×W gray, H×W×3,
    H×W×4 RGBA) unless ``InputOptions(channels="bgr")`` says they come from OpenCV.

        Detector("nsnet.onnx")                                   # ONNX Runtime, CPU pipeline
        Detector("nsnet.onnx", backend="openvino")               # another engine for the same file
        Detector("runs/tiny", backend=BackendOptions(device="cpu"),
                 options=InputOptions(pipeline="gpu", workers=0))  # GPU executor on the CPU

    Args:
        model: ``.engine``/``.plan`` (TensorRT, with its ``.json`` sidecar), ``.onnx`` (ONNX
            Runtime or OpenVINO), or a training run directory / its ``nsnet.safetensors`` (PyTorch).
        threshold: decision threshold on ``prob_fake``; default: the one stored in the model.
            A model with a calibrated verdict band decides by its band instead (`Prediction.is_fake`).
        preprocess: a `PatchConfig` (or its dict) to check against the model's; a contradiction
            raises `PreprocessMismatchError` unless ``force=True``, which uses the override.
        force: accept a contradicting ``preprocess``.
        backend: how the model runs: an engine name (``"onnxruntime"``, ``"tensorrt"``,
            ``"torch"``, ``"openvino"``) or `BackendOptions` (engine, device, precision,
            providers, intra_op_threads, cuda_graphs); default: by the artifact's kind.
        options: how inputs are read and prepared: `InputOptions` (batch_size, workers,
            executor, pipeline, channels, max_pixels, provenance); default ``InputOptions()``.

    Raises:
        ModelLoadError: the artifact is missing, of unknown kind, unreadable or lacks metadata
            (`BackendUnavailableError` when its runtime library is not installed).
        PreprocessMismatchError: see ``preprocess``.
        ValueError: an option out of range, or one that the chosen engine or pipeline would
            ignore (e.g. ``cuda_graphs`` on ONNX Runtime, ``executor="processes"`` with the GPU
            pipeline, a precision the model file was not exported in).
    """

    def __init__(self, model: str | os.PathLike, *, threshold: float | None = None,
                 preprocess: PatchConfig | Mapping[str, Any] | None = None, force: bool = False,
                 backend: str | BackendOptions | None = None,
                 options: InputOptions | None = None) -> None:
        self.model_path = Path(model)
        self.options = opts = as_input_options(options)
        bopts = as_backend_options(backend)
        kind = artifact_kind(self.model_path)
        if bopts.engine not in (None, AUTO) and bopts.engine != kind and {bopts.engine, kind} != ONNX_ENGINES:
            raise ValueError(f"{self.model_path} (an artifact for {kind}) cannot be run by engine="
                             f"{bopts.engine!r}; an .onnx file runs on onnxruntime or openvino")
        self.batch_size, self.workers, self.max_pixels = opts.batch_size, opts.workers, opts.max_pixels
        self.channels, self.decode = opts.channels, opts.executor
        self.provenance = provenance_reader(opts.provenance)
        # Every metadata field is validated before a runtime library parses the file.
        self.meta: ModelMeta = read_model_meta(self.model_path, kind)
        self.backend_options, self.engine_choice = bopts, engine_choice(bopts, kind, self.meta)
        if bopts.engine == AUTO:  # ONNX Runtime runs the file's own precision; other artifacts keep the asked one
            chosen = self.engine_choice["engine"]
            precision = {"openvino": self.engine_choice["precision"], "onnxruntime": None}.get(chosen, bopts.precision)
            bopts = self.backend_options = replace(bopts, engine=chosen, precision=precision)
        self.kind = bopts.engine or kind
        bopts.check(self.kind, self.meta.precision)
        self.threshold = self.meta.threshold if threshold is None else check_threshold(threshold)
        self.backend: Backend = load_backend(self.kind, self.model_path, meta=self.meta, **bopts.load_options())
        try:
            self.config = self._resolve_preprocess(preprocess, force)
            self._gpu = resolve_pipeline(opts.pipeline, device=bopts.device, backend=self.backend,
                                         config=self.config, max_pixels=self.max_pixels)  # None: CPU
            self.pipeline = "cpu" if self._gpu is None else f"gpu:{self._gpu.device}"
        except BaseException:
            self.backend.close()  # refused after loading: free its session / GPU memory now
            raise
        self._closed = False
        self._kept: dict[tuple, Any] | None = None  # decoders kept between calls (keep_workers)
        _warn_if_random(self.model_path, self.meta)

    def _resolve_preprocess(self, override, force: bool) -> PatchConfig:
        stored = self.meta.preprocess
        if override is None:
            return stored
        cfg = override if isinstance(override, PatchConfig) else PatchConfig.from_dict(dict(override))
        if cfg != stored and not force:
            raise PreprocessMismatchError(
                f"{self.model_path}: preprocess override {cfg.to_json()} contradicts the model's "
                f"{stored.to_json()}; the model was trained on the latter (force=True to override)",
                source=str(self.model_path))
        return cfg

    # -- public API -------------------------------------------------------------------------

    def predict(self, inputs: Any, *, batch_size: int | None = None, workers: int | None = None,
                on_error: str | None = None, channels: str | None = None) -> Prediction | list[Prediction]:
        """Score one image or a collection of them.

        ``inputs``: a path, bytes, numpy array (H×W gray, H×W×3 **RGB**, H×W×4 RGBA; uint8 or
        uint16) or PIL image → one `Prediction`; a list/tuple/iterable of those (or a 4-D array)
        → a list in input order. ``channels="bgr"`` reads arrays in OpenCV's order (default: the
        Detector's ``channels``). ``on_error``: ``"raise"`` raises the input's typed error,
        ``"record"`` returns a Prediction with ``error`` set; default ``"raise"`` for one input,
        ``"record"`` otherwise. Images smaller than one patch are scored with a warning in
        ``Prediction.warnings``.

        Raises:
            UnsupportedInputError: ``inputs`` is neither an image nor a collection (e.g. None, 42).
        """
        if is_single_input(inputs):
            mode = _check_on_error(on_error or "raise")
            bgr = check_channels(channels or self.channels) == "bgr"
            return list(self._pipeline(iter([inputs]), 1, 0, mode, bgr))[0]
        return list(self.predict_iter(inputs, batch_size=batch_size, workers=workers,
                                      on_error=on_error or "record", channels=channels))

    def predict_iter(self, inputs: Iterable[Any], *, batch_size: int | None = None,
                     workers: int | None = None, on_error: str = "record",
                     channels: str | None = None) -> Iterator[Prediction]:
        """Lazily score any number of inputs: yields one `Prediction` per input, in order, while
        the next batches are decoded in ``workers`` threads. Memory does not grow with the number
        of inputs; ``inputs`` is consumed only a couple of batches ahead of the results. Inputs
        and ``channels`` as in `predict`; an element of an unsupported kind gets an
        `UnsupportedInputError` result (or raises it with ``on_error="raise"``)."""
        items = iter([inputs]) if is_single_input(inputs) else iter_inputs(inputs)
        bs = self.batch_size if batch_size is None else _positive("batch_size", batch_size, 1)
        nw = self.workers if workers is None else _positive("workers", workers, 0)
        bgr = check_channels(channels or self.channels) == "bgr"
        return self._pipeline(items, bs, nw, _check_on_error(on_error), bgr)

    def explain(self, img: Any) -> "Explanation":
        """Per-patch occlusion contributions to ``img``'s logit, one batched pass (nsnet_sdk.explain)."""
        from .explain import explain_image

        return explain_image(self, img)

    def settings(self) -> str:
        """What, beside the model and the threshold, changes a result's values: pixel limit,
        pipeline, engine and precision (``nsnet detect``'s ``settings`` column, which ``--resume``
        checks, and part of every result cache's key)."""
        pipeline = self.pipeline.split(":")[0]  # cpu or gpu: which device changes no rule
        precision = self.backend_options.precision or self.meta.precision
        return f"max_pixels={self.max_pixels} pipeline={pipeline} engine={self.kind} precision={precision}"

    def info(self) -> dict[str, Any]:
        """What `nsnet info` prints: artifact, backend, device, threshold, preprocessing, metadata,
        and ``engine_choice``: the engine and precision that run the model and why (with
        ``backend="auto"``: the measured table row and the CPU flags behind the choice)."""
        return {**model_info(self.model_path, self.backend.name, self.backend.device, self.meta,
                             threshold=self.threshold, config=self.config), "pipeline": self.pipeline,
                "engine_choice": self.engine_choice}

    def keep_workers(self) -> "Detector":
        """Keep the CPU pipeline's decode workers (and their batch buffers) from one call to the
        next until `close`, instead of starting them for each call: a long-lived caller such as a
        service replica pays the spawn of worker processes (~0.3 s each) once. Calls that run at
        the same time each get their own; a worker process that dies is replaced. Returns self."""
        if self._kept is None:
            self._kept = {}
        return self

    def close(self) -> None:
        """Release the backend's resources (GPU buffers, sessions) and kept decode workers;
        predicting afterwards raises `InferenceError`."""
        self._closed = True
        kept, self._kept = self._kept, None
        for decoder in (kept or {}).values():
            decoder.close()
        self.backend.close()

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Detector({str(self.model_path)!r}, backend={self.backend.name!r}, "
                f"device={self.backend.device!r}, threshold={self.threshold})")

    # -- pipeline ---------------------------------------------------------------------------

    def _run(self, batch: Any) -> np.ndarray:
        """The backend's logits for a batch of network rows (the pipeline's and explain's)."""
        if self._closed:  # the backend's buffers and sessions are gone
            raise InferenceError(f"{self.model_path}: the Detector is closed", source=str(self.model_path))
        return self.backend.run(batch)

    def _read_once(self, chunk: list, names: list[str]) -> tuple[list, dict[int, Exception]]:
        """``chunk`` with each path replaced by its bytes, read once through the bounded reader
        (a FIFO or device is refused unopened), and {position: typed error} of those that could
        not be read; their place holds empty bytes, whose outcome the read's error replaces."""
        out, unread = [], {}
        for j, (x, name) in enumerate(zip(chunk, names)):
            if isinstance(x, (str, os.PathLike)):
                try:
                    x = read_input_bytes(x, self.max_pixels, name)
                except Exception as e:  # recorded for this input; the batch goes on
                    unread[j], x = as_input_error(e, name), b""
            out.append(x)
        return out, unread

    def _unread_provenance(self, err: Exception) -> dict:
        """The provenance record of an input that could not be read: nothing found, and why."""
        return {**self.provenance.read(b""), "error": f"{type(err).__name__}: {err}"}

    def _pipeline(self, items: Iterator[Any], bs: int, workers: int,
                  on_error: str, bgr: bool = False) -> Iterator[Prediction]:
        # Batches queued behind the one being inferred: enough to give every worker a task plus
        # one spare. Inline (workers=0) nothing is gained by decoding ahead, so nothing is.
        ahead = 1 + math.ceil(workers / bs) if workers else 0
        # Threads for provenance reads and GPU-pipeline batches; the CPU pipeline's decoding has
        # its own workers in decode_pool, so without those two no second pool is started.
        side_work = self.provenance is not None or self._gpu is not None
        pool = (ThreadPoolExecutor(workers, thread_name_prefix="nsnet-decode") if workers and side_work
                else _InlineExecutor())
        # CPU pipeline: 1 + ahead batch buffers (the one being inferred never overlaps the ones
        # being filled), filled by decode_pool's threads or processes.
        # The buffers are the backend's pinned memory where it lends some (TensorRT): no host copy.
        key = (workers, bs, 1 + ahead)
        kept = self._kept.pop(key, None) if self._kept is not None else None
        decoder = None if self._gpu is not None else kept or make_decoder(
            self.decode, workers, self.config, self.max_pixels, bs, 1 + ahead,
            lend=getattr(self.backend, "input_buffer", None))
        free = list(range(1 + ahead))
        inflight: deque = deque()
        counter = 0
        source_error: Exception | None = None  # raised once every input pulled before it is scored
        band = self.meta.band

        def submit(limit: int) -> None:
            nonlocal counter, source_error
            while source_error is None and len(inflight) < limit:
                chunk: list[Any] = []
                try:
                    chunk.extend(islice(items, bs))
                except Exception as e:  # the caller's iterable failed, not one of its inputs
                    source_error = e
                if not chunk:
                    return
                names = [source_name(x, counter + j) for j, x in enumerate(chunk)]
                counter += len(chunk)
                provs, unread = None, {}
                if self.provenance is not None:  # decoder and provenance read the same bytes
                    chunk, unread = self._read_once(chunk, names)
                    provs = [_done(self._unread_provenance(unread[j])) if j in unread
                             else pool.submit(self.provenance.read, x) for j, x in enumerate(chunk)]
                if self._gpu is not None:  # one task per batch: nvImageCodec decodes batches
                    inflight.append((names, [pool.submit(self._gpu.prepare, chunk, names, bgr)], None,
                                     provs, unread))
                    continue
                buf = free.pop()
                inflight.append((names, decoder.submit_batch(chunk, names, buf, bgr), buf, provs, unread))

        try:
            while True:
                submit(1 + ahead)  # the batch to infer next and those the workers decode meanwhile
                if not inflight:
                    if source_error is not None:
                        raise source_error
                    break
                names, futs, buf, provs, unread = inflight.popleft()
                gpu_batch, errors, notes = (futs[0].result() if buf is None else
                                            (None, *zip(*[decoder.result(h, n) for h, n in zip(futs, names)])))
                errors = [unread.get(j, e) for j, e in enumerate(errors)]  # the read's own error
                ok = [j for j, e in enumerate(errors) if e is None]
                logits = np.full(len(names), np.nan, dtype=np.float32)
                if ok:
                    arr = None if buf is None else decoder.buffer(buf)
                    batch = (gpu_batch if buf is None else
                             arr[:len(ok)] if len(ok) == len(names) else arr[ok])
                    logits[ok] = self._run(batch)
                    del arr, batch  # no view of a shared-memory buffer outlives the pipeline
                if buf is not None:
                    free.append(buf)
                probs = sigmoid(logits)
                for j, name in enumerate(names):
                    err = errors[j]
                    if err is None and not math.isfinite(float(logits[j])):
                        err = nonfinite_logit_error(name)
                    if err is not None:
                        if on_error == "raise":
                            raise err
                        yield with_provenance(Prediction.failed(name, err), provs, j)
                        continue
                    p = float(probs[j])
                    is_fake, verdict = decide(p, self.threshold, band)
                    yield with_provenance(Prediction(source=name, prob_fake=p, is_fake=is_fake,
                                                     logit=float(logits[j]), warnings=notes[j],
                                                     verdict=verdict), provs, j)
        finally:
            for _, futs, buf, provs, _ in inflight:
                if buf is not None:
                    decoder.cancel(futs)  # decode_pool handles, not futures
                for f in (futs if buf is None else []) + (provs or []):
                    f.cancel()
            pool.shutdown(wait=True)
            if decoder is not None:
                # Kept only after a complete run (a cancelled task may still write into its
                # buffer) and where no other call has put one back meanwhile.
                keep = not inflight and self._kept is not None
                if not keep or self._kept.setdefault(key, decoder) is not decoder:
                    decoder.close()


def _done(value: Any) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


_WARNED_RANDOM: set[str] = set()


def _warn_if_random(path: Path, meta: ModelMeta) -> None:
    """Warn once per model (its weights' sha256, else its path) and process when its backbone
    weights were random."""
    key = str(meta.model_card.get("source_sha256") or os.path.realpath(path))
    if meta.pretrained == "none" and key not in _WARNED_RANDOM:
        _WARNED_RANDOM.add(key)
        warnings.warn(f"{path}: the backbone had random weights (pretrained=none); this is a test "
                      "or demo model, not a detector for real use", RandomWeightsWarning, stacklevel=3)


def model_info(model: str | os.PathLike, backend: str, device: str | None, meta: ModelMeta, *,
               threshold: float | None = None, config: PatchConfig | None = None) -> dict[str, Any]:
    """The `Detector.info` record; threshold and config default to the model's own."""
    return {
        "model": str(model), "backend": backend, "device": device, "format": meta.format,
        "backbone": meta.backbone, "precision": meta.precision,
        "projector_rank": meta.projector_rank,
        "threshold": meta.threshold if threshold is None else threshold,
        "preprocess": (config or meta.preprocess).to_dict(), "kernel": kernel_name(config or meta.preprocess),
        "verdict_band": meta.band.to_dict() if meta.band is not None else None,
        "model_card": dict(meta.model_card), "metadata": dict(meta.raw),
    }


def _positive(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_on_error(mode: str) -> str:
    if mode not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {mode!r}")
    return mode
