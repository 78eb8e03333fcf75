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
import zlib

from . import sniff_boxes
from .header import MAX_FRAMES, MAX_JPEG_SCANS, MAX_SEGMENTS, Header, Malformed

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
            return _png(b)
        if head.startswith(b"\xff\xd8"):
            return _jpeg(bytes(b))
        if head[:6] in (b"GIF87a", b"GIF89a"):
            return _gif(b)
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return sniff_boxes.webp(b)
        if head[:2] == b"BM":
            return _bmp(b)
        if head[:4] in (b"II*\x00", b"MM\x00*"):
            return sniff_boxes.tiff(b)
        if head[:1] == b"P" and head[1:2] in b"123456" and len(head) > 2 and head[2:3].isspace():
            return _pnm(b)
        if head[4:8] == b"ftyp" and (b"avif" in head[8:32] or b"avis" in head[8:32]):
            return sniff_boxes.avif(b)
        if head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") or head[:4] == b"\xff\x4f\xff\x51":
            return sniff_boxes.jpeg2000(b)
    except (struct.error, IndexError) as e:
        raise Malformed(f"header ends early or is corrupt ({e})") from None
    return None


# -- PNG ----------------------------------------------------------------------------------------

_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # decoded (a palette expands to RGB)
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # stored per pixel


def _png(b: memoryview) -> Header:
    n, pos = len(b), 8
    length, tag = struct.unpack(">I4s", b[8:16])
    if tag != b"IHDR" or length != 13:
        raise Malformed("PNG does not start with a 13-byte IHDR chunk")
    w, h, depth, ctype, _comp, _filt, interlace = struct.unpack(">IIBBBBB", b[16:29])
    if w > 0x7FFFFFFF or h > 0x7FFFFFFF or depth not in _PNG_DEPTHS.get(ctype, ()) or interlace > 1:
        raise Malformed(f"PNG IHDR is invalid ({w}x{h}, bit depth {depth}, colour type {ctype})")
    alpha = ctype in (4, 6)
    frames, chunks, idat, ended = 0, 0, 0, False
    spans: list[tuple[int, int]] = []
    declared: int | None = None  # frames the acTL chunk declares
    last, after_fdat = b"IHDR", False
    while pos + 12 <= n:
        length, tag = struct.unpack(">I4s", b[pos : pos + 8])
        chunks += 1
        if chunks > MAX_SEGMENTS:
            raise Malformed(f"PNG has more than {MAX_SEGMENTS:,} chunks")
        if length > 0x7FFFFFFF or pos + 12 + length > n:
            # The decoder would allocate what the length field says: never let it see this.
            raise Malformed(f"PNG chunk {tag!r} declares {length:,} bytes but only {n - pos - 12:,} "
                            "remain (truncated or corrupt)")
        if not tag.isalpha() or not tag.isascii():
            raise Malformed(f"PNG chunk type {tag!r} at byte {pos} is not a chunk name (corrupt)")
        # Critical and animation chunks steer the decoder (OpenCV reads APNG chunks itself):
        # they must be intact, and the animation well ordered.
        if (tag[0] < 0x61 or tag in _APNG_CHUNKS) and _png_crc(b, pos, length) != struct.unpack(
                ">I", b[pos + 8 + length : pos + 12 + length])[0]:
            raise Malformed(f"PNG chunk {tag.decode()} at byte {pos} fails its CRC (corrupt)")
        if tag == b"IDAT":
            if (idat and last != b"IDAT") or after_fdat:
                raise Malformed("PNG image data (IDAT) is split by other chunks (corrupt)")
            idat += 1
            spans.append((pos + 8, pos + 8 + length))
        elif tag == b"tRNS":
            alpha = True
        elif tag == b"acTL":
            if idat or declared is not None or length != 8:
                raise Malformed("APNG animation control (acTL) is repeated, malformed or after the image data")
            declared = struct.unpack(">I", b[pos + 8 : pos + 12])[0]
            if declared > MAX_FRAMES:
                raise Malformed(f"APNG declares {declared:,} frames (more than {MAX_FRAMES:,})")
        elif tag in (b"fcTL", b"fdAT"):
            if declared is None or (tag == b"fcTL" and length != 26) or length < 4:
                raise Malformed(f"APNG {tag.decode()} chunk without acTL, or malformed")
            after_fdat = after_fdat or tag == b"fdAT"
            if tag == b"fcTL":
                fw, fh, fx, fy = struct.unpack(">IIII", b[pos + 12 : pos + 28])
                if fw == 0 or fh == 0 or fx + fw > w or fy + fh > h:
                    raise Malformed(f"APNG frame {fw}x{fh} at ({fx},{fy}) lies outside the {w}x{h} canvas")
                frames += 1
                if frames > declared:
                    raise Malformed(f"APNG has more frames than its acTL declares ({declared})")
        elif tag == b"IEND":
            ended = True
            break
        last = tag
        pos += 12 + length
    if idat == 0:
        raise Malformed("PNG has no IDAT chunk: no pixel data (truncated or corrupt)")
    hdr = Header("png", w, h, alpha=alpha, frames=max(frames, 1), components=_PNG_SAMPLES[ctype],
                 bit_depth=depth, decode_bytes=w * h * _PNG_CHANNELS[ctype] * (2 if depth == 16 else 1) * 2)
    if not ended:
        hdr.notes.append("truncated: PNG ends without its IEND chunk")
    raw = _png_raw_size(w, h, _PNG_SAMPLES[ctype] * depth, interlace)
    # Deflate expands at most ~1032:1: a stream under 64 KB cannot make libpng inflate more than
    # ~66 MB (about half a second), so only larger ones are inflated here first.
    if sum(t - s for s, t in spans) > _INFLATE_CHECK_BYTES:
        hdr.verify = lambda: _png_inflate_defect(b, spans, raw)
    return hdr


