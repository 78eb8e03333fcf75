"""The metadata container walk: EXIF, XMP, PNG text and C2PA/JUMBF markers of a JPEG, PNG, WebP or
TIFF byte string, read once and bounded, for orientation (`orient`) and provenance alike.

Bounded in every dimension an input controls: chunks/segments walked (`MAX_SEGMENTS`), bytes kept
of one text (`MAX_TEXT`), bytes inflated per file (`MAX_INFLATE`), texts kept, and CPU time per
file (`CPU_BUDGET_S` of the calling thread). Patterns are linear-time: every one starts with a
literal and uses bounded or possessive repeats. Malformed structure ends the walk; nothing raises.
"""
from __future__ import annotations

import re
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Iterator

from .header import MAX_SEGMENTS

__all__ = ["Metadata", "scan_metadata", "tiff_entries", "xmp_value", "XMP_ORIENTATION", "MAX_TEXT"]

MAX_TEXT = 1 << 20  # bytes kept of one metadata text (XMP packet, PNG text, decompressed)
MAX_INFLATE = 8 << 20  # bytes decompressed from all of a file's compressed texts together
MAX_TEXTS = 16  # PNG text chunks kept per file (their keys decide; a flood adds nothing)
CPU_BUDGET_S = 1.0  # CPU seconds (calling thread) one file's walk may take
PNG_TEXT_KEYS = ("parameters", "prompt", "workflow", "invokeai_metadata", "sd-metadata", "Dream",
                 "XML:com.adobe.xmp", "Software", "software")

TIFF_SOFTWARE, TIFF_XMP, TIFF_C2PA, TIFF_ORIENTATION = 0x0131, 0x02BC, 0xCD41, 0x0112


@dataclass
class Metadata:
    """What the walk found. ``texts``: (where, key, text) of PNG text chunks with a key in
    `PNG_TEXT_KEYS` (``where`` also names the chunk type); ``software``: (where, value) of
    EXIF/TIFF Software tags; ``xmp``: the first XMP packet (≤ `MAX_TEXT` bytes); ``exif``: the first
    EXIF block; ``notes``: why the walk stopped early, if it did."""

    mime: str = ""
    xmp: bytes | None = None
    exif: bytes | None = None
    texts: list[tuple[str, str, str]] = field(default_factory=list)
    software: list[tuple[str, str]] = field(default_factory=list)
    has_c2pa: bool = False
    notes: list[str] = field(default_factory=list)


class _Stop(Exception):
    """The walk hit a bound; the reason is already noted."""


class _Walk:
    def __init__(self, m: Metadata) -> None:
        self.m, self.steps, self.inflated = m, 0, 0
        self.deadline = time.thread_time() + CPU_BUDGET_S

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_SEGMENTS:
            self.stop(f"metadata walk stopped after {MAX_SEGMENTS:,} chunks/segments")
        if self.steps % 256 == 0 and time.thread_time() > self.deadline:
            self.stop(f"metadata walk stopped at its CPU budget of {CPU_BUDGET_S:g} s")

    def stop(self, why: str) -> None:
        self.m.notes.append(why)
        raise _Stop

    def inflate(self, blob: bytes) -> bytes:
        """zlib-decompress at most MAX_TEXT bytes, and MAX_INFLATE per file in all."""
        room = min(MAX_TEXT, MAX_INFLATE - self.inflated)
        if room <= 0:
            self.stop(f"metadata walk stopped: {MAX_INFLATE >> 20} MiB of compressed text inflated")
        out = zlib.decompressobj().decompress(blob, room)
        self.inflated += len(out)
        return out


