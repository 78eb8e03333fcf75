"""What an image file itself declares about how it was made: C2PA Content Credentials, the IPTC
digital source type in XMP, and the metadata generator front-ends leave behind.

Reported beside the score, never mixed into it. A missing declaration is ``"unknown"``, never
``"real"``: re-encoding or a screenshot strips all of it. Only bounded byte ranges are parsed (a
container walk, no XML parser, nothing found is evaluated); C2PA is read through the optional
``c2pa-python`` package (extra ``[provenance]``), imported only when a file carries a manifest.
"""
from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_READ = 64 << 20  # bytes of a file looked at; metadata of every supported format sits before this
MAX_TEXT = 1 << 20  # bytes kept of one metadata text (XMP packet, PNG text, decompressed)

# IPTC NewsCodes that declare generative-AI involvement (C2PA uses the same vocabulary).
AI_SOURCE_TYPES = ("trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia")
# The rest of the IPTC digital-source-type vocabulary (current and deprecated terms): a valid
# manifest naming one of these declares a non-AI source. Any other value declares nothing.
NON_AI_SOURCE_TYPES = ("digitalCapture", "computationalCapture", "negativeFilm", "positiveFilm", "print",
                       "humanEdits", "minorHumanEdits", "compositeCapture", "algorithmicallyEnhanced",
                       "digitalCreation", "digitalArt", "dataDrivenMedia", "algorithmicMedia",
                       "screenCapture", "virtualRecording", "composite", "compositeSynthetic")
_IPTC_PREFIXES = ("http://cv.iptc.org/newscodes/digitalsourcetype/",
                  "https://cv.iptc.org/newscodes/digitalsourcetype/")
# PNG text keywords written by diffusion front-ends (A1111/Forge: parameters; ComfyUI: prompt,
# workflow; InvokeAI: invokeai_metadata, sd-metadata, Dream).
GENERATOR_PNG_KEYS = ("parameters", "prompt", "workflow", "invokeai_metadata", "sd-metadata", "Dream")
# Lower-case fragments of EXIF/XMP Software / CreatorTool values that name an image generator.
GENERATOR_NAMES = ("stable diffusion", "stablediffusion", "midjourney", "dall-e", "dall·e", "dalle",
                   "firefly", "imagen", "novelai", "comfyui", "automatic1111", "invokeai", "fooocus",
                   "flux", "leonardo.ai", "ideogram", "gpt-4o", "sora", "nightcafe", "dreamstudio")

C2PA_STATES = ("trusted", "valid-untrusted", "invalid")
SUMMARIES = ("ai-declared", "non-ai-declared", "unknown")


@dataclass(frozen=True)
class ProvenanceReader:
    """Reads provenance signals from files or bytes.

    Args:
        trust_anchors: PEM text, or a path to a PEM file, of the CA certificates whose C2PA
            signers count as ``trusted``; without it a cryptographically valid manifest reads as
            ``valid-untrusted`` (anyone can self-sign one).
        use_c2pa: False skips C2PA validation even when ``c2pa-python`` is installed.
    """

    trust_anchors: str | None = None
    use_c2pa: bool = True

    def __post_init__(self) -> None:
        # Resolved once, here: a bad anchors file is the caller's error, not every image's.
        object.__setattr__(self, "trust_anchors", anchors_pem(self.trust_anchors))

    def read(self, src: Any) -> dict:
        """The provenance record of a path or bytes (see `read_provenance`); never raises for a
        bad file: an unreadable one records its reason under ``"error"``."""
        return read_provenance(src, trust_anchors=self.trust_anchors, use_c2pa=self.use_c2pa)


def provenance_reader(option: Any) -> ProvenanceReader | None:
    """`Detector`'s ``provenance=`` option as a reader: False/None → None, True → default reader."""
    if option is None or option is False:
        return None
    if option is True:
        return ProvenanceReader()
    if isinstance(option, ProvenanceReader):
        return option
    raise ValueError(f"provenance must be True, False or a ProvenanceReader, got {option!r}")


