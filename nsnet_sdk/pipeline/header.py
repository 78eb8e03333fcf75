"""Decoding limits and `Header`: what an encoded image declares it will cost to decode.

The sniffers (`sniff`, `sniff_boxes`) fill a `Header` from a file's structure alone; `decode`
refuses the file when the `Header` exceeds these limits, before any decoder allocates.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

__all__ = ["Header", "Malformed", "MAX_DECODE_BYTES_PER_PIXEL", "MAX_JPEG_SCANS", "MAX_SCAN_PIXELS",
           "MAX_FRAMES", "MAX_SEGMENTS", "MIN_TILE_SIDE", "METADATA_COPIES", "J2K_TILE_BYTES"]

# Peak decoder allocation allowed per pixel of ``max_pixels``: 16-bit RGBA at the pixel limit.
MAX_DECODE_BYTES_PER_PIXEL = 8
# libjpeg-turbo's own tools cap progressive scans the same way (djpeg -maxscans); ordinary encoders
# write at most ~12. Every scan is a pass over all coefficients, so time is scans × pixels.
MAX_JPEG_SCANS = 100
MAX_SCAN_PIXELS = 1_000_000_000  # scans × pixels: e.g. 10 scans at the 100 MP default limit
# Frames (GIF, APNG, animated WebP) and pages (TIFF IFDs) a file may declare.
MAX_FRAMES = 10_000
# Chunks / marker segments / boxes walked before a file counts as a parser-time attack.
MAX_SEGMENTS = 100_000
# Decoders copy metadata (EXIF, XMP, ICC, text) they read: OpenCV keeps each APP segment and
# returns it again, measured 2.39 GB for 630 MB of JPEG APP segments (×3.8).
METADATA_COPIES = 4
# OpenJPEG's bookkeeping per codestream tile, whatever the tile's size: 65,535 tiles of 1×1 pixel
# cost 898 MB (13.7 KB each) on a 2-vCPU Xeon.
J2K_TILE_BYTES = 16 << 10
# A TIFF tile may exceed the image (small images use standard tiles) but not this side, unless the
# image itself is larger: bounds the tile buffer of a tiny image declaring enormous tiles.
MIN_TILE_SIDE = 1024


class Malformed(ValueError):
    """The file's structure is inconsistent, ambiguous or beyond a limit; the message says how."""


@dataclass
class Header:
    """What decoding an encoded image will cost, as declared by its structure."""

    fmt: str
    width: int
    height: int
    decode_bytes: int = 0  # estimated peak allocation of the decoder (0: output buffer only)
    scans: int = 1  # JPEG scans (each a full pass over the coefficients)
    frames: int = 1  # frames or pages declared
    alpha: bool = False  # the file may carry transparency
    premultiplied: bool = False  # the decoder returns colours already multiplied by alpha
    orientation: int = 1  # EXIF-style orientation declared by the container itself (TIFF, AVIF)
    # Sample layout as stored (JPEG components / PNG samples per pixel, bits per sample; 0 where
    # not read) and the JPEG entropy coder: what decides which decode engines may take the file.
    components: int = 0
    bit_depth: int = 0
    huffman: bool = True
    metadata_bytes: int = 0  # bytes of metadata segments/chunks the decoder reads and copies
    notes: list[str] = field(default_factory=list)  # harmless defects, reported as warnings
    # A defect that refuses the file, checked after the size limits so that a bomb is reported
    # as too large rather than as the corrupt file it usually also is.
    defect: str | None = None
    # A slower structural check (e.g. inflating PNG data) run only once the limits have passed;
    # returns a defect or None.
    verify: Callable[[], str | None] | None = None

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise Malformed(f"{self.fmt} header declares an empty size {self.width}x{self.height}")
        self.decode_bytes = (max(self.decode_bytes, self.width * self.height * 4)
                             + METADATA_COPIES * self.metadata_bytes)
