"""JPEG header walker: marker segments, frame geometry, scan count and the coded data's size;
see `nsnet_sdk.pipeline.sniff` for the dispatcher."""
from __future__ import annotations

import re
import struct

from .header import MAX_JPEG_SCANS, MAX_SEGMENTS, Header, Malformed

__all__ = ["jpeg"]


# -- JPEG ---------------------------------------------------------------------------------------

# The next marker after entropy-coded data: 0xFF not followed by a stuffed 0x00 or a restart marker.
_NEXT_MARKER = re.compile(rb"\xff(?=[^\x00\xd0-\xd7])")
_HUFFMAN_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7}


def jpeg(b: bytes) -> Header:
    i, n, segments, scans, coded, meta = 2, len(b), 0, 0, 0, 0
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
        if 0xE0 <= marker <= 0xEF or marker == 0xFE:  # APPn, COM: decoders keep copies of these
            meta += length
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
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
    sample = 2 if precision > 8 else 1
    coef = blocks * 128 if progressive or scans > 1 else 0  # whole-image coefficient buffer
    hdr = Header("jpeg", w, h, scans=scans, decode_bytes=w * h * 3 * sample + coef, metadata_bytes=meta,
                 components=nc, bit_depth=precision, huffman=huffman)
    # Every block's DC coefficient costs at least one bit in a Huffman-coded file, so fewer coded
    # bytes than blocks/8 means the scans stop early and the decoder would invent the rest. An
    # arithmetic coder can spend far less than a bit on a block, but libjpeg feeds zeros past the
    # end of the data without a warning, so a nearly empty scan decodes silently: below one bit per
    # 64 blocks (only a uniform image of many megapixels codes that small) counts as truncated too.
    need = blocks // 8 if huffman else blocks // 512
    if coded < need:
        hdr.defect = (f"truncated: JPEG declares {w}x{h} ({blocks:,} blocks) but carries {coded:,} "
                      f"bytes of {'Huffman' if huffman else 'arithmetic'}-coded data, fewer than the "
                      f"{need:,} it needs")
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


