"""Header walkers for the tag- and chunk-structured formats: TIFF (classic and BigTIFF) and WebP.

Each validates the structure the decoder will trust (tag values, chunk lengths, tile and strip
geometry) and returns a `Header`; AVIF and JPEG 2000 are in `sniff_iso`, the dispatcher is
`nsnet_sdk.pipeline.sniff`.
"""
from __future__ import annotations

import struct

import numpy as np

from .header import MAX_FRAMES, MAX_SEGMENTS, MIN_TILE_SIDE, Header, Malformed
from .metadata import tiff_entries
from .sniff_jpeg import jpeg

__all__ = ["tiff", "webp"]

# -- TIFF ---------------------------------------------------------------------------------------

_TIFF_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4,
                   16: 8, 17: 8, 18: 8}
_TIFF_INT_TYPES = {3: "u2", 4: "u4", 16: "u8"}  # SHORT, LONG, LONG8 (BigTIFF)
# Tags that decide what the decoder allocates; a second copy makes the header ambiguous (the
# sniffer and libtiff could read different values), so it is refused.
_TIFF_TAGS = {256: "ImageWidth", 257: "ImageLength", 258: "BitsPerSample", 259: "Compression",
              262: "PhotometricInterpretation", 273: "StripOffsets", 274: "Orientation",
              277: "SamplesPerPixel", 278: "RowsPerStrip", 279: "StripByteCounts",
              284: "PlanarConfiguration", 322: "TileWidth", 323: "TileLength", 324: "TileOffsets",
              325: "TileByteCounts", 338: "ExtraSamples"}


def _tiff_ifd(b: memoryview, e: str, ifd: int, big: bool) -> dict[int, np.ndarray]:
    tags: dict[int, np.ndarray] = {}
    try:
        entries = list(tiff_entries(b, e, ifd, 1 << 16, big))
    except struct.error:
        raise Malformed(f"truncated: TIFF directory at byte {ifd} ends past the end of the file") from None
    for tag, typ, cnt, value in entries:
        if tag not in _TIFF_TAGS:
            continue
        if tag in tags:
            raise Malformed(f"TIFF directory repeats the {_TIFF_TAGS[tag]} tag: the header is ambiguous")
        if typ not in _TIFF_INT_TYPES or cnt == 0 or (typ == 16 and not big):
            raise Malformed(f"TIFF {_TIFF_TAGS[tag]} tag has type {typ} x {cnt} (need SHORT or LONG)")
        size = _TIFF_TYPE_SIZE[typ] * cnt
        if size <= len(value):
            data = value[:size]
        else:
            (off,) = struct.unpack(e + ("Q" if big else "I"), value)
            if off + size > len(b):
                raise Malformed(f"truncated: TIFF {_TIFF_TAGS[tag]} values lie past the end of the file")
            data = bytes(b[off : off + size])
        values = np.frombuffer(data, e + _TIFF_INT_TYPES[typ])
        if values.max() > 1 << 62:  # no file holds such an offset or size; keeps int64 exact
            raise Malformed(f"TIFF {_TIFF_TAGS[tag]} value {int(values.max()):,} is out of range")
        tags[tag] = values.astype(np.int64)
    return tags