_INFLATE_CHECK_BYTES = 64 << 10


_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


_APNG_CHUNKS = (b"acTL", b"fcTL", b"fdAT")


def _png_crc(b: memoryview, pos: int, length: int) -> int:
    return zlib.crc32(b[pos + 4 : pos + 8 + length]) & 0xFFFFFFFF


def _png_raw_size(w: int, h: int, bits: int, interlace: int) -> int:
    """Bytes the IDAT stream inflates to: filter byte + packed samples, per row of each pass."""
    if not interlace:
        return h * (1 + (w * bits + 7) // 8)
    size = 0
    for x0, y0, dx, dy in _ADAM7:
        pw, ph = -(-(w - x0) // dx), -(-(h - y0) // dy)
        if pw > 0 and ph > 0:
            size += ph * (1 + (pw * bits + 7) // 8)
    return size


def _png_inflate_defect(b: memoryview, spans: list[tuple[int, int]], expected: int) -> str | None:
    """Why the IDAT stream is unusable, or None. libpng inflates the whole stream, however far it
    runs past the image (a 2 MB file can hold 2 GB of deflated zeros: half a minute of CPU), so
    the stream is inflated here first, never producing more than ``expected`` + 1 bytes."""
    z = zlib.decompressobj()
    out = 0
    for s, t in spans:
        data = bytes(b[s:t])
        while data:
            try:
                got = len(z.decompress(data, max(1, min(expected + 1 - out, 1 << 20))))
            except zlib.error as e:
                return f"PNG pixel data is corrupt ({e})"
            out += got
            if out > expected:
                return (f"PNG pixel data inflates beyond the {expected:,} bytes its IHDR declares "
                        "(a deflate bomb or a corrupt file)")
            data = z.unconsumed_tail
    if out < expected:
        return f"truncated: PNG pixel data inflates to {out:,} of the {expected:,} bytes its IHDR declares"
    return None


# -- JPEG ---------------------------------------------------------------------------------------

# The next marker after entropy-coded data: 0xFF not followed by a stuffed 0x00 or a restart marker.
_NEXT_MARKER = re.compile(rb"\xff(?=[^\x00\xd0-\xd7])")
_HUFFMAN_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7}


def _jpeg(b: bytes) -> Header:
    i, n, segments, scans, coded = 2, len(b), 0, 0, 0
    frame: tuple | None = None
    while True:
        if i + 2 > n:
            raise Malformed(f"truncated: JPEG ends after {n:,} bytes without its EOI marker")
        if b[i] != 0xFF:
            raise Malformed(f"JPEG marker expected at byte {i}")
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        segments += 1
        if segments > MAX_SEGMENTS:
            raise Malformed(f"JPEG has more than {MAX_SEGMENTS:,} marker segments")
        if marker == 0xD9:  # EOI
            break
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers carry no length
            i += 2
            continue
        if i + 4 > n:
            raise Malformed(f"truncated: JPEG ends after {n:,} bytes without its EOI marker")
        (length,) = struct.unpack(">H", b[i + 2 : i + 4])
        if length < 2 or i + 2 + length > n:
            raise Malformed(f"truncated: JPEG segment at byte {i} declares {length} bytes past the end")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if frame is not None:
                raise Malformed("JPEG has a second frame header (SOF) before EOI")
            frame = _jpeg_frame(b[i + 4 : i + 2 + length], marker)
        elif marker == 0xDA:
            if frame is None:
                raise Malformed("JPEG scan (SOS) before any frame header (SOF)")
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise Malformed(f"JPEG has more than {MAX_JPEG_SCANS} scans (libjpeg-turbo's tools "
                                "refuse such files too: each scan is a full decoding pass)")
            start = i + 2 + length
            m = _NEXT_MARKER.search(b, start)
            if m is None:
                raise Malformed(f"truncated: JPEG ends inside scan {scans} without its EOI marker")
            coded += m.start() - start
            i = m.start()
            continue
        i += 2 + length
    if frame is None or scans == 0:
        raise Malformed("JPEG has no frame header or no scan: no pixel data")
    w, h, blocks, precision, progressive, huffman, nc = frame
    # Every block's DC coefficient costs at least one bit in a Huffman-coded file, so fewer coded
    # bytes than blocks/8 means the scans stop early and the decoder would invent the rest.
    sample = 2 if precision > 8 else 1
    coef = blocks * 128 if progressive or scans > 1 else 0  # whole-image coefficient buffer
    hdr = Header("jpeg", w, h, scans=scans, decode_bytes=w * h * 3 * sample + coef, components=nc,
                 bit_depth=precision, huffman=huffman)
    if huffman and coded * 8 < blocks:
        hdr.defect = (f"truncated: JPEG declares {w}x{h} ({blocks:,} blocks) but carries {coded:,} "
                      f"bytes of coded data, fewer than the {blocks // 8:,} it needs")
    return hdr


def _jpeg_frame(seg: bytes, marker: int) -> tuple[int, int, int, int, bool, bool, int]:
    precision, h, w, nc = struct.unpack(">BHHB", seg[:6])
    if h == 0 or w == 0:
        raise Malformed(f"JPEG frame declares {w}x{h} (a height set by a DNL marker is not supported)")
    if not 1 <= nc <= 4 or len(seg) < 6 + 3 * nc:
        raise Malformed(f"JPEG frame declares {nc} components (1 to 4 supported)")
    comps = [(seg[7 + 3 * k] >> 4, seg[7 + 3 * k] & 15) for k in range(nc)]
    if any(not (1 <= hs <= 4 and 1 <= vs <= 4) for hs, vs in comps):
        raise Malformed(f"JPEG frame has invalid sampling factors {comps}")
    hmax, vmax = max(c[0] for c in comps), max(c[1] for c in comps)
    blocks = sum(-(-(-(-w * hs // hmax)) // 8) * -(-(-(-h * vs // vmax)) // 8) for hs, vs in comps)
    return w, h, blocks, precision, marker in (0xC2, 0xC6, 0xCA, 0xCE), marker in _HUFFMAN_SOF, nc


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


_PNM_TOKEN = re.compile(rb"(?:\s|#[^\n\r]*)*(\d+)")


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