def with_provenance(pred: Any, futures: list | None, j: int) -> Any:
    """``pred`` with the provenance record of input ``j`` from the reader futures, if any."""
    if not futures:
        return pred
    from dataclasses import replace

    return replace(pred, provenance=futures[j].result())


PROVENANCE_COLUMNS = ("provenance", "c2pa", "c2pa_signer", "digital_source_type", "generator",
                      "provenance_signals")


def provenance_columns(rec: dict | None) -> dict[str, Any]:
    """The flat ``nsnet detect --provenance`` columns of a provenance record (all None without one)."""
    if rec is None:
        return dict.fromkeys(PROVENANCE_COLUMNS)
    c = rec.get("c2pa") or {}
    signals = list(rec.get("signals") or [])
    if rec.get("error"):
        signals.append(f"unreadable: {rec['error']}")
    return {"provenance": rec.get("summary"), "c2pa": c.get("state"), "c2pa_signer": c.get("signer"),
            "digital_source_type": c.get("digital_source_type") or rec.get("digital_source_type"),
            "generator": rec.get("generator"), "provenance_signals": signals}


def read_provenance(src: Any, *, trust_anchors: str | None = None,
                    use_c2pa: bool = True) -> dict:
    """Provenance record of one image file (a path, bytes, or bytes-like).

    Returns a JSON-serialisable dict:
        ``summary``: ``"ai-declared"`` (any signal declares generative AI), ``"non-ai-declared"``
        (a valid C2PA manifest declares a non-AI source and nothing declares AI) or ``"unknown"``;
        ``c2pa``: None or {``state`` in `C2PA_STATES`, ``signer``, ``issuer``,
        ``digital_source_type``, ``claim_generator``, ``codes`` (failure codes)};
        ``digital_source_type``: the IPTC value found in XMP, or None;
        ``generator``: what generator metadata names, or None;
        ``signals``: one short human-readable line per finding;
        ``error``: None, or why the file could not be read.
    Arrays and PIL images carry no file metadata: pass the file or its bytes.
    """
    rec: dict[str, Any] = {"summary": "unknown", "c2pa": None, "digital_source_type": None,
                           "generator": None, "signals": [], "error": None}
    try:
        data = _bounded_bytes(src)
    except (OSError, TypeError, ValueError) as e:
        rec["error"] = f"{type(e).__name__}: {e}"
        return rec
    meta = scan_metadata(data)
    rec["digital_source_type"] = meta.source_type
    rec["generator"] = meta.generator
    if meta.source_type:
        rec["signals"].append(f"XMP Iptc4xmpExt:DigitalSourceType = {meta.source_type}")
    rec["signals"].extend(meta.notes)
    if meta.has_c2pa:
        rec["c2pa"] = _read_c2pa(data, meta.mime, trust_anchors) if use_c2pa else None
        if rec["c2pa"] is None:
            rec["signals"].append("C2PA manifest present, not validated (install nsnet-sdk[provenance])")
        else:
            c = rec["c2pa"]
            rec["signals"].append(f"C2PA manifest {c['state']}" + (f" signed by {c['signer']}" if c.get("signer") else "")
                                  + (f", digitalSourceType {c['digital_source_type']}" if c.get("digital_source_type") else ""))
    rec["summary"] = _summary(rec)
    return rec


def _summary(rec: dict) -> str:
    c = rec["c2pa"] or {}
    dst = [rec["digital_source_type"], c.get("digital_source_type")]
    if rec["generator"] or any(is_ai_source_type(t) for t in dst if t):
        return "ai-declared"  # a claim of AI involvement is worth a reviewer's look whoever made it
    if (source_type_term(c.get("digital_source_type") or "") in NON_AI_SOURCE_TYPES
            and c.get("state") in ("trusted", "valid-untrusted")):
        return "non-ai-declared"
    return "unknown"  # no manifest, or a value outside the vocabulary: nothing is declared