def scan_metadata(data: bytes) -> Metadata:
    """Walk a JPEG, PNG, WebP or TIFF byte string for XMP, EXIF, Software tags, PNG text and a
    C2PA manifest store, within the module's bounds. Never raises."""
    m = Metadata()
    w = _Walk(m)
    try:
        if data[:3] == b"\xff\xd8\xff":
            m.mime = "image/jpeg"
            _jpeg(data, w)
        elif data[:8] == b"\x89PNG\r\n\x1a\n":
            m.mime = "image/png"
            _png(data, w)
        elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            m.mime = "image/webp"
            _webp(data, w)
        elif data[:4] in (b"II*\x00", b"MM\x00*"):
            m.mime = "image/tiff"
            _tiff(data, "TIFF", w)
    except _Stop:
        pass
    except (struct.error, IndexError, ValueError, zlib.error):
        m.notes.append("metadata walk stopped at malformed structure")
    return m


def _jpeg(d: bytes, w: _Walk) -> None:
    pos = 2
    while pos + 4 <= len(d) and d[pos] == 0xFF:
        marker = d[pos + 1]
        if marker in (0xD9, 0xDA):  # end of image / start of scan: no metadata after this
            return
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        w.step()
        (length,) = struct.unpack(">H", d[pos + 2:pos + 4])
        if marker in (0xE1, 0xEB):
            seg = d[pos + 4:pos + 2 + length]
            if marker == 0xE1 and seg.startswith(b"http://ns.adobe.com/xap/1.0/\x00"):
                w.m.xmp = w.m.xmp if w.m.xmp is not None else seg[29:]
            elif marker == 0xE1 and seg.startswith(b"Exif\x00\x00"):
                w.m.exif = w.m.exif if w.m.exif is not None else seg[6:]
                _tiff(seg[6:], "EXIF", w)
            elif marker == 0xEB and b"jumb" in seg[:64] and b"c2pa" in seg[:128]:
                w.m.has_c2pa = True  # APP11 JUMBF box with the c2pa manifest-store label
        pos += 2 + length


_PNG_TEXT = (b"tEXt", b"zTXt", b"iTXt")


def _png(d: bytes, w: _Walk) -> None:
    pos = 8
    while pos + 8 <= len(d):
        w.step()
        length, ctype = struct.unpack(">I4s", d[pos:pos + 8])
        if ctype == b"IEND":
            return
        if ctype in _PNG_TEXT:
            # The key first: only known keys are decompressed or kept, and only MAX_TEXTS of them.
            key = d[pos + 8:pos + 8 + min(length, 80)].partition(b"\x00")[0].decode("latin-1")
            if key in PNG_TEXT_KEYS and len(w.m.texts) < MAX_TEXTS:
                body = d[pos + 8:pos + 8 + length]
                text = _png_text(ctype, body, w)
                w.m.texts.append((f"PNG {ctype.decode()}", key, text))
                if key == "XML:com.adobe.xmp" and w.m.xmp is None:
                    w.m.xmp = text.encode("utf-8", "replace")
        elif ctype == b"eXIf":
            body = d[pos + 8:pos + 8 + length]
            w.m.exif = w.m.exif if w.m.exif is not None else body
            _tiff(body, "EXIF", w)
        elif ctype == b"caBX":
            w.m.has_c2pa = True
        pos += 12 + length


def _png_text(ctype: bytes, body: bytes, w: _Walk) -> str:
    _key, _, rest = body.partition(b"\x00")
    if ctype == b"tEXt":
        return rest[:MAX_TEXT].decode("latin-1")
    if ctype == b"zTXt":
        return w.inflate(rest[1:]).decode("latin-1")
    compressed = rest[:1] == b"\x01"
    _lang, _, rest = rest[2:].partition(b"\x00")
    _tkey, _, text = rest.partition(b"\x00")
    return (w.inflate(text) if compressed else text[:MAX_TEXT]).decode("utf-8", "replace")


def _webp(d: bytes, w: _Walk) -> None:
    end = min(len(d), 8 + struct.unpack("<I", d[4:8])[0])
    pos = 12
    while pos + 8 <= end:
        w.step()
        ctype, length = struct.unpack("<4sI", d[pos:pos + 8])
        if ctype == b"XMP " and w.m.xmp is None:
            w.m.xmp = d[pos + 8:pos + 8 + min(length, MAX_TEXT)]
        elif ctype == b"EXIF":
            body = d[pos + 8:pos + 8 + length]
            body = body[6:] if body.startswith(b"Exif\x00\x00") else body
            w.m.exif = w.m.exif if w.m.exif is not None else body
            _tiff(body, "EXIF", w)
        elif ctype == b"C2PA":
            w.m.has_c2pa = True
        pos += 8 + length + (length & 1)


