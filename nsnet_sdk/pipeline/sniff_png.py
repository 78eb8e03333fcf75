"""PNG and APNG header walker: chunk lengths and CRCs, the animation's chunk order (the APNG
specification's rules, enforced because OpenCV reads APNG chunks itself), and the deflate stream's
true size; see `nsnet_sdk.pipeline.sniff` for the dispatcher."""
from __future__ import annotations

import struct
import zlib

from .header import MAX_FRAMES, MAX_SEGMENTS, Header, Malformed

__all__ = ["png"]


# -- PNG ----------------------------------------------------------------------------------------

_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # decoded (a palette expands to RGB)
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # stored per pixel


def png(b: memoryview) -> Header:
    n, pos = len(b), 8
    length, tag = struct.unpack(">I4s", b[8:16])
    if tag != b"IHDR" or length != 13:
        raise Malformed("PNG does not start with a 13-byte IHDR chunk")
    w, h, depth, ctype, _comp, _filt, interlace = struct.unpack(">IIBBBBB", b[16:29])
    if w > 0x7FFFFFFF or h > 0x7FFFFFFF or depth not in _PNG_DEPTHS.get(ctype, ()) or interlace > 1:
        raise Malformed(f"PNG IHDR is invalid ({w}x{h}, bit depth {depth}, colour type {ctype})")
    alpha = ctype in (4, 6)
    chunks, idat, ended, meta = 0, 0, False, 0
    spans: list[tuple[int, int]] = []
    anim: _Animation | None = None
    last = b"IHDR"
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
        if tag[0] >= 0x61 and tag not in _APNG_CHUNKS:  # ancillary: text, ICC, EXIF... kept by libpng
            meta += length
        if tag == b"IDAT":
            if idat and last != b"IDAT":
                raise Malformed("PNG image data (IDAT) is split by other chunks (corrupt)")
            idat += 1
            spans.append((pos + 8, pos + 8 + length))
        elif tag == b"tRNS":
            alpha = True
        elif tag == b"acTL":
            if idat or anim is not None or length != 8:
                raise Malformed("APNG animation control (acTL) is repeated, malformed or after the image data")
            anim = _Animation(struct.unpack(">I", b[pos + 8 : pos + 12])[0], w, h)
        elif tag in _APNG_CHUNKS:
            if anim is None:
                raise Malformed(f"APNG {tag.decode()} chunk without an acTL chunk before the image data")
            anim.chunk(tag, bytes(b[pos + 8 : pos + 8 + min(length, 26)]), length, idat > 0)
        elif tag == b"IEND":
            ended = True
            break
        elif anim is not None and idat and tag not in _AFTER_IDAT:
            # OpenCV's APNG reader mishandles unknown chunks among the frames (a segfault,
            # found by fuzzing); an animation carries nothing else there that decoding needs.
            raise Malformed(f"APNG has a {tag.decode('latin-1')} chunk after its image data, where "
                            "only frames, text and tIME may follow")
        last = tag
        pos += 12 + length
    if anim is not None:
        anim.finish()
    if idat == 0:
        raise Malformed("PNG has no IDAT chunk: no pixel data (truncated or corrupt)")
    hdr = Header("png", w, h, alpha=alpha, frames=anim.frames if anim else 1, metadata_bytes=meta,
                 components=_PNG_SAMPLES[ctype], bit_depth=depth, decode_bytes=w * h * _PNG_CHANNELS[ctype] * (2 if depth == 16 else 1) * 2)
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
_AFTER_IDAT = (b"IDAT", b"tEXt", b"zTXt", b"iTXt", b"tIME")


class _Animation:
    """The APNG specification's ordering rules, checked chunk by chunk: one sequence-number counter
    over fcTL and fdAT starting at 0 with no gap; at most one fcTL before the image data, covering
    the whole canvas; after it, each frame is one fcTL then at least one fdAT; as many fcTL as
    acTL declares."""

    def __init__(self, declared: int, w: int, h: int) -> None:
        if not 1 <= declared <= MAX_FRAMES:
            raise Malformed(f"APNG declares {declared:,} frames (at least 1, not more than {MAX_FRAMES:,})")
        self.declared, self.w, self.h = declared, w, h
        self.frames = self.seq = self.frames_after = 0
        self.open_frame = False  # a frame after the image data still waits for its fdAT

    def chunk(self, tag: bytes, body: bytes, length: int, after_idat: bool) -> None:
        if (tag == b"fcTL" and length != 26) or length < 5 and tag == b"fdAT":
            raise Malformed(f"APNG {tag.decode()} chunk has a malformed length ({length})")
        (seq,) = struct.unpack(">I", body[:4])
        if seq != self.seq:
            raise Malformed(f"APNG {tag.decode()} has sequence number {seq}, expected {self.seq}")
        self.seq += 1
        if tag == b"fdAT":
            if not after_idat or self.frames_after == 0:
                raise Malformed("APNG frame data (fdAT) without a frame control (fcTL) after the image data")
            self.open_frame = False
            return
        if self.open_frame:
            raise Malformed(f"APNG frame {self.frames} has no frame data (fdAT)")
        fw, fh, fx, fy, _num, _den, dispose, blend = struct.unpack(">IIIIHHBB", body[4:26])
        if fw == 0 or fh == 0 or fx + fw > self.w or fy + fh > self.h or dispose > 2 or blend > 1:
            raise Malformed(f"APNG frame {fw}x{fh} at ({fx},{fy}) (dispose {dispose}, blend {blend}) "
                            f"does not fit the {self.w}x{self.h} canvas")
        if not after_idat:
            if self.frames or (fw, fh, fx, fy) != (self.w, self.h, 0, 0):
                raise Malformed("APNG frame before the image data must be the only one and cover the canvas")
        else:
            self.open_frame = True
            self.frames_after += 1
        self.frames += 1
        if self.frames > self.declared:
            raise Malformed(f"APNG has more frames than its acTL declares ({self.declared})")

    def finish(self) -> None:
        if self.open_frame:
            raise Malformed(f"APNG frame {self.frames} has no frame data (fdAT)")
        if self.frames != self.declared:
            raise Malformed(f"APNG declares {self.declared} frames but carries {self.frames}")


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


