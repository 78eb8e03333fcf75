"""Batched image decoding with nvImageCodec (optional), falling back to `load_image` per image.

nvImageCodec decodes a batch at once and reports each image's failure separately; whatever it is
not given (inputs other than encoded JPEG/8-bit PNG, headers over the pixel limit, unreadable
paths) or fails on is decoded by `nsnet_sdk.pipeline.load_image`, so guards and typed errors are
the CPU path's. Nothing here imports nvImageCodec until a decoder is built.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable, Sequence

from .config import MAX_PIXELS
from ..errors import NSNetError
from .decode import image_size
from .read import file_byte_limit, read_image_file

__all__ = ["nvimgcodec_available", "NvDecoder", "decode_batch"]

# What nvImageCodec is handed: its codecs for these match OpenCV's output (docs/nvidia.md);
# everything else (16-bit PNG, WebP, TIFF, ...) keeps the CPU decoder's exact conversions.
_FORMATS = ("jpeg", "png")


def nvimgcodec_available() -> tuple[bool, str]:
    """(True, "") when ``nvidia.nvimgcodec`` imports, else (False, why)."""
    try:
        from nvidia import nvimgcodec  # noqa: F401
    except Exception as e:  # ImportError, or a missing CUDA runtime library
        return False, f"nvImageCodec is not usable ({type(e).__name__}: {e}); pip install 'nsnet-sdk[gpu-decode]'"
    return True, ""


class NvDecoder:
    """One nvImageCodec decoder (GPU backends on ``cuda``, its CPU backend on ``cpu``), EXIF
    orientation applied, RGB out. Calls are serialised: one decoder is shared by the decode threads."""

    def __init__(self, device: str = "cuda") -> None:
        from nvidia import nvimgcodec

        self._nv = nvimgcodec
        self.device = str(device)
        self.on_gpu = self.device.startswith("cuda")
        if self.on_gpu:
            index = int(self.device.split(":")[1]) if ":" in self.device else 0
            self._decoder = nvimgcodec.Decoder(device_id=index)
        else:
            self._decoder = nvimgcodec.Decoder(
                backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.CPU_ONLY)])
        # Defaults: sRGB, interleaved (H×W×3), 8-bit; EXIF orientation as load_image applies it.
        self._params = nvimgcodec.DecodeParams(apply_exif_orientation=True, allow_any_depth=False)
        self._lock = threading.Lock()

    def decode(self, blobs: Sequence[bytes]) -> list[Any]:
        """Encoded images → a list of uint8 H×W×3 torch tensors on ``device``, None where one failed."""
        import numpy as np
        import torch

        with self._lock:
            try:
                streams = [self._nv.CodeStream(b) for b in blobs]
                images = self._decoder.decode(streams, params=self._params)
            except Exception:  # a whole-batch failure still only means: decode these on the CPU
                return [None] * len(blobs)
        out: list[Any] = []
        for img in images:
            try:
                t = (torch.from_dlpack(img) if self.on_gpu
                     else torch.from_numpy(np.array(img.cpu())))  # a copy the Image cannot outlive
            except Exception:  # e.g. a None entry: this image failed
                t = None
            ok = t is not None and t.dtype == torch.uint8 and t.ndim == 3 and t.shape[2] == 3
            out.append(t if ok else None)
        return out


def _encoded(src: Any, max_pixels: int) -> bytes | None:
    """The bytes worth handing to nvImageCodec, or None (then `load_image` decides, with its
    guards): only JPEG and 8-bit PNG whose header is within the pixel limit."""
    if isinstance(src, (str, os.PathLike)):
        try:  # the CPU path's bounded read: a FIFO or device is refused unopened, never waited on
            data = read_image_file(src, file_byte_limit(max_pixels), os.fsdecode(src))
        except NSNetError:
            return None
    elif isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
    else:
        return None
    info = image_size(data) if data else None
    if info is None or info[0] not in _FORMATS or info[1] * info[2] > max_pixels or min(info[1:]) <= 0:
        return None
    if info[0] == "png" and (len(data) < 26 or data[24] != 8):  # bit depth 8 only
        return None
    return data


def decode_batch(items: Sequence[Any], load: Callable[[int], Any], *, device: str,
                 decoder: NvDecoder | None = None, max_pixels: int = MAX_PIXELS) -> list[Any]:
    """Decode a batch to uint8 H×W×3 torch tensors on ``device``: nvImageCodec for what it takes
    (when ``decoder`` is given), ``load(i)`` (an RGB numpy array, or a typed error raised) for the
    rest and for every image nvImageCodec failed on. Returns per item a tensor or the exception."""
    import torch

    out: list[Any] = [None] * len(items)
    if decoder is not None:
        blobs = {i: b for i, b in enumerate(_encoded(x, max_pixels) for x in items) if b is not None}
        for i, t in zip(blobs, decoder.decode(list(blobs.values())) if blobs else []):
            out[i] = t
    for i in range(len(items)):
        if out[i] is None:
            try:
                out[i] = torch.from_numpy(load(i)).to(device)
            except Exception as e:  # recorded per input: one bad file never fails the batch
                out[i] = e
    return out