def tiff_entries(d: bytes | memoryview, e: str, ifd: int, limit: int = 4096,
                 big: bool = False) -> Iterator[tuple[int, int, int, bytes]]:
    """(tag, type, count, the value/offset field: 4 bytes, 8 in a BigTIFF) of each entry of the
    TIFF directory at ``ifd`` (byte order ``e``: ``"<"`` or ``">"``), at most ``limit`` entries;
    struct.error when the directory runs past the data. The one IFD reader of the package
    (sniffing, EXIF orientation, metadata)."""
    head, size, fmt = (8, 20, "HHQ8s") if big else (2, 12, "HHI4s")
    (count,) = struct.unpack(e + ("Q" if big else "H"), d[ifd:ifd + head])
    if ifd + head + size * min(count, limit) > len(d):
        raise struct.error(f"TIFF directory at byte {ifd} ends past the end of the data")
    raw = bytes(d[ifd + head:ifd + head + size * min(count, limit)])
    for k in range(min(count, limit)):
        yield struct.unpack(e + fmt, raw[size * k:size * k + size])


def _tiff(d: bytes, where: str, w: _Walk) -> None:
    """IFD0 of a TIFF structure (a TIFF file or an EXIF block): Software, XMP and C2PA tags."""
    if len(d) < 8 or d[:2] not in (b"II", b"MM"):
        return
    e = "<" if d[:2] == b"II" else ">"
    (ifd,) = struct.unpack(e + "I", d[4:8])
    for tag, typ, count, value in tiff_entries(d, e, ifd, 512):
        w.step()
        if tag == TIFF_C2PA:
            w.m.has_c2pa = True
            continue
        if tag not in (TIFF_SOFTWARE, TIFF_XMP) or typ not in (1, 2, 7) or count > MAX_TEXT:
            continue
        off = struct.unpack(e + "I", value)[0]
        raw = value[:count] if count <= 4 else d[off:off + count]
        if tag == TIFF_SOFTWARE and len(w.m.software) < MAX_TEXTS:
            w.m.software.append((f"{where} Software", raw.split(b"\x00", 1)[0][:1000].decode("latin-1")))
        elif tag == TIFF_XMP and w.m.xmp is None:
            w.m.xmp = raw


# Attribute (Prop="..."), element (<...>value</...>) and resource (<... rdf:resource="..."/>)
# forms. The namespace prefix is not matched (writers may bind another prefix to the same URI).
# Every repeat that could meet a long run of the same characters is possessive or bounded, so a
# hostile packet costs one linear scan: a plain `\s*` before an alternative starting with `\s+`
# backtracked quadratically (8,000 spaces took a minute).
_VALUE = rb"""\s*+(?:=\s*+["']([^"'<>]{1,300})["']|>\s*+([^<>]{1,300})<|rdf:resource\s*+=\s*+["']([^"'<>]{1,300})["'])"""
XMP_DIGITAL_SOURCE_TYPE = re.compile(rb"DigitalSourceType" + _VALUE)
XMP_TOOL = re.compile(rb"(?:xmp:CreatorTool|tiff:Software|xmp:Software)" + _VALUE)
XMP_ORIENTATION = re.compile(rb'tiff:Orientation(?:="|>)([0-9])')


def xmp_value(pattern: re.Pattern, packet: bytes) -> str | None:
    """The first value of ``pattern`` (one of the ``XMP_*`` patterns) in an XMP packet, stripped."""
    hit = pattern.search(packet[:MAX_TEXT])
    if hit is None:
        return None
    return next(g for g in hit.groups() if g is not None).decode("utf-8", "replace").strip()
