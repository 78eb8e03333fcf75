"""`Detector`: one class over the TensorRT, ONNX Runtime and PyTorch backends.

The pipeline overlaps decoding + patch selection of the next batches (a thread pool, where OpenCV
and the entropy kernel release the GIL, or a process pool writing into shared memory; see
`decode_pool`) with inference of the current one on the calling thread. At most
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
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .artifact import ModelMeta, artifact_kind, read_model_meta
from .backends import Backend, load_backend
from .pipeline.executors import DECODE_MODES, make_decoder
from .errors import InferenceError, PreprocessMismatchError, RandomWeightsWarning, as_input_error
from .pipeline.gpu import resolve_pipeline  # torch loads only when a GPU pipeline is built
from .pipeline.inputs import (bgr_to_rgb, check_channels, is_single_input, iter_inputs, require_image,
                     size_warnings, source_name)
from .prediction import Prediction, sigmoid
from .provenance import provenance_reader, with_provenance
from .pipeline import MAX_PIXELS, PatchConfig, kernel_name, load_image

if TYPE_CHECKING:
    from .explain import Explanation

ON_ERROR = ("raise", "record")
DEFAULT_BATCH_SIZE = 32


def default_workers() -> int:
    """Decode threads: one per core, at most 8 (beyond that the backend is the bottleneck)."""
    return max(1, min(8, os.cpu_count() or 1))


class _InlineExecutor:
    """Runs each task at submit time: the workers=0 (single-threaded) pipeline."""

    def submit(self, fn, *args) -> Future:
        f: Future = Future()
        f.set_result(fn(*args))
        return f

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


class Detector:
    """Scores images as real or AI-generated with an exported NS-Net model.

    Inputs: paths, encoded bytes, PIL images, or numpy arrays in **RGB** order (H×W gray, H×W×3,
    H×W×4 RGBA) unless ``channels="bgr"`` says they come from OpenCV.

    Args:
        model: ``.engine``/``.plan`` (TensorRT, with its ``.json`` sidecar), ``.onnx`` (ONNX
            Runtime), or a training run directory / its ``nsnet.safetensors`` (PyTorch).
        threshold: decision threshold on ``prob_fake``; default: the one stored in the model.
        preprocess: a `PatchConfig` (or its dict) to check against the model's; a contradiction
            raises `PreprocessMismatchError` unless ``force=True``, which uses the override.
        force: accept a contradicting ``preprocess``.
        providers: ONNX Runtime providers (names or (name, options)); default TensorRT EP →
            CUDA EP → CPU EP, whichever are available.
        intra_op_threads: threads inside one inference (ONNX Runtime / torch); default: runtime's.
        device: torch device for the PyTorch backend (default ``cuda`` when available, else cpu);
            for TensorRT a GPU index or ``"cuda:N"`` (default 0).
        batch_size: default batch size of `predict` / `predict_iter`.
        workers: decode/preprocess workers (0 = on the calling thread); default one per core.
        decode: CPU pipeline workers as ``"threads"`` (default) or ``"processes"`` (shared memory).
        max_pixels: images whose header declares more pixels are refused before decoding.
        channels: channel order of numpy array inputs: ``"rgb"`` (default; what `load_image`
            returns, and PIL's order) or ``"bgr"`` (OpenCV's ``cv2.imread`` order; BGRA for
            4 channels). Paths, bytes and PIL images are decoded to RGB whatever this says.
        provenance: True or a `ProvenanceReader`: fill `Prediction.provenance` (nsnet_sdk.provenance).
        pipeline: ``"cpu"`` (default; decode and patch selection in threads), ``"gpu"`` (batched
            nvImageCodec decode and torch patch selection on ``device``; ``device="cpu"`` runs it
            on the CPU) or ``"auto"`` (GPU where CUDA and nvImageCodec exist). docs/nvidia.md.

    Raises:
        ModelLoadError: the artifact is missing, of unknown kind, unreadable or lacks metadata
            (`BackendUnavailableError` when its runtime library is not installed).
        PreprocessMismatchError: see ``preprocess``.
    """

    def __init__(self, model: str | os.PathLike, *, threshold: float | None = None,
                 preprocess: PatchConfig | Mapping[str, Any] | None = None, force: bool = False,
                 providers: Sequence[Any] | None = None, intra_op_threads: int | None = None,
                 device: str | int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 workers: int | None = None, max_pixels: int = MAX_PIXELS,
                 channels: str = "rgb", provenance: Any = False, pipeline: str = "cpu",
                 decode: str = "threads") -> None:
        self.model_path = Path(model)
        self.kind = artifact_kind(self.model_path)
        self.batch_size = _check_batch_size(batch_size)
        self.workers = default_workers() if workers is None else _check_workers(workers)
        self.max_pixels = int(max_pixels)
        self.channels, self.provenance = check_channels(channels), provenance_reader(provenance)
        if decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
        self.decode = decode
        # Every metadata field is validated before a runtime library parses the file.
        self.meta: ModelMeta = read_model_meta(self.model_path, self.kind)
        self.backend: Backend = load_backend(
            self.kind, self.model_path, providers=providers, intra_op_threads=intra_op_threads,
            device=device, meta=self.meta)
        try:
            self.config = self._resolve_preprocess(preprocess, force)
            self.threshold = self.meta.threshold if threshold is None else _check_threshold(threshold)
            self._gpu = resolve_pipeline(pipeline, device=device, backend=self.backend,  # None: CPU
                                         config=self.config, max_pixels=self.max_pixels)
            self.pipeline = "cpu" if self._gpu is None else f"gpu:{self._gpu.device}"
        except BaseException:
            self.backend.close()  # refused after loading: free its session / GPU memory now
            raise
        self._closed = False
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
        bs = self.batch_size if batch_size is None else _check_batch_size(batch_size)
        nw = self.workers if workers is None else _check_workers(workers)
        bgr = check_channels(channels or self.channels) == "bgr"
        return self._pipeline(items, bs, nw, _check_on_error(on_error), bgr)

    def explain(self, img: Any) -> "Explanation":
        """Per-patch occlusion contributions to ``img``'s logit, one batched pass (nsnet_sdk.explain)."""
        from .explain import explain_image

        return explain_image(self, img)

    def info(self) -> dict[str, Any]:
        """What `nsnet info` prints: artifact, backend, device, threshold, preprocessing, metadata."""
        return {**model_info(self.model_path, self.backend.name, self.backend.device, self.meta,
                             threshold=self.threshold, config=self.config), "pipeline": self.pipeline}

    def close(self) -> None:
        """Release the backend's resources (GPU buffers, sessions); predicting afterwards raises
        `InferenceError`."""
        self._closed = True
        self.backend.close()

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Detector({str(self.model_path)!r}, backend={self.backend.name!r}, "
                f"device={self.backend.device!r}, threshold={self.threshold})")

    # -- pipeline ---------------------------------------------------------------------------

    def _load(self, src: Any, name: str, bgr: bool = False) -> np.ndarray:
        """``src`` decoded to RGB uint8 with the Detector's guards (typed errors naming it)."""
        require_image(src, name)
        return load_image(bgr_to_rgb(src) if bgr else src, max_pixels=self.max_pixels, name=name)

    def _prepare_gpu(self, chunk: list, names: list[str], bgr: bool) -> tuple[Any, list, list]:
        """The GPU pipeline's batch: (device batch of the good rows, errors, warnings)."""
        return self._gpu.prepare(chunk, lambda x, i: self._load(x, names[i], bgr),
                                 lambda e, i: as_input_error(e, names[i]),
                                 lambda img: size_warnings(img, self.config.patch))

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
        decoder = None if self._gpu is not None else make_decoder(
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
                provs = [pool.submit(self.provenance.read, x) for x in chunk] if self.provenance else None
                if self._gpu is not None:  # one task per batch: nvImageCodec decodes batches
                    inflight.append((names, [pool.submit(self._prepare_gpu, chunk, names, bgr)], None, provs))
                    continue
                buf = free.pop()
                inflight.append((names, decoder.submit_batch(chunk, names, buf, bgr), buf, provs))

        try:
            while True:
                submit(1 + ahead)  # the batch to infer next and those the workers decode meanwhile
                if not inflight:
                    if source_error is not None:
                        raise source_error
                    break
                names, futs, buf, provs = inflight.popleft()
                gpu_batch, errors, notes = (futs[0].result() if buf is None else
                                            (None, *zip(*[decoder.result(h, n) for h, n in zip(futs, names)])))
                ok = [j for j, e in enumerate(errors) if e is None]
                logits = np.full(len(names), np.nan, dtype=np.float32)
                if ok:
                    if self._closed:  # the backend's buffers and sessions are gone
                        raise InferenceError(f"{self.model_path}: the Detector is closed",
                                             source=str(self.model_path))
                    arr = None if buf is None else decoder.buffer(buf)
                    batch = (gpu_batch if buf is None else
                             arr[:len(ok)] if len(ok) == len(names) else arr[ok])
                    logits[ok] = self.backend.run(batch)
                    del arr, batch  # no view of a shared-memory buffer outlives the pipeline
                if buf is not None:
                    free.append(buf)
                probs = sigmoid(logits)
                for j, name in enumerate(names):
                    err = errors[j]
                    if err is None and not math.isfinite(float(logits[j])):
                        err = InferenceError(f"{name}: the model returned a non-finite logit",
                                             source=name)
                    if err is not None:
                        if on_error == "raise":
                            raise err
                        yield with_provenance(Prediction.failed(name, err), provs, j)
                        continue
                    p = float(probs[j])
                    yield with_provenance(Prediction(source=name, prob_fake=p, is_fake=p >= self.threshold,
                                                     logit=float(logits[j]), warnings=notes[j],
                                                     verdict=band.verdict(p) if band is not None else None), provs, j)
        finally:
            for _, futs, buf, provs in inflight:
                if buf is not None:
                    decoder.cancel(futs)  # decode_pool handles, not futures
                for f in (futs if buf is None else []) + (provs or []):
                    f.cancel()
            pool.shutdown(wait=True)
            if decoder is not None:
                decoder.close()


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


def _check_batch_size(bs: Any) -> int:
    if isinstance(bs, bool) or not isinstance(bs, (int, np.integer)) or bs < 1:
        raise ValueError(f"batch_size must be a positive integer, got {bs!r}")
    return int(bs)


def _check_workers(w: Any) -> int:
    if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 0:
        raise ValueError(f"workers must be an integer >= 0, got {w!r}")
    return int(w)


def _check_threshold(t: Any) -> float:
    try:
        t = float(t)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number in [0, 1], got {t!r}") from None
    if not (math.isfinite(t) and 0.0 <= t <= 1.0):
        raise ValueError(f"threshold must be in [0, 1], got {t}")
    return t


def _check_on_error(mode: str) -> str:
    if mode not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {mode!r}")
    return mode