def source_type_term(value: str) -> str | None:
    """The IPTC term of a digitalSourceType written as the vocabulary's URI or as the bare term
    (surrounding whitespace ignored); None for anything else (e.g. a URI with trailing text)."""
    v = value.strip()
    for prefix in _IPTC_PREFIXES:
        if v.startswith(prefix):
            v = v[len(prefix):]
            break
    return v if v in AI_SOURCE_TYPES or v in NON_AI_SOURCE_TYPES else None


def is_ai_source_type(value: str) -> bool:
    """True when an IPTC/C2PA digitalSourceType (URI or bare term) declares generative AI."""
    return source_type_term(value) in AI_SOURCE_TYPES


def _bounded_bytes(src: Any) -> bytes:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src[:MAX_READ])
    if isinstance(src, (str, os.PathLike)):
        with open(src, "rb") as f:
            return f.read(MAX_READ)
    raise TypeError(f"provenance needs a file path or its bytes, got {type(src).__name__}")


# -- container walk -----------------------------------------------------------------------------

@dataclass
class _Meta:
    """What the container walk found."""

    mime: str = ""
    source_type: str | None = None
    generator: str | None = None
    has_c2pa: bool = False
    notes: list[str] = field(default_factory=list)


def scan_metadata(data: bytes) -> _Meta:
    """Walk a JPEG, PNG, WebP or TIFF byte string for XMP, EXIF Software, PNG text and a C2PA
    manifest store. Malformed structure ends the walk; nothing raises."""
    m = _Meta()
    try:
        if data[:3] == b"\xff\xd8\xff":
            m.mime = "image/jpeg"
            _walk_jpeg(data, m)
        elif data[:8] == b"\x89PNG\r\n\x1a\n":
            m.mime = "image/png"
            _walk_png(data, m)
        elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            m.mime = "image/webp"
            _walk_webp(data, m)
        elif data[:4] in (b"II*\x00", b"MM\x00*"):
            m.mime = "image/tiff"
            _walk_tiff(data, m)
    except (struct.error, IndexError, ValueError, zlib.error):
        m.notes.append("metadata walk stopped at malformed structure")
    return m


def _walk_jpeg(d: bytes, m: _Meta) -> None:
    pos = 2
    while pos + 4 <= len(d) and d[pos] == 0xFF:
        marker = d[pos + 1]
        if marker in (0xD9, 0xDA):  # end of image / start of scan: no metadata after this
            return
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack(">H", d[pos + 2:pos + 4])
        seg = d[pos + 4:pos + 2 + length]
        if marker == 0xE1 and seg.startswith(b"http://ns.adobe.com/xap/1.0/\x00"):
            _xmp(seg[29:], m)
        elif marker == 0xE1 and seg.startswith(b"Exif\x00\x00"):
            _walk_tiff(seg[6:], m)
        elif marker == 0xEB and b"jumb" in seg[:64] and b"c2pa" in seg[:128]:
            m.has_c2pa = True  # APP11 JUMBF box with the c2pa manifest-store label
        pos += 2 + length


def _walk_png(d: bytes, m: _Meta) -> None:
    pos = 8
    while pos + 8 <= len(d):
        length, ctype = struct.unpack(">I4s", d[pos:pos + 8])
        if ctype == b"IEND":
            return
        # Slice only the chunks read: copying every IDAT would cost more than the whole walk.
        body = d[pos + 8:pos + 8 + length] if ctype in (b"tEXt", b"zTXt", b"iTXt", b"eXIf") else b""
        if ctype in (b"tEXt", b"zTXt", b"iTXt"):
            key, text = _png_text(ctype, body)
            if key == "XML:com.adobe.xmp":
                _xmp(text.encode("utf-8", "replace"), m)
            elif key in GENERATOR_PNG_KEYS:
                m.generator = m.generator or _png_generator(key, text)
                m.notes.append(f"PNG text chunk {key!r} ({len(text)} chars) left by a diffusion front-end")
            elif key.lower() == "software":
                _software(text, "PNG Software", m)
        elif ctype == b"eXIf":
            _walk_tiff(body, m)
        elif ctype == b"caBX":
            m.has_c2pa = True
        pos += 12 + length


