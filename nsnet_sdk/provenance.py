"""What an image file itself declares about how it was made: C2PA Content Credentials, the IPTC
digital source type in XMP, and the metadata generator front-ends leave behind.

Reported beside the score, never mixed into it. A missing declaration is ``"unknown"``, never
``"real"``: re-encoding or a screenshot strips all of it. Only bounded byte ranges are parsed (the
pipeline's container walk, `nsnet_sdk.pipeline.metadata`: no XML parser, nothing found is
evaluated, linear-time patterns, a CPU budget per file; a record holds at most `MAX_SIGNALS` lines); C2PA is read through the optional
``c2pa-python`` package (extra ``[provenance]``), imported only when a file carries a manifest.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import NSNetError
from .pipeline.config import MAX_PIXELS
from .pipeline.metadata import MAX_TEXT, XMP_DIGITAL_SOURCE_TYPE, XMP_TOOL, Metadata, scan_metadata, xmp_value
from .pipeline.read import file_byte_limit, read_image_file

MAX_READ = 64 << 20  # bytes of a file looked at; metadata of every supported format sits before this
MAX_SIGNALS = 16  # signal lines kept per record

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
    except (NSNetError, OSError, TypeError, ValueError) as e:
        rec["error"] = f"{type(e).__name__}: {e}"
        return rec
    meta = scan_metadata(data)
    source_type, rec["generator"], notes = _signals_of(meta)
    rec["digital_source_type"] = source_type
    if source_type:
        rec["signals"].append(f"XMP Iptc4xmpExt:DigitalSourceType = {source_type}")
    rec["signals"].extend(notes)
    if meta.has_c2pa:
        rec["c2pa"] = _read_c2pa(data, meta.mime, trust_anchors) if use_c2pa else None
        if rec["c2pa"] is None:
            rec["signals"].append("C2PA manifest present, not validated (install nsnet-sdk[provenance])")
        else:
            c = rec["c2pa"]
            rec["signals"].append(f"C2PA manifest {c['state']}" + (f" signed by {c['signer']}" if c.get("signer") else "")
                                  + (f", digitalSourceType {c['digital_source_type']}" if c.get("digital_source_type") else ""))
    rec["signals"] = _bounded(rec["signals"])
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
        # The pipeline's one reader: a FIFO or device is refused unopened, a file is size-checked.
        return read_image_file(src, file_byte_limit(MAX_PIXELS), os.fsdecode(src))[:MAX_READ]
    raise TypeError(f"provenance needs a file path or its bytes, got {type(src).__name__}")


# -- reading the container walk --------------------------------------------------------------------

def _signals_of(meta: Metadata) -> tuple[str | None, str | None, list[str]]:
    """(XMP digital source type, generator, signal lines) of what the container walk found."""
    generator: str | None = None
    notes: list[str] = []

    def software(value: str, where: str) -> None:
        nonlocal generator
        low = value.lower()
        if any(g in low for g in GENERATOR_NAMES):
            generator = generator or value.strip()[:200]
            notes.append(f"{where} names a generator: {value.strip()[:200]!r}")

    source_type = None
    if meta.xmp:
        source_type = xmp_value(XMP_DIGITAL_SOURCE_TYPE, meta.xmp)
        tool = xmp_value(XMP_TOOL, meta.xmp)
        if tool:
            software(tool, "XMP CreatorTool/Software")
        low = meta.xmp[:MAX_TEXT].lower()
        if b"c2pa" in low and b"provenance" in low:
            notes.append("XMP dcterms:provenance points at a C2PA manifest")
    for where, key, text in meta.texts:
        if key in GENERATOR_PNG_KEYS:
            generator = generator or _png_generator(key)
            notes.append(f"PNG text chunk {key!r} ({len(text)} chars) left by a diffusion front-end")
        elif key.lower() == "software":
            software(text, "PNG Software")
    for where, value in meta.software:
        software(value, where)
    return source_type, generator, notes + meta.notes


def _png_generator(key: str) -> str:
    if key == "parameters":
        return "Stable Diffusion web UI (PNG 'parameters')"
    if key in ("prompt", "workflow"):
        return "ComfyUI (PNG 'prompt'/'workflow')"
    return f"InvokeAI (PNG {key!r})"


def _bounded(signals: list[str]) -> list[str]:
    """At most MAX_SIGNALS lines of at most 300 characters: a record stays small whatever the file."""
    out = [s if len(s) <= 300 else s[:297] + "..." for s in signals[:MAX_SIGNALS]]
    if len(signals) > MAX_SIGNALS:
        out.append(f"... {len(signals) - MAX_SIGNALS} more signals not listed")
    return out


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
    cut = lambda v: None if v is None else str(v)[:300]  # noqa: E731 -- manifest text is the signer's
    return {
        "state": {"trusted": "trusted", "valid": "valid-untrusted"}.get(state, "invalid"),
        "signer": cut(sig.get("common_name") or sig.get("issuer")), "issuer": cut(sig.get("issuer")),
        "digital_source_type": cut(dst), "claim_generator": cut((gen[0] or {}).get("name") if gen else None),
        "codes": [c[:300] for c in codes[:MAX_SIGNALS]],
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
