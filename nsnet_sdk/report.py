"""The review report: one self-contained HTML page (no server, no network) from `nsnet detect` /
`nsnet batch` results.

The page holds which model, threshold or band and weights produced the rows, counts by verdict, a
score histogram (inline SVG), the most suspicious images as embedded thumbnails with their
explanation overlays and provenance badges, the errors with their reasons, and every row as compact
JSON that the page sorts, filters and shows one page at a time (so 100,000 rows stay a file of a
few MB that opens in seconds). A reviewer labels rows real / ai-generated / skip in the page; the
labels stay in the browser (localStorage, keyed by the report's identity) and are exported as
``labels.jsonl`` (`nsnet_sdk.labels`), which ``nsnet calibrate --labels`` reads back.

Files named in results are read only through the pipeline's bounded reader (a FIFO or device is
refused unopened); with ``base`` set, no file outside that folder is read at all.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import html
import json
import os
from collections import Counter
from pathlib import Path
from string import Template
from typing import Any, Sequence

import numpy as np

from .calibrate import LOW_INFORMATION
from .containers import atomic_write
from .errors import NSNetError
from .report_rows import VERDICTS, normalise_row, read_results  # noqa: F401  (the report's public API)
from .results import escape_text

TEMPLATE = Path(__file__).with_name("report_template.html")
SCRIPT = Path(__file__).with_name("report_page.js")
PAGE_SIZE = 100
MAX_ERRORS_LISTED = 500


# -- pieces of the page ---------------------------------------------------------------------------

def _counts(rows: Sequence[dict]) -> dict[str, int]:
    out = dict.fromkeys(VERDICTS, 0)
    for r in rows:
        out[r["verdict"]] += 1
    return out


def histogram_svg(rows: Sequence[dict], bins: int = 20, width: int = 720, height: int = 180) -> str:
    """Inline SVG: ``bins`` bars over prob_fake in [0, 1], each stacked by verdict."""
    colours = {"ai-generated": "#b2182b", "uncertain": "#c77c02", "real": "#1b7837"}
    counts = {v: np.zeros(bins, int) for v in colours}
    for r in rows:
        if r["prob_fake"] is not None and r["verdict"] in counts:
            counts[r["verdict"]][min(bins - 1, int(r["prob_fake"] * bins))] += 1
    total = sum(counts.values())
    peak = max(1, int(total.max()))
    pad, bw = 40, (width - 50) / bins
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 30}" '
             f'role="img" aria-label="histogram of prob_fake">']
    for i in range(bins):
        y = height
        for v, c in colours.items():
            n = int(counts[v][i])
            if n:
                hgt = (height - 10) * n / peak
                y -= hgt
                parts.append(f'<rect x="{pad + i * bw:.1f}" y="{y:.1f}" width="{bw - 1:.1f}" height="{hgt:.1f}" '
                             f'fill="{c}"><title>{i / bins:.2f}–{(i + 1) / bins:.2f}: {n} {v}</title></rect>')
    parts.append(f'<line x1="{pad}" y1="{height}" x2="{width - 10}" y2="{height}" stroke="#333"/>')
    for t in (0, 0.25, 0.5, 0.75, 1):
        x = pad + t * (width - 50)
        parts.append(f'<text x="{x:.1f}" y="{height + 16}" font-size="11" text-anchor="middle">{t:g}</text>')
    parts.append(f'<text x="{pad - 6}" y="16" font-size="11" text-anchor="end">{peak}</text>'
                 f'<text x="{pad - 6}" y="{height}" font-size="11" text-anchor="end">0</text></svg>')
    return "".join(parts)


def _diverging(v: float, lim: float) -> str:
    """RdBu-like colour of a contribution: blue (towards real) – white – red (towards AI)."""
    t = max(-1.0, min(1.0, v / lim)) if lim > 0 else 0.0
    end = (178, 24, 43) if t > 0 else (33, 102, 172)
    rgb = [round(255 + (e - 255) * abs(t)) for e in end]
    return "#%02x%02x%02x" % tuple(rgb)


def thumbnail(src: Any, max_side: int, max_pixels: int, name: str | None = None) -> tuple[str, tuple[int, int]]:
    """(JPEG data URI of at most ``max_side`` px, original (width, height)) of a path or encoded
    bytes; raises NSNetError."""
    import cv2

    from .pipeline import load_image

    name = name or escape_text(str(src))
    rgb = load_image(src, max_pixels=max_pixels, name=name)
    h, w = rgb.shape[:2]
    s = min(1.0, max_side / max(h, w))
    small = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA) if s < 1 else rgb
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(small[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 82])
    if not ok:
        raise NSNetError(f"{name}: could not encode a thumbnail", source=name)
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii"), (w, h)


class Files:
    """The files a report may read: a row's source (from the working directory, else the results
    file's folder), only inside ``base`` when one is given, read through the pipeline's bounded
    reader (regular files only, at most the byte limit of ``max_pixels``)."""

    def __init__(self, base: str | Path | None, max_pixels: int) -> None:
        self.base = None if base is None else Path(os.path.realpath(base))
        self.max_pixels = max_pixels

    def allowed(self, path: str) -> bool:
        if self.base is None:
            return True
        try:
            return Path(os.path.realpath(path)).is_relative_to(self.base)
        except (OSError, ValueError):
            return False

    def locate(self, row: dict) -> str | None:
        """The path to read for ``row``; None when it lies outside ``base`` (never looked at)."""
        for cand in (row["source"], os.path.join(row["base"], row["source"]) if row.get("base") else None):
            if cand and self.allowed(cand) and _exists(Path(cand)):
                return cand
        return row["source"] if self.allowed(row["source"]) else None

    def read(self, path: str) -> bytes:
        from .pipeline.read import file_byte_limit, read_image_file

        return read_image_file(path, file_byte_limit(self.max_pixels), escape_text(path))

    def sha256(self, row: dict) -> str | None:
        """sha256 of the row's file: the results' own column, else computed from the bytes read now
        (None when the file is outside ``base`` or cannot be read)."""
        if row.get("sha256"):
            return row["sha256"]
        path = self.locate(row)
        if path is None:
            return None
        try:
            return hashlib.sha256(self.read(path)).hexdigest()
        except NSNetError:
            return None


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long for the OS, or with a NUL: not a file here
        return False


def _short(src: str) -> str:
    """The file name with its folder: ``ai/0001.png`` and ``nature/0001.png`` stay apart."""
    parts = Path(src).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else src


def _overlay(detector: Any, data: bytes, w: int, h: int) -> str:
    ex = detector.explain(data)
    lim = max((abs(c) for c in ex.contributions), default=0.0)
    # An image smaller than the mosaic repeats its patches: boxes stack, so each one's opacity is
    # chosen for the stack to stay at 0.45, and strokes are screen pixels, not image pixels.
    stack = max(Counter(map(tuple, ex.boxes)).values(), default=1)
    alpha = 1.0 - 0.55 ** (1.0 / stack)
    rects = "".join(
        f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" fill="{_diverging(c, lim)}" '
        f'fill-opacity="{alpha:.3f}" stroke="{_diverging(c, lim)}" stroke-width="1" '
        f'vector-effect="non-scaling-stroke"><title>{c:+.3f}</title></rect>'
        for (x0, y0, x1, y1), c in zip(ex.boxes, ex.contributions))
    return f'<svg viewBox="0 0 {w} {h}" preserveAspectRatio="none" class="overlay">{rects}</svg>'


def _card(row: dict, files: Files, detector: Any, reader: Any, max_side: int) -> str:
    src = files.locate(row)
    shown = escape_text(row["source"])
    esc = html.escape
    data = None
    try:
        if src is None:
            raise NSNetError("outside --base: not read")
        data = files.read(src)
        uri, (w, h) = thumbnail(data, max_side, files.max_pixels, name=escape_text(src))
        overlay = _overlay(detector, data, w, h) if detector is not None else ""
        small = ' class="small"' if max(w, h) < max_side else ""
        thumb = f'<div class="thumb"><img src="{uri}"{small} alt="{esc(_short(shown))}">{overlay}</div>'
    except Exception as e:  # a moved or unreadable file: the card says so, the report goes on
        why = escape_text(f"{type(e).__name__}: {str(e)[:200]}")
        thumb = f'<div class="thumb noimg">image not available: {esc(why)}</div>'
    prov, c2pa = row["provenance"], row["c2pa"]
    if not prov and reader is not None and data is not None:
        rec = reader.read(data)  # the bytes already read: provenance never opens the path itself
        prov, c2pa = rec["summary"], (rec.get("c2pa") or {}).get("state", "")
        row = dict(row, generator=rec.get("generator") or "")
    badges = f'<span class="badge v-{row["verdict"]}">{esc(row["verdict"])}</span>'
    if prov:
        badges += (f'<span class="badge p-{esc(prov)}" title="{esc(escape_text(row["generator"]))}">'
                   f'provenance: {esc(prov)}</span>')
    if c2pa:
        badges += f'<span class="badge c-{esc(c2pa)}">C2PA {esc(c2pa)}</span>'
    score = "not scored" if row["prob_fake"] is None else f"prob_fake {row['prob_fake']:.4f}"
    return (f'<div class="card">{thumb}<div class="name" title="{esc(shown)}">{esc(_short(shown))}</div>'
            f'<div>{score}</div>{badges}</div>')


def _model_header(rows: Sequence[dict], detector: Any) -> str:
    """Which model, threshold or band and weights produced the rows, as far as rows and model say."""
    esc = html.escape
    models = sorted({r["model_sha256"] for r in rows if r.get("model_sha256")})
    thresholds = sorted({r["threshold"] for r in rows if r.get("threshold") is not None})
    parts = [f"model sha256 {', '.join(models)}" if models else "model sha256 not recorded in the rows"]
    if detector is not None:
        from .artifact import model_sha256

        band = detector.meta.band
        parts.append(f"band: real below {band.t_real:.4g}, ai-generated at or above {band.t_fake:.4g}"
                     if band is not None else f"threshold {detector.threshold:g} (no band)")
        sha = model_sha256(detector.model_path)
        if models and sha not in models:
            parts.append(f"warning: --model (sha256 {sha}) did not score these rows")
        if detector.meta.pretrained == "none":
            parts.append("warning: the model's backbone had random weights (pretrained=none): a test or demo "
                         "model, its scores mean nothing")
    else:
        parts.append(f"threshold {', '.join(f'{t:g}' for t in thresholds)}" if thresholds else "threshold not recorded")
        parts.append("band and weights: give --model to show them")
    if len(models) > 1:
        parts.append("warning: rows from more than one model")
    return "".join(f'<p class="{"warn" if p.startswith("warning") else ""}">{esc(p)}</p>' for p in parts)


def embed_json(value: Any) -> str:
    """JSON safe inside a ``<script>`` element: every ``<`` written ``\\u003c``, so no ``</script``,
    ``<!--`` or ``<script`` can change the HTML parser's state (a ``<`` only occurs inside strings)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