def _png_text(ctype: bytes, body: bytes) -> tuple[str, str]:
    key, _, rest = body.partition(b"\x00")
    if ctype == b"tEXt":
        return key.decode("latin-1"), rest[:MAX_TEXT].decode("latin-1")
    if ctype == b"zTXt":
        return key.decode("latin-1"), _inflate(rest[1:]).decode("latin-1")
    compressed = rest[:1] == b"\x01"
    _lang, _, rest = rest[2:].partition(b"\x00")
    _tkey, _, text = rest.partition(b"\x00")
    return key.decode("latin-1"), (_inflate(text) if compressed else text[:MAX_TEXT]).decode("utf-8", "replace")


def _inflate(blob: bytes) -> bytes:
    """zlib-decompress at most MAX_TEXT bytes (a decompression bomb stops there)."""
    return zlib.decompressobj().decompress(blob, MAX_TEXT)


def _png_generator(key: str, text: str) -> str:
    if key == "parameters":
        return "Stable Diffusion web UI (PNG 'parameters')"
    if key in ("prompt", "workflow"):
        return "ComfyUI (PNG 'prompt'/'workflow')"
    return f"InvokeAI (PNG {key!r})"


def _walk_webp(d: bytes, m: _Meta) -> None:
    end = min(len(d), 8 + struct.unpack("<I", d[4:8])[0])
    pos = 12
    while pos + 8 <= end:
        ctype, length = struct.unpack("<4sI", d[pos:pos + 8])
        body = d[pos + 8:pos + 8 + length] if ctype in (b"XMP ", b"EXIF") else b""
        if ctype == b"XMP ":
            _xmp(body, m)
        elif ctype == b"EXIF":
            _walk_tiff(body[6:] if body.startswith(b"Exif\x00\x00") else body, m)
        elif ctype == b"C2PA":
            m.has_c2pa = True
        pos += 8 + length + (length & 1)


_TIFF_SOFTWARE, _TIFF_XMP, _TIFF_C2PA = 0x0131, 0x02BC, 0xCD41


def _walk_tiff(d: bytes, m: _Meta) -> None:
    """IFD0 of a TIFF structure (a TIFF file or an EXIF block): Software and XMP tags."""
    if len(d) < 8 or d[:2] not in (b"II", b"MM"):
        return
    e = "<" if d[:2] == b"II" else ">"
    (ifd,) = struct.unpack(e + "I", d[4:8])
    (n,) = struct.unpack(e + "H", d[ifd:ifd + 2])
    for i in range(min(n, 512)):
        tag, typ, count, value = struct.unpack(e + "HHI4s", d[ifd + 2 + 12 * i:ifd + 14 + 12 * i])
        if tag == _TIFF_C2PA:
            m.has_c2pa = True
            continue
        if tag not in (_TIFF_SOFTWARE, _TIFF_XMP) or typ not in (1, 2, 7) or count > MAX_TEXT:
            continue
        off = struct.unpack(e + "I", value)[0]
        raw = value[:count] if count <= 4 else d[off:off + count]
        if tag == _TIFF_SOFTWARE:
            _software(raw.split(b"\x00", 1)[0].decode("latin-1"), "EXIF Software", m)
        else:
            _xmp(raw, m)


# Attribute (Iptc4xmpExt:DigitalSourceType="..."), element (<...>value</...>) and resource
# (<... rdf:resource="..."/>) forms. The namespace prefix is not matched (writers may bind another
# prefix to the same URI), and every pattern starts with a literal and uses bounded repeats, so a
# hostile 1 MiB packet costs one linear scan (no catastrophic backtracking).
_VALUE = rb"""\s*(?:=\s*["']([^"'<>]{1,300})["']|>\s*([^<>]{1,300}?)\s*<|\s+rdf:resource\s*=\s*["']([^"'<>]{1,300})["'])"""
_DST = re.compile(rb"DigitalSourceType" + _VALUE)
_TOOL = re.compile(rb"(?:xmp:CreatorTool|tiff:Software|xmp:Software)" + _VALUE)


