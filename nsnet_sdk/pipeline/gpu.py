"""Choosing the input pipeline (``cpu``, ``gpu``, ``auto``) and running the GPU one for a batch."""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Sequence

from ..errors import BackendUnavailableError
from .config import MAX_PIXELS, PatchConfig

PIPELINES = ("cpu", "gpu", "auto")


def _cuda_available() -> tuple[bool, str]:
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        return False, "torch sees no CUDA device"
    return True, ""


def resolve_pipeline(pipeline: str, *, device: Any = None, backend: Any = None,
                     config: PatchConfig, max_pixels: int = MAX_PIXELS) -> "GpuPipeline | None":
    """The GPU pipeline to use, or None for the CPU one.

    ``"cpu"``: None. ``"gpu"``: a `GpuPipeline` on ``device`` (default: the torch backend's device,
    else ``cuda``), with nvImageCodec when it imports and CPU decoding otherwise. ``"auto"``: the
    GPU pipeline only where CUDA and nvImageCodec are both present, else None (the CPU pipeline).

    Raises:
        ValueError: ``pipeline`` is not one of `PIPELINES`.
        BackendUnavailableError: ``"gpu"`` without torch, or on ``cuda`` where torch sees no GPU.
    """
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline must be one of {PIPELINES}, got {pipeline!r}")
    if pipeline == "cpu":
        return None
    from .nvdecode import nvimgcodec_available

    if pipeline == "auto":
        if not (_cuda_available()[0] and nvimgcodec_available()[0]):
            return None
        device = None  # auto means the GPU
    elif device is None or str(device).startswith("cuda") or isinstance(device, int):
        ok, why = _cuda_available()
        if not ok:
            raise BackendUnavailableError(f"pipeline='gpu' needs a CUDA device: {why} "
                                          "(device='cpu' runs it on the CPU)")
    if isinstance(device, int):
        device = f"cuda:{device}"
    if device is None:
        device = backend.device if str(getattr(backend, "device", "")).startswith("cuda") else "cuda"
    return GpuPipeline(str(device), config, max_pixels=max_pixels,
                       to_host=not (getattr(backend, "name", "") == "torch"
                                    or getattr(backend, "accepts_device_input", False)))


class GpuPipeline:
    """Decode + patch selection + mosaic + normalisation of a batch on one torch device.

    ``to_host``: hand the backend a numpy array (backends without a device-tensor input). Otherwise
    the backend gets the device tensor itself, once this thread's stream has finished producing it:
    TensorRT and ONNX Runtime read it on streams of their own."""

    def __init__(self, device: str, config: PatchConfig, *, max_pixels: int = MAX_PIXELS,
                 to_host: bool = False) -> None:
        try:
            import torch
        except ImportError as e:
            raise BackendUnavailableError(f"pipeline='gpu' needs torch: {e}") from e
        from .nvdecode import NvDecoder, nvimgcodec_available

        self.device = str(torch.device(device))
        self.config = config
        self.max_pixels = int(max_pixels)
        self.to_host = to_host
        self.decoder = None
        self._local = threading.local()
        if nvimgcodec_available()[0]:
            try:
                self.decoder = NvDecoder(self.device)
            except Exception:  # e.g. no usable backend on this machine: decode on the CPU
                self.decoder = None

    def _stream(self) -> Any:
        """This thread's CUDA stream (None on the CPU). PyTorch creates its streams non-blocking, so
        unlike the legacy default stream they never wait for the backend's stream or another
        thread's: preparing batch n+1 overlaps inferring batch n."""
        if not self.device.startswith("cuda"):
            return None
        stream = getattr(self._local, "stream", None)
        if stream is None:
            import torch

            stream = self._local.stream = torch.cuda.Stream(device=self.device)
        return stream

    def prepare(self, items: Sequence[Any], names: Sequence[str],
                bgr: bool = False) -> tuple[Any, list, list]:
        """One batch → (network input of the decodable rows, per-item typed error or None, per-item
        warnings): the CPU executors' outcome for every input (`nvdecode.decode_batch`), with the
        patch selection done by `torch_patches` on this pipeline's device."""
        from .inputs import size_warnings
        from .nvdecode import decode_batch
        from .torch_patches import preprocess_batch

        stream = self._stream()
        with _on(stream):
            decoded = decode_batch(items, names, device=self.device, decoder=self.decoder,
                                   max_pixels=self.max_pixels, bgr=bgr,
                                   cuda_stream=stream.cuda_stream if stream is not None else 0)
            errors = [d if isinstance(d, BaseException) else None for d, _ in decoded]
            good = [d for (d, _), e in zip(decoded, errors) if e is None]
            batch = preprocess_batch(good, self.config) if good else None
            if batch is not None and self.to_host:
                batch = batch.cpu().numpy()
        if stream is not None:
            # Waits for this thread's stream alone: the backend's inference of the previous batch,
            # on its own stream, runs on meanwhile, and so do the other decode threads.
            stream.synchronize()
        notes = [() if e else n + size_warnings(d, self.config.patch) for (d, n), e in zip(decoded, errors)]
        return batch, errors, notes


def _on(stream: Any) -> Any:
    """``torch.cuda.stream(stream)``, or nothing to enter on the CPU."""
    if stream is None:
        return contextlib.nullcontext()
    import torch

    return torch.cuda.stream(stream)
