"""Header walkers for the tag- and box-structured formats: TIFF, WebP, AVIF and JPEG 2000.

Each validates the structure the decoder will trust (tag values, chunk and box lengths, tile and
strip geometry) and returns a `Header`; see `nsnet_sdk.pipeline.sniff` for the others.
"""
from __future__ import annotations

import struct

import numpy as np

from .header import MAX_FRAMES, MAX_SEGMENTS, MIN_TILE_SIDE, Header, Malformed
from .metadata import tiff_entries

__all__ = ["tiff", "webp", "avif", "jpeg2000"]

# -- TIFF ---------------------------------------------------------------------------------------

_TIFF_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
# Tags that decide what the decoder allocates; a second copy makes the header ambiguous (the
# sniffer and libtiff could read different values), so it is refused.
_TIFF_TAGS = {256: "ImageWidth", 257: "ImageLength", 258: "BitsPerSample", 259: "Compression",
              262: "PhotometricInterpretation", 273: "StripOffsets", 274: "Orientation",
              277: "SamplesPerPixel", 278: "RowsPerStrip", 279: "StripByteCounts",
              284: "PlanarConfiguration", 322: "TileWidth", 323: "TileLength", 324: "TileOffsets",
              325: "TileByteCounts", 338: "ExtraSamples"}


def _tiff_ifd(b: memoryview, e: str, ifd: int) -> dict[int, np.ndarray]:
    tags: dict[int, np.ndarray] = {}
    try:
        entries = list(tiff_entries(b, e, ifd, 1 << 16))
    except struct.error:
        raise Malformed(f"truncated: TIFF directory at byte {ifd} ends past the end of the file") from None
    for tag, typ, cnt, value in entries:
        if tag not in _TIFF_TAGS:
            continue
        if tag in tags:
            raise Malformed(f"TIFF directory repeats the {_TIFF_TAGS[tag]} tag: the header is ambiguous")
        if typ not in (3, 4) or cnt == 0:
            raise Malformed(f"TIFF {_TIFF_TAGS[tag]} tag has type {typ} x {cnt} (need SHORT or LONG)")
        size = _TIFF_TYPE_SIZE[typ] * cnt
        if size <= 4:
            data = value[:size]
        else:
            (off,) = struct.unpack(e + "I", value)
            if off + size > len(b):
                raise Malformed(f"truncated: TIFF {_TIFF_TAGS[tag]} values lie past the end of the file")
            data = bytes(b[off : off + size])
        tags[tag] = np.frombuffer(data, (e + "u2") if typ == 3 else (e + "u4")).astype(np.int64)
    return tags


