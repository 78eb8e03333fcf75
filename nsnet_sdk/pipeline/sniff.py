"""Header parsing: what an encoded image will cost to decode, read from its structure before any
decoder runs, so bombs, hangs and truncated files are refused at baseline memory.

Every format `load_image` accepts has a walker here that validates the container's structure
(chunk/box/segment lengths within the bytes present, required headers first, no ambiguous tags)
and returns a `Header`: the canvas the decoder will allocate, an estimate of its peak allocation,
and the counts that bound decoding time (JPEG scans, frames, pages). The walkers only read; they
never allocate in proportion to what a header claims. `nsnet_sdk.pipeline.decode` applies the
limits in `header` to the `Header`.
"""
from __future__ import annotations

import re
import struct

from . import sniff_boxes, sniff_iso, sniff_jpeg, sniff_png
from .header import MAX_FRAMES, MAX_SEGMENTS, Header, Malformed

__all__ = ["read_header"]


def read_header(data: bytes | memoryview) -> Header | None:
    """The `Header` of an encoded image, None if the format is not recognised.

    Raises:
        Malformed: the structure is corrupt, ambiguous, truncated inside the pixel data, or
            declares more segments/frames/scans than the limits allow.
    """
    b = memoryview(data)
    head = bytes(b[:32])
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n"):
            return sniff_png.png(b)
        if head.startswith(b"\xff\xd8"):
            return sniff_jpeg.jpeg(bytes(b))
        if head[:6] in (b"GIF87a", b"GIF89a"):
            return _gif(b)
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return sniff_boxes.webp(b)
        if head[:2] == b"BM":
            return _bmp(b)
        if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # classic TIFF, BigTIFF
            return sniff_boxes.tiff(b)
        if head[:1] == b"P" and head[1:2] in b"123456" and len(head) > 2 and head[2:3].isspace():
            return _pnm(b)
        if head[4:8] == b"ftyp" and (b"avif" in head[8:32] or b"avis" in head[8:32]):
            return sniff_iso.avif(b)
        if head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") or head[:4] == b"\xff\x4f\xff\x51":
            return sniff_iso.jpeg2000(b)
    except (struct.error, IndexError) as e:
        raise Malformed(f"header ends early or is corrupt ({e})") from None
    return None


# -- GIF ----------------------------------------------------------------------------------------


def _gif(b: memoryview) -> Header:
    sw, sh, flags = struct.unpack("<HHB", b[6:11])
    pos, n = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0), len(b)
    cw, ch, frames, alpha, transparent_next = sw, sh, 0, False, False
    segments = 0
    while True:
        if pos >= n:
            if frames == 0:
                raise Malformed("truncated: GIF ends before its first image")
            hdr = Header("gif", cw, ch, frames=frames, alpha=alpha)
            hdr.notes.append(f"truncated: GIF ends without its trailer after {frames} image(s)")
            return hdr
        kind = b[pos]
        if kind == 0x3B:  # trailer
            break
        if kind == 0x21:  # extension: label, then sub-blocks
            if b[pos + 1] == 0xF9 and frames == 0 and b[pos + 2] >= 4 and b[pos + 3] & 1:
                transparent_next = True
            pos = _gif_blocks(b, pos + 2, frames)
        elif kind == 0x2C:  # image descriptor
            x, y, w, h, f = struct.unpack("<HHHHB", b[pos + 1 : pos + 10])
            if w == 0 or h == 0:
                raise Malformed(f"GIF image {frames + 1} is empty ({w}x{h})")
            # Pillow grows the canvas to hold a frame that lies outside the logical screen.
            cw, ch = max(cw, x + w), max(ch, y + h)
            alpha = alpha or transparent_next
            pos += 10 + (3 << ((f & 7) + 1) if f & 0x80 else 0) + 1  # + LZW minimum code size
            pos = _gif_blocks(b, pos, frames)
            frames += 1
            if frames > MAX_FRAMES:
                raise Malformed(f"GIF has more than {MAX_FRAMES:,} frames")
        else:
            raise Malformed(f"GIF block type 0x{kind:02x} at byte {pos} is invalid")
        segments += 1
        if segments > MAX_SEGMENTS:
            raise Malformed(f"GIF has more than {MAX_SEGMENTS:,} blocks")
    if frames == 0:
        raise Malformed("GIF has no image")
    return Header("gif", cw, ch, frames=frames, alpha=alpha)