def _group(hit: re.Match) -> str:
    return next(g for g in hit.groups() if g is not None).decode("utf-8", "replace").strip()


def _xmp(packet: bytes, m: _Meta) -> None:
    packet = packet[:MAX_TEXT]
    hit = _DST.search(packet)
    if hit and m.source_type is None:
        m.source_type = _group(hit)
    tool = _TOOL.search(packet)
    if tool:
        _software(_group(tool), "XMP CreatorTool/Software", m)
    if b"c2pa" in packet.lower() and b"provenance" in packet.lower():
        m.notes.append("XMP dcterms:provenance points at a C2PA manifest")


def _software(value: str, where: str, m: _Meta) -> None:
    low = value.lower()
    if any(g in low for g in GENERATOR_NAMES):
        m.generator = m.generator or value.strip()[:200]
        m.notes.append(f"{where} names a generator: {value.strip()[:200]!r}")


# -- C2PA -----------------------------------------------------------------------------------------

def _read_c2pa(data: bytes, mime: str, trust_anchors: str | None) -> dict | None:
    """Validate the manifest store with c2pa-python; None when the library is absent."""
    try:
        import c2pa
    except ImportError:
        return None
    import io
    import json

    try:
        anchors = anchors_pem(trust_anchors)
        ctx = None
        if anchors:
            ctx = c2pa.Context(c2pa.Settings.from_dict(
                {"verify": {"verify_trust": True}, "trust": {"user_anchors": anchors}}))
        reader = c2pa.Reader(mime, io.BytesIO(data), context=ctx) if ctx else c2pa.Reader(mime, io.BytesIO(data))
        with reader:
            store = json.loads(reader.json())
    except Exception as e:  # c2pa raises its own error tree; any of it means "could not validate"
        return {"state": "invalid", "signer": None, "issuer": None, "digital_source_type": None,
                "claim_generator": None, "codes": [f"{type(e).__name__}: {str(e)[:300]}"]}
    return c2pa_summary(store)


def c2pa_summary(store: dict) -> dict:
    """The fields a reviewer needs from a c2pa-python manifest-store JSON (``Reader.json()``)."""
    active = (store.get("manifests") or {}).get(store.get("active_manifest") or "", {})
    sig = active.get("signature_info") or {}
    state = str(store.get("validation_state") or "").lower()
    failures = ((store.get("validation_results") or {}).get("activeManifest") or {}).get("failure") or []
    codes = [str(f.get("code")) for f in failures if isinstance(f, dict)]
    dst = None
    for a in active.get("assertions") or []:
        if str(a.get("label", "")).startswith("c2pa.actions"):
            for act in (a.get("data") or {}).get("actions") or []:
                if act.get("action") in ("c2pa.created", "c2pa.edited") and act.get("digitalSourceType"):
                    dst = str(act["digitalSourceType"])
                    if is_ai_source_type(dst):
                        break
            if dst and is_ai_source_type(dst):
                break
    gen = active.get("claim_generator_info") or [{}]
    return {
        "state": {"trusted": "trusted", "valid": "valid-untrusted"}.get(state, "invalid"),
        "signer": sig.get("common_name") or sig.get("issuer"), "issuer": sig.get("issuer"),
        "digital_source_type": dst, "claim_generator": (gen[0] or {}).get("name") if gen else None,
        "codes": codes,
    }


def anchors_pem(anchors: str | os.PathLike | None) -> str | None:
    """PEM text of trust anchors given as PEM text or a file path; ValueError when it holds no
    certificate."""
    if not anchors:
        return None
    text = str(anchors) if "-----BEGIN" in str(anchors) else Path(anchors).read_text(encoding="ascii", errors="replace")
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ValueError(f"trust anchors {str(anchors)[:200]!r}: no PEM certificate found")
    return text