def tiff(b: memoryview) -> Header:
    e, n = ("<" if bytes(b[:2]) == b"II" else ">"), len(b)
    (ifd,) = struct.unpack(e + "I", b[4:8])
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
            first = _tiff_ifd(b, e, ifd)
        (count,) = struct.unpack(e + "H", b[ifd : ifd + 2])
        if ifd + 2 + 12 * count + 4 > n:
            raise Malformed(f"truncated: TIFF directory at byte {ifd} ends past the end of the file")
        (ifd,) = struct.unpack(e + "I", b[ifd + 2 + 12 * count : ifd + 6 + 12 * count])
    if first is None or 256 not in first or 257 not in first:
        raise Malformed("TIFF first page lacks ImageWidth or ImageLength")
    t = first
    w, h = int(t[256][0]), int(t[257][0])
    spp = int(t.get(277, [1])[0])
    bits = int(max(t.get(258, [1])))
    if not 1 <= spp <= 16 or bits not in (1, 2, 4, 8, 16, 32, 64):
        raise Malformed(f"TIFF declares {spp} samples of {bits} bits (unsupported)")
    planes = spp if int(t.get(284, [1])[0]) == 2 else 1
    px_bytes = max(4, spp) * max(1, bits // 8)  # decoders expand to at least 4 channels of 8 bits
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
    if offsets is None or len(offsets) < expected or counts is not None and len(counts) < len(offsets):
        hdr.defect = (f"TIFF lists {0 if offsets is None else len(offsets)} strips/tiles, "
                      f"its geometry needs {expected}")
    elif counts is not None and np.any(offsets[:expected] + counts[:expected] > n):
        hdr.defect = "truncated: TIFF pixel data lies past the end of the file"
    return hdr


# -- WebP ---------------------------------------------------------------------------------------


def webp(b: memoryview) -> Header:
    (riff,) = struct.unpack("<I", b[4:8])
    end = riff + 8
    if end > len(b):
        raise Malformed(f"truncated: WebP declares {end:,} bytes but carries {len(b):,}")
    pos, canvas, frames, alpha, image = 12, None, 0, False, None
    segments = 0
    while pos + 8 <= end:
        tag, size = bytes(b[pos : pos + 4]), struct.unpack("<I", b[pos + 4 : pos + 8])[0]
        body = pos + 8
        if body + size > end:
            raise Malformed(f"truncated: WebP chunk {tag!r} declares {size:,} bytes past the end")
        segments += 1
        if segments > MAX_SEGMENTS:
            raise Malformed(f"WebP has more than {MAX_SEGMENTS:,} chunks")
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
    return Header("webp", w, h, frames=max(frames, 1), alpha=alpha, decode_bytes=w * h * 8)


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


# -- AVIF (ISO base media file format) -----------------------------------------------------------


def _boxes(b: memoryview, start: int, end: int, counter: list[int]):
    """(type, body start, body end) of each box in ``b[start:end]``."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", b[pos : pos + 8])
        head = 8
        if size == 1:
            (size,) = struct.unpack(">Q", b[pos + 8 : pos + 16])
            head = 16
        elif size == 0:
            size = end - pos
        if size < head or pos + size > end:
            raise Malformed(f"truncated: box {kind!r} at byte {pos} declares {size:,} bytes past its parent")
        counter[0] += 1
        if counter[0] > MAX_SEGMENTS:
            raise Malformed(f"file has more than {MAX_SEGMENTS:,} boxes")
        yield kind, pos + head, pos + size
        pos += size


# (irot angle or None, imir axis or None) → EXIF orientation, as libavif and Pillow map them.
# irot turns anticlockwise, then imir flips: axis 0 top-bottom, axis 1 left-right.
_AVIF_ORIENTATION = {(None, None): 1, (None, 0): 4, (None, 1): 2, (1, None): 8, (2, None): 3,
                     (3, None): 6, (1, 0): 5, (1, 1): 7, (2, 0): 2, (2, 1): 4, (3, 0): 7, (3, 1): 5}


def avif(b: memoryview) -> Header:
    counter = [0]
    meta = next(((s, t) for kind, s, t in _boxes(b, 0, len(b), counter) if kind == b"meta"), None)
    if meta is None:
        raise Malformed("AVIF has no meta box")
    props: list[tuple[bytes, int, int]] = []
    assoc: dict[int, list[int]] = {}
    primary = None
    for kind, s, t in _boxes(b, meta[0] + 4, meta[1], counter):  # meta is a full box
        if kind == b"pitm":
            primary = struct.unpack(">H" if b[s] == 0 else ">I", b[s + 4 : s + (6 if b[s] == 0 else 8)])[0]
        elif kind == b"iprp":
            for k2, s2, t2 in _boxes(b, s, t, counter):
                if k2 == b"ipco":
                    props = list(_boxes(b, s2, t2, counter))
                elif k2 == b"ipma":
                    assoc.update(_ipma(b, s2))
    sizes = [struct.unpack(">II", b[s + 4 : s + 12]) for kind, s, _ in props if kind == b"ispe"]
    if not sizes:
        raise Malformed("AVIF declares no image size (ispe)")
    # The largest extent (a grid's canvas, not its tiles or thumbnail) is what gets allocated.
    w, h = max(sizes, key=lambda wh: wh[0] * wh[1])
    irot = imir = None
    for index in assoc.get(primary, []):
        if 1 <= index <= len(props):
            kind, s, _ = props[index - 1]
            if kind == b"irot":
                irot = (b[s] & 3) or None
            elif kind == b"imir":
                imir = b[s] & 1
    alpha = b"auxiliary:alpha" in bytes(b[meta[0] : meta[1]]) or b"auxid:1" in bytes(b[meta[0] : meta[1]])
    hdr = Header("avif", w, h, alpha=alpha, decode_bytes=w * h * 12)
    hdr.orientation = _AVIF_ORIENTATION[(irot, imir)]
    return hdr


def _ipma(b: memoryview, s: int) -> dict[int, list[int]]:
    version, flags = b[s], int.from_bytes(b[s + 1 : s + 4], "big")
    (entries,) = struct.unpack(">I", b[s + 4 : s + 8])
    pos, out = s + 8, {}
    for _ in range(min(entries, MAX_SEGMENTS)):
        if version < 1:
            (item,) = struct.unpack(">H", b[pos : pos + 2])
            pos += 2
        else:
            (item,) = struct.unpack(">I", b[pos : pos + 4])
            pos += 4
        count = b[pos]
        pos += 1
        idx = []
        for _ in range(count):
            if flags & 1:
                idx.append(struct.unpack(">H", b[pos : pos + 2])[0] & 0x7FFF)
                pos += 2
            else:
                idx.append(b[pos] & 0x7F)
                pos += 1
        out[item] = idx
    return out


# -- JPEG 2000 ----------------------------------------------------------------------------------


def jpeg2000(b: memoryview) -> Header:
    if bytes(b[:4]) == b"\xff\x4f\xff\x51":
        return _j2k_siz(b, 0, None)
    counter, ihdr, code = [0], None, None
    for kind, s, t in _boxes(b, 0, len(b), counter):
        if kind == b"jp2h":
            for k2, s2, _ in _boxes(b, s, t, counter):
                if k2 == b"ihdr":
                    ihdr = struct.unpack(">II", b[s2 : s2 + 8])[::-1]
        elif kind == b"jp2c":
            code = s
            break
    if code is None:
        raise Malformed("JPEG 2000 file has no codestream (jp2c box)")
    return _j2k_siz(b, code, ihdr)


def _j2k_siz(b: memoryview, s: int, ihdr: tuple[int, int] | None) -> Header:
    # The codestream's SIZ marker, not the jp2 ihdr box, is what the decoder allocates from.
    if bytes(b[s : s + 4]) != b"\xff\x4f\xff\x51":
        raise Malformed("JPEG 2000 codestream does not start with SOC and SIZ markers")
    xs, ys, xo, yo, xt, yt, xto, yto = struct.unpack(">8I", b[s + 8 : s + 40])
    (nc,) = struct.unpack(">H", b[s + 40 : s + 42])
    w, h = xs - xo, ys - yo
    if xo >= xs or yo >= ys or xt == 0 or yt == 0 or xto > xo or yto > yo:
        raise Malformed(f"JPEG 2000 image/tile geometry is invalid ({xs}x{ys}, tiles {xt}x{yt})")
    tiles = -(-(xs - xto) // xt) * -(-(ys - yto) // yt)
    if tiles > 65535:  # the most a codestream can index (Isot is 16 bits)
        raise Malformed(f"JPEG 2000 declares {tiles:,} tiles (at most 65,535)")
    if not 1 <= nc <= 4:
        raise Malformed(f"JPEG 2000 declares {nc} components (1 to 4 supported)")
    if ihdr is not None:  # a disagreeing jp2 header counts too: the larger of the two is checked
        w, h = max(w, ihdr[0]), max(h, ihdr[1])
    # OpenJPEG holds every sample as int32 before converting to the 8/16-bit output.
    return Header("jpeg2000", w, h, alpha=nc in (2, 4), decode_bytes=w * h * (nc * 4 + 3))