def tiff(b: memoryview) -> Header:
    e, n = ("<" if bytes(b[:2]) == b"II" else ">"), len(b)
    big = struct.unpack(e + "H", b[2:4])[0] == 43  # BigTIFF: 64-bit offsets and counts
    if big and struct.unpack(e + "HH", b[4:8]) != (8, 0):
        raise Malformed("BigTIFF header declares an offset size other than 8")
    head, entry, word = (8, 20, "Q") if big else (2, 12, "I")
    (ifd,) = struct.unpack(e + word, b[8:16] if big else b[4:8])
    first: dict[int, np.ndarray] | None = None
    pages, seen = 0, set()
    while ifd:
        if ifd in seen:
            raise Malformed("TIFF page chain loops back on itself")
        if ifd + 2 > n:
            raise Malformed(f"truncated: TIFF directory offset {ifd} lies past the end of the file")
        seen.add(ifd)
        pages += 1
        if pages > MAX_FRAMES:
            raise Malformed(f"TIFF has more than {MAX_FRAMES:,} pages")
        if first is None:
            first = _tiff_ifd(b, e, ifd, big)
        if ifd + head > n:
            raise Malformed(f"truncated: TIFF directory at byte {ifd} ends past the end of the file")
        (count,) = struct.unpack(e + ("Q" if big else "H"), b[ifd : ifd + head])
        end = ifd + head + entry * count
        if end + (8 if big else 4) > n:
            raise Malformed(f"truncated: TIFF directory at byte {ifd} ends past the end of the file")
        (ifd,) = struct.unpack(e + word, b[end : end + (8 if big else 4)])
    if first is None or 256 not in first or 257 not in first:
        raise Malformed("TIFF first page lacks ImageWidth or ImageLength")
    t = first
    w, h = int(t[256][0]), int(t[257][0])
    spp = int(t.get(277, [1])[0])
    bits = int(max(t.get(258, [1])))
    if not 1 <= spp <= 16 or bits not in (1, 2, 4, 8, 12, 16, 32, 64):
        raise Malformed(f"TIFF declares {spp} samples of {bits} bits (unsupported)")
    planes = spp if int(t.get(284, [1])[0]) == 2 else 1
    px_bytes = max(4, spp) * -(-bits // 8)  # decoders expand to at least 4 channels of 8 bits
    hdr = Header("tiff", w, h, frames=pages, alpha=338 in t or spp in (2, 4) and int(t.get(262, [2])[0]) != 5)
    # libtiff's RGBA reader (8-bit samples) returns colours premultiplied by alpha; raw 16-bit
    # samples are premultiplied only when the file says so (ExtraSamples = 1, associated alpha).
    hdr.premultiplied = hdr.alpha and (bits <= 8 or int(t.get(338, [0])[0]) == 1)
    o = int(t.get(274, [1])[0])
    hdr.orientation = o if 1 <= o <= 8 else 1
    if 322 in t or 323 in t:
        tw, th = int(t.get(322, [0])[0]), int(t.get(323, [0])[0])
        if tw == 0 or th == 0 or tw > max(w, MIN_TILE_SIDE) or th > max(h, MIN_TILE_SIDE):
            raise Malformed(f"TIFF tiles of {tw}x{th} for a {w}x{h} image are out of bounds")
        expected = -(-w // tw) * -(-h // th) * planes
        offsets, counts = t.get(324), t.get(325)
        block = tw * th
    else:
        rows = int(t.get(278, [h])[0])
        if rows == 0:
            raise Malformed("TIFF RowsPerStrip is 0")
        rows = min(rows, h)
        expected = -(-h // rows) * planes
        offsets, counts = t.get(273), t.get(279)
        block = w * rows
    hdr.decode_bytes = w * h * px_bytes + block * px_bytes
    if planes > 1 and bits > 8:
        # OpenCV 5.1 and Pillow 11 both assemble such planes into wrong pixels (checked against
        # the planes written): refused rather than scored.
        hdr.defect = (f"TIFF stores {spp} samples of {bits} bits in separate planes (PlanarConfiguration 2), "
                      "which no available decoder assembles correctly; save it with contiguous samples")
    elif offsets is None or len(offsets) < expected or counts is not None and len(counts) < len(offsets):
        hdr.defect = (f"TIFF lists {0 if offsets is None else len(offsets)} strips/tiles, "
                      f"its geometry needs {expected}")
    elif counts is not None and np.any(offsets[:expected] + counts[:expected] > n):
        hdr.defect = "truncated: TIFF pixel data lies past the end of the file"
    elif counts is not None and int(t.get(259, [1])[0]) in (6, 7):
        hdr.scans = _jpeg_strip_scans(b, offsets[:expected], counts[:expected])
    return hdr


def _jpeg_strip_scans(b: memoryview, offsets: np.ndarray, counts: np.ndarray) -> int:
    """Most scans in any JPEG-compressed strip or tile: each is a JPEG stream of its own, held to
    the JPEG walker's checks (a 100-scan progressive strip costs what such a JPEG file costs)."""
    most = 1
    for off, cnt in zip(offsets.tolist(), counts.tolist()):
        if cnt >= 2 and bytes(b[off : off + 2]) == b"\xff\xd8":
            try:
                most = max(most, jpeg(bytes(b[off : off + cnt])).scans)
            except Malformed as e:
                raise Malformed(f"TIFF JPEG strip at byte {off}: {e}") from None
    return most


# -- WebP ---------------------------------------------------------------------------------------


def webp(b: memoryview) -> Header:
    (riff,) = struct.unpack("<I", b[4:8])
    end = riff + 8
    if end > len(b):
        raise Malformed(f"truncated: WebP declares {end:,} bytes but carries {len(b):,}")
    pos, canvas, frames, alpha, image, meta = 12, None, 0, False, None, 0
    segments = 0
    while pos + 8 <= end:
        tag, size = bytes(b[pos : pos + 4]), struct.unpack("<I", b[pos + 4 : pos + 8])[0]
        body = pos + 8
        if body + size > end:
            raise Malformed(f"truncated: WebP chunk {tag!r} declares {size:,} bytes past the end")
        segments += 1
        if segments > MAX_SEGMENTS:
            raise Malformed(f"WebP has more than {MAX_SEGMENTS:,} chunks")
        if tag in (b"EXIF", b"XMP ", b"ICCP"):  # metadata the decoder hands back as copies
            meta += size
        if tag == b"VP8X" and size >= 10:
            alpha = bool(b[body] & 0x10)
            canvas = (int.from_bytes(b[body + 4 : body + 7], "little") + 1,
                      int.from_bytes(b[body + 7 : body + 10], "little") + 1)
        elif tag == b"ANMF" and size >= 16:
            if canvas is None:
                raise Malformed("WebP animation frame without a VP8X canvas")
            x, y = (2 * int.from_bytes(b[body + k : body + k + 3], "little") for k in (0, 3))
            fw, fh = (int.from_bytes(b[body + k : body + k + 3], "little") + 1 for k in (6, 9))
            if x + fw > canvas[0] or y + fh > canvas[1]:
                raise Malformed(f"WebP frame {fw}x{fh} at ({x},{y}) lies outside the canvas")
            frames += 1
            if frames > MAX_FRAMES:
                raise Malformed(f"WebP has more than {MAX_FRAMES:,} frames")
        elif tag in (b"VP8 ", b"VP8L") and image is None:
            image = _webp_bitstream(tag, b[body : body + size])
            alpha = alpha or image[2]
        pos = body + size + (size & 1)
    if canvas is None:
        if image is None:
            raise Malformed("WebP has no image chunk")
        canvas = image[:2]
    elif image is not None and frames == 0 and (image[0] > canvas[0] or image[1] > canvas[1]):
        raise Malformed(f"WebP image {image[0]}x{image[1]} is larger than its canvas {canvas}")
    w, h = canvas
    return Header("webp", w, h, frames=max(frames, 1), alpha=alpha, decode_bytes=w * h * 8, metadata_bytes=meta)


def _webp_bitstream(tag: bytes, s: memoryview) -> tuple[int, int, bool]:
    if tag == b"VP8 ":
        if bytes(s[3:6]) != b"\x9d\x01\x2a":
            raise Malformed("WebP VP8 frame lacks its start code")
        w, h = struct.unpack("<HH", s[6:10])
        return w & 0x3FFF, h & 0x3FFF, False
    if s[0] != 0x2F:
        raise Malformed("WebP lossless frame lacks its signature")
    bits = int.from_bytes(s[1:5], "little")
    return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, bool(bits >> 28 & 1)
