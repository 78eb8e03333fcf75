"""Header walkers for the ISO box-structured formats: AVIF (ISO base media file format, HEIF
items) and JPEG 2000 (jp2 boxes, or a bare codestream); see `nsnet_sdk.pipeline.sniff`."""
from __future__ import annotations

import struct

from .header import J2K_TILE_BYTES, MAX_SEGMENTS, Header, Malformed

__all__ = ["avif", "jpeg2000"]


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
    types: dict[int, bytes] = {}
    locs: dict[int, tuple[int, int, int]] = {}
    idat = 0
    for kind, s, t in _boxes(b, meta[0] + 4, meta[1], counter):  # meta is a full box
        if kind == b"iinf":
            types = _iinf(b, s, t, counter)
        elif kind == b"iloc":
            locs = _iloc(b, s, t)
        elif kind == b"idat":
            idat = s
        elif kind == b"pitm":
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
    # A grid's canvas is its descriptor's output size, whatever the ispe boxes say (they may name
    # only the tiles): the largest of all declared extents is what gets allocated.
    grids = [_grid_size(b, locs.get(item), idat) for item, kind in types.items() if kind == b"grid"]
    tiles = sum(kind == b"av01" for kind in types.values())
    w, h = max(sizes + grids, key=lambda wh: wh[0] * wh[1])
    # With a grid, every coded tile is decoded, then composed: the tiles may outweigh the canvas.
    tile_px = max(a * c for a, c in sizes) * tiles if grids else 0
    irot = imir = None
    for index in assoc.get(primary, []):
        if 1 <= index <= len(props):
            kind, s, _ = props[index - 1]
            if kind == b"irot":
                irot = (b[s] & 3) or None
            elif kind == b"imir":
                imir = b[s] & 1
    alpha = b"auxiliary:alpha" in bytes(b[meta[0] : meta[1]]) or b"auxid:1" in bytes(b[meta[0] : meta[1]])
    # Measured peak per pixel (libavif + dav1d, then OpenCV's conversion, 2000x2000, 2-vCPU Xeon):
    # 18.3 bytes without alpha, 34.3 with an alpha plane (decoded as a second image), at the
    # largest size the 4 Mpx limit accepts.
    hdr = Header("avif", w, h, alpha=alpha, decode_bytes=max(w * h, tile_px) * (36 if alpha else 19))
    hdr.orientation = _AVIF_ORIENTATION[(irot, imir)]
    return hdr


def _iinf(b: memoryview, s: int, t: int, counter: list[int]) -> dict[int, bytes]:
    """item ID → item type (``av01``, ``grid``, ``Exif``...) from the item information box."""
    first = s + (6 if b[s] == 0 else 8)  # full box header, then a 16- or 32-bit entry count
    out: dict[int, bytes] = {}
    for kind, s2, _ in _boxes(b, first, t, counter):
        if kind == b"infe" and b[s2] >= 2:  # versions 2 and 3 carry the item type
            wide = b[s2] == 3
            item = struct.unpack(">I" if wide else ">H", b[s2 + 4 : s2 + (8 if wide else 6)])[0]
            at = s2 + (10 if wide else 8)
            out[item] = bytes(b[at : at + 4])
    return out


def _uint(b: memoryview, pos: int, size: int) -> tuple[int, int]:
    return (int.from_bytes(b[pos : pos + size], "big") if size else 0), pos + size


def _iloc(b: memoryview, s: int, t: int) -> dict[int, tuple[int, int, int]]:
    """item ID → (construction method, offset, length) of its first extent, from the item location
    box ``b[s:t]``. Walks no further than the box, and at most MAX_SEGMENTS items and extents in
    all (counts are 16/32-bit fields: 65,535 extents × 100,000 items would hang the walk)."""
    version = b[s]
    off_size, len_size = b[s + 4] >> 4, b[s + 4] & 15
    base_size, index_size = b[s + 5] >> 4, (b[s + 5] & 15) if version in (1, 2) else 0
    count, pos = _uint(b, s + 6, 2 if version < 2 else 4)
    out: dict[int, tuple[int, int, int]] = {}
    walked = 0
    for _ in range(min(count, MAX_SEGMENTS)):
        if pos >= t:
            raise Malformed("AVIF item locations (iloc) run past their box")
        item, pos = _uint(b, pos, 2 if version < 2 else 4)
        method = 0
        if version in (1, 2):
            method, pos = _uint(b, pos, 2)
        pos += 2  # data reference index
        base, pos = _uint(b, pos, base_size)
        extents, pos = _uint(b, pos, 2)
        walked += 1 + extents
        if walked > MAX_SEGMENTS or pos + extents * (index_size + off_size + len_size) > t:
            raise Malformed("AVIF item locations (iloc) declare more extents than their box holds")
        for k in range(extents):
            pos += index_size
            offset, pos = _uint(b, pos, off_size)
            length, pos = _uint(b, pos, len_size)
            if k == 0:
                out[item] = (method & 15, base + offset, length)
    return out


def _grid_size(b: memoryview, loc: tuple[int, int, int] | None, idat: int) -> tuple[int, int]:
    """Output width and height of an image grid item (its ImageGrid descriptor)."""
    if loc is None or loc[0] not in (0, 1):
        raise Malformed("AVIF grid item has no data in the file (iloc)")
    at = loc[1] + (idat if loc[0] == 1 else 0)
    wide = b[at + 1] & 1
    size = 4 if wide else 2
    w, h = (int.from_bytes(b[at + 4 + k * size : at + 4 + (k + 1) * size], "big") for k in (0, 1))
    if at + 4 + 2 * size > len(b) or w == 0 or h == 0:
        raise Malformed(f"AVIF grid descriptor is truncated or empty ({w}x{h})")
    return w, h


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
    # OpenJPEG holds every sample as int32 before converting to the 8/16-bit output, and keeps
    # bookkeeping per tile however small the tile (65,535 tiles of one pixel: 898 MB).
    return Header("jpeg2000", w, h, alpha=nc in (2, 4),
                  decode_bytes=w * h * (nc * 4 + 3) + tiles * J2K_TILE_BYTES)