def _gif_blocks(b: memoryview, pos: int, frames: int) -> int:
    """Position after a chain of data sub-blocks starting at ``pos``."""
    n = len(b)
    while pos < n and b[pos]:
        pos += 1 + b[pos]
    if pos >= n:
        if frames == 0:
            raise Malformed("truncated: GIF ends inside its first image")
        return n
    return pos + 1


# -- BMP ----------------------------------------------------------------------------------------


def _bmp(b: memoryview) -> Header:
    n = len(b)
    offset, dib = struct.unpack("<II", b[10:18])
    if dib == 12:  # OS/2 BITMAPCOREHEADER: 16-bit unsigned sizes
        w, h, planes, bpp = struct.unpack("<HHHH", b[18:26])
        comp = 0
    elif dib in (40, 52, 56, 64, 108, 124):
        w, h, planes, bpp, comp = struct.unpack("<iiHHI", b[18:34])
    else:
        raise Malformed(f"BMP header size {dib} is not a known BMP variant")
    if bpp not in (1, 4, 8, 16, 24, 32) or comp not in (0, 1, 2, 3, 6) or planes != 1:
        raise Malformed(f"BMP declares {bpp} bits per pixel, compression {comp} (unsupported)")
    hdr = Header("bmp", w, abs(h))  # OpenCV reads BMP as colour only, as Pillow does 32-bit BI_RGB
    stride = ((w * bpp + 31) // 32) * 4
    if comp == 0 and (offset > n or n - offset < stride * abs(h)):
        hdr.defect = (f"truncated: BMP declares {w}x{abs(h)} ({stride * abs(h):,} bytes of pixels) "
                      f"but carries {max(n - offset, 0):,}")
    return hdr


# -- PNM ----------------------------------------------------------------------------------------


# Possessive: a comment of N '#' characters could otherwise split ~2^N ways before the match
# fails (a 100-byte header hung the fuzzer's worker).
_PNM_TOKEN = re.compile(rb"(?:\s++|#[^\n\r]*+)*+(\d+)")


def _pnm(b: memoryview) -> Header:
    head = bytes(b[: 1 << 16])
    kind, pos, vals = head[1] - 48, 2, []
    for _ in range(2 if kind in (1, 4) else 3):
        m = _PNM_TOKEN.match(head, pos)
        if m is None:
            raise Malformed("PNM header is incomplete or not numeric")
        vals.append(int(m.group(1)))
        pos = m.end()
    w, h = vals[0], vals[1]
    maxval = vals[2] if len(vals) > 2 else 1
    if not 1 <= maxval <= 65535:
        raise Malformed(f"PNM maximum sample value {maxval} is outside 1..65535")
    ch = 3 if kind in (3, 6) else 1
    sample = 2 if maxval > 255 else 1
    left = len(b) - pos - 1
    # Binary rasters have a fixed size; ASCII ones need at least one character per sample
    # (P1 digits may touch) or two (a digit and a separator).
    need = {4: ((w + 7) // 8) * h, 5: w * h * sample, 6: w * h * 3 * sample,
            1: w * h, 2: 2 * w * h - 1, 3: 6 * w * h - 1}[kind]
    hdr = Header("pnm", w, h, decode_bytes=w * h * ch * sample * 2)
    if left < need:
        hdr.defect = (f"truncated: PNM declares {w}x{h} but carries {max(left, 0):,} bytes of "
                      f"samples, fewer than the {need:,} it needs")
    return hdr
