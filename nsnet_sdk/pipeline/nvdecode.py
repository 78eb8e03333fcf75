"""The GPU executor's decode engine: nvImageCodec, behind the same guards as the CPU decoders.

Every input goes through the chain's bounded read (`read.read_input_bytes`) and structural checks
and budget (`decode.inspect_bytes`) first: bytes reach nvImageCodec only once they have passed what
`load_image` demands, so a bomb, a truncated stream or a FIFO gets the CPU path's error. Only files
whose decode nvImageCodec performs exactly as the CPU path does are handed to it (`gpu_shape`);
everything else (transparency, XMP orientation, CMYK, 12/16-bit, arithmetic coding, formats other
than JPEG and PNG, arrays, PIL images) and anything nvImageCodec fails on is decoded by
`decode.decode_image` from the bytes already read. Nothing here imports nvImageCodec until a
decoder is built.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Any, Sequence

from ..errors import as_input_error
from .config import MAX_PIXELS
from .decode import decode_image, decode_inspected, inspect_bytes
from .header import Header
from .inputs import bgr_to_rgb, require_image
from .read import read_input_bytes

__all__ = ["nvimgcodec_available", "NvDecoder", "gpu_shape", "decode_batch"]

_log = logging.getLogger("nsnet_sdk.nvimgcodec")


def nvimgcodec_available() -> tuple[bool, str]:
    """(True, "") when ``nvidia.nvimgcodec`` imports, else (False, why)."""
    from ..quiet import native_stderr_to_logging

    try:
        with native_stderr_to_logging(logger=_log):  # its extensions' load errors: see NvDecoder
            from nvidia import nvimgcodec  # noqa: F401
    except Exception as e:  # ImportError, or a missing CUDA runtime library
        return False, f"nvImageCodec is not usable ({type(e).__name__}: {e}); pip install 'nsnet-sdk[gpu-decode]'"
    return True, ""


def gpu_shape(data: bytes, hdr: Header) -> tuple[int, int] | None:
    """The (height, width) nvImageCodec must return for this checked file, when it decodes it to
    the CPU path's pixels; None when the file goes to the CPU decoder instead.

    Taken: 8-bit Huffman JPEG with 1 or 3 components, with no EXIF or exactly one well-formed EXIF
    block (whose orientation both decoders apply alike), and 8-bit opaque single-frame PNG with no
    orientation metadata. Left to the CPU decoder: transparency (flattened over white there), CMYK
    and 12-bit JPEG, arithmetic coding, 16-bit and low-bit-depth PNG, an XMP ``tiff:Orientation``
    (applied by the CPU path only), EXIF in a PNG (``eXIf`` or a ``Raw profile`` text chunk), and
    a JPEG whose EXIF is repeated or malformed (nvImageCodec's EXIF handling crashed the process
    on a JPEG carrying two EXIF blocks).
    """
    if hdr.alpha or hdr.bit_depth != 8 or b"tiff:Orientation" in data:
        return None
    if hdr.fmt == "png":
        if hdr.frames != 1 or b"eXIf" in data or b"Raw profile type" in data:
            return None
        return hdr.height, hdr.width
    if hdr.fmt != "jpeg" or not hdr.huffman or hdr.components not in (1, 3):
        return None
    orientation = _single_exif_orientation(data)
    if orientation is None:
        return None
    return (hdr.width, hdr.height) if orientation in (5, 6, 7, 8) else (hdr.height, hdr.width)


def _single_exif_orientation(data: bytes) -> int | None:
    """1 for a JPEG without EXIF; the orientation of its one well-formed EXIF APP1 block; None for
    repeated or malformed EXIF (or a stray ``Exif`` header elsewhere)."""
    import struct

    from .metadata import tiff_entries
    from .orient import exif_orientation

    at = data.find(b"Exif\x00\x00")
    if at < 0:
        return 1
    if data.find(b"Exif\x00\x00", at + 6) >= 0 or at < 4 or data[at - 4:at - 2] != b"\xff\xe1":
        return None
    block = data[at + 6:at - 2 + struct.unpack(">H", data[at - 2:at])[0]]
    try:  # the whole first directory lies inside the block, in a known byte order
        e = {b"II": "<", b"MM": ">"}[block[:2]]
        (ifd,) = struct.unpack(e + "I", block[4:8])
        (count,) = struct.unpack(e + "H", block[ifd:ifd + 2])
        list(tiff_entries(block, e, ifd, count))
    except (KeyError, struct.error):
        return None
    return exif_orientation(block) or 1


class NvDecoder:
    """One nvImageCodec decoder (its GPU backends on ``cuda``; on ``cpu`` its CPU-only backend,
    which needs no CUDA driver), EXIF orientation applied, RGB out. Calls are serialised: one decoder
    is shared by the decode threads."""

    def __init__(self, device: str = "cuda") -> None:
        from ..quiet import native_stderr_to_logging

        self.device = str(device)
        self.on_gpu = self.device.startswith("cuda")
        # Loading nvImageCodec's extensions prints an [ERROR] line for each optional codec library
        # absent (nvJPEG2000, nvTIFF; nvJPEG on the CPU): routed to logging, not the terminal.
        with native_stderr_to_logging(logger=_log):
            from nvidia import nvimgcodec

            self._nv = nvimgcodec
            if self.on_gpu:
                index = int(self.device.split(":")[1]) if ":" in self.device else 0
                self._decoder = nvimgcodec.Decoder(device_id=index)
            else:
                self._decoder = nvimgcodec.Decoder(
                    device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY,
                    backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.CPU_ONLY)])
        # Defaults: sRGB, interleaved (H×W×3), 8-bit; EXIF orientation as load_image applies it.
        self._params = nvimgcodec.DecodeParams(apply_exif_orientation=True, allow_any_depth=False)
        self._lock = threading.Lock()

    def decode(self, blobs: Sequence[bytes], cuda_stream: int = 0) -> list[Any]:
        """Encoded images → a list of uint8 H×W×3 torch tensors on ``device``, None where one failed.
        ``cuda_stream``: the stream (a ``cudaStream_t`` as int) the results are ordered on."""
        import numpy as np
        import torch

        with self._lock:
            try:
                streams = [self._nv.CodeStream(b) for b in blobs]
                images = self._decoder.decode(streams, params=self._params, cuda_stream=cuda_stream)
            except Exception:  # a whole-batch failure still only means: decode these on the CPU
                return [None] * len(blobs)
        out: list[Any] = []
        for img in images:
            try:
                # On the CPU: a writable copy the Image cannot outlive (torch warns on read-only views).
                t = torch.from_dlpack(img) if self.on_gpu else torch.from_numpy(np.array(img.cpu()))
            except Exception:  # e.g. a None entry: this image failed
                t = None
            ok = t is not None and t.dtype == torch.uint8 and t.ndim == 3 and t.shape[2] == 3
            out.append(t if ok else None)
        return out


def _tensor(img: Any, device: str) -> Any:
    """A decoded array on ``device``; a read-only one (an array input as given) is copied, as torch
    does not take read-only memory."""
    import torch

    return torch.from_numpy(img if img.flags.writeable else img.copy()).to(device)


def decode_batch(items: Sequence[Any], names: Sequence[str], *, device: str,
                 decoder: NvDecoder | None = None, max_pixels: int = MAX_PIXELS,
                 bgr: bool = False, cuda_stream: int = 0) -> list[tuple[Any, tuple[str, ...]]]:
    """Decode a batch to uint8 RGB H×W×3 torch tensors on ``device``: per item (tensor, the
    decoder's warnings), or (the typed error naming it, ()). ``bgr``: array inputs are in OpenCV's
    order. Outcomes are those of `decode.decode_image` on the same input."""
    out: list[Any] = [None] * len(items)
    encoded: dict[int, tuple[bytes, Header, tuple[int, int]]] = {}
    for i, (src, name) in enumerate(zip(items, names)):
        try:
            require_image(src, name)
            if decoder is not None and isinstance(src, (str, os.PathLike, bytes, bytearray, memoryview)):
                src = read_input_bytes(src, max_pixels, name)  # read once: the CPU decode reuses it
                hdr = inspect_bytes(src, max_pixels, name)
                shape = gpu_shape(src, hdr)
                if shape is not None:
                    encoded[i] = (src, hdr, shape)
                    continue
                img, _, notes = decode_inspected(src, hdr, max_pixels, name)
            else:
                img, _, notes = decode_image(bgr_to_rgb(src) if bgr else src, max_pixels, name=name)
            out[i] = (_tensor(img, device), tuple(notes))
        except Exception as e:  # recorded per input: one bad file never fails the batch
            out[i] = (as_input_error(e, name), ())
    if encoded:
        for i, t in zip(encoded, decoder.decode([data for data, _, _ in encoded.values()], cuda_stream)):
            data, hdr, shape = encoded[i]
            if t is not None and tuple(t.shape[:2]) == shape:  # any other orientation: the CPU decides
                out[i] = (t, tuple(hdr.notes))
                continue
            try:  # nvImageCodec failed on a checked file: the CPU decoder's verdict is the outcome
                img, _, notes = decode_inspected(data, hdr, max_pixels, names[i])
                out[i] = (_tensor(img, device), tuple(notes))
            except Exception as e:
                out[i] = (as_input_error(e, names[i]), ())
    return out