# -- the page -------------------------------------------------------------------------------------

def build_report(rows: Sequence[dict], out: str | Path, *, detector: Any = None, reader: Any = None,
                 top: int = 24, thumb_side: int = 256, title: str = "NS-Net review report",
                 sources: Sequence[str] = (), problems: Sequence[str] = (),
                 max_pixels: int | None = None, base: str | Path | None = None) -> Path:
    """Write the HTML report of normalised ``rows`` (see `read_results`) to ``out``.

    ``detector``: a `Detector` to draw explanation overlays on the ``top`` most suspicious images
    (None: thumbnails only). ``reader``: a `ProvenanceReader` for badges of rows that carry no
    provenance column (None: only what the rows say). ``base``: a folder outside which no file is
    read (None: results files are trusted to name only files their reader may see).
    """
    from .pipeline import MAX_PIXELS

    files = Files(base, max_pixels or MAX_PIXELS)
    counts = _counts(rows)
    count_html = "".join(f'<div class="count v-{v}"><b>{counts[v]:,}</b>{v}</div>' for v in VERDICTS)
    count_html += f'<div class="count v-total"><b>{len(rows):,}</b>total</div>'
    scored = sorted((r for r in rows if r["prob_fake"] is not None and r["verdict"] != "error"),
                    key=lambda r: -r["prob_fake"])[:max(0, top)]
    cards = "".join(_card(r, files, detector, reader, thumb_side) for r in scored)
    # Files whose metadata declares their origin, from the rows' provenance columns (nsnet detect
    # --provenance): shown whatever their score, since a declaration is evidence of its own.
    declared = [r for r in rows if r["provenance"] in ("ai-declared", "non-ai-declared") or r["c2pa"]]
    declared_cards = "".join(_card(r, files, detector, None, thumb_side) for r in declared[:max(0, top)])
    errs = [r for r in rows if r["verdict"] == "error"]
    esc = lambda t: html.escape(escape_text(t))  # noqa: E731  (a non-UTF-8 name shows as \xNN)
    err_items = [f"<li><b>{esc(r['source'])}</b>: {esc(r['error'] or '')}</li>" for r in errs[:MAX_ERRORS_LISTED]]
    err_items += [f"<li><b>results file</b>: {esc(p)}</li>" for p in problems[:MAX_ERRORS_LISTED]]
    more = len(errs) - MAX_ERRORS_LISTED
    errors_html = (f'<ul class="errors">{"".join(err_items)}</ul>' if err_items else "<p>none</p>") + (
        f'<p class="note">and {more:,} more: choose "error" in the table below</p>' if more > 0 else "")
    models = sorted({r["model_sha256"] for r in rows if r.get("model_sha256")})
    # Text cells as the result files write them (escape_text), so a label's `source` is the
    # results' own cell; the file's sha256 lets labels outlive renames.
    data = [[escape_text(r["source"]), r["prob_fake"], VERDICTS.index(r["verdict"]),
             r["provenance"] + (f" (C2PA {r['c2pa']})" if r["c2pa"] else ""), escape_text(r["warnings"]),
             escape_text(r["error"] or ""), None if r["verdict"] == "error" else files.sha256(r),
             models.index(r["model_sha256"]) if r.get("model_sha256") else None] for r in rows]
    identity = hashlib.sha256(json.dumps(data, ensure_ascii=True).encode()).hexdigest()[:32]
    has_band = any(r["verdict"] == "uncertain" for r in rows)
    page = Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        title=html.escape(escape_text(title)),
        subtitle=esc(f"{len(rows):,} rows from {', '.join(map(str, sources)) or 'results'}; written "
                     f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; report id {identity}"),
        model=_model_header(rows, detector),
        counts=count_html,
        verdict_note=("Verdicts come from the model's calibrated two-threshold band." if has_band else
                      "Rows without a verdict column follow is_fake (the single threshold); "
                      "a calibrated model adds an 'uncertain' band."),
        histogram=histogram_svg(rows),
        suspicious_note=(f"The {len(scored)} highest prob_fake scores"
                         + (", with each selected patch coloured by how much it moves the logit "
                            "(red: towards AI-generated, blue: towards real; hover to hide)" if detector is not None else "")
                         + ". Provenance is what the file itself declares; 'unknown' is not evidence of a real photo."),
        cards=cards or "<p>no scored rows</p>",
        n_declared=f"{len(declared):,}", declared_cards=declared_cards,
        declared_note=("C2PA manifests, IPTC digital source types and generator metadata found in the "
                       f"files{f'; the first {top} shown' if len(declared) > top else ''}." if declared else
                       "None among the rows' provenance columns (run nsnet detect --provenance to fill them)."),
        n_errors=f"{len(errs):,}", errors=errors_html,
        data_json=embed_json({"id": identity, "models": models, "page_size": PAGE_SIZE,
                              "low_information": LOW_INFORMATION, "rows": data}),
        script=SCRIPT.read_text(encoding="utf-8"))
    out = Path(out)
    # backslashreplace: nothing that reached the page unescaped can stop it being written
    atomic_write(out, lambda tmp: tmp.write_text(page, encoding="utf-8", errors="backslashreplace"))
    return out
