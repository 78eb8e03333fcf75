"""The review report: one self-contained HTML page (no server, no network) from `nsnet detect` /
`nsnet batch` results, and the ``nsnet report`` command.

The page holds counts by verdict, a score histogram (inline SVG), the most suspicious images as
embedded thumbnails with their explanation overlays and provenance badges, the errors with their
reasons, and every row as compact JSON that the page sorts, filters and shows one page at a time
(so 100,000 rows stay a file of a few MB that opens in seconds).
"""
from __future__ import annotations

import base64
import csv
import datetime
import html
import json
import math
import sys
from pathlib import Path
from string import Template
from typing import Any, Iterable, Sequence

import numpy as np

from .containers import atomic_write
from .errors import NSNetError
from .results import CSV, JSONL, WARNING_SEP, read_rows, unescape_value

VERDICTS = ("ai-generated", "uncertain", "real", "error")
TEMPLATE = Path(__file__).with_name("report_template.html")
PAGE_SIZE = 100
MAX_ERRORS_LISTED = 500
MAX_CELL = 2000  # characters kept of one text cell (a hostile results file cannot bloat the page)


# -- reading results ------------------------------------------------------------------------------

def read_results(paths: Iterable[str | Path]) -> tuple[list[dict], list[str]]:
    """Rows of `nsnet detect` / `nsnet batch` result files (JSON Lines, CSV or Parquet, by content),
    each normalised by `normalise_row`; and one problem line per file that could not be read (a
    file that is not a result file is refused whole, with the line at fault)."""
    rows: list[dict] = []
    problems: list[str] = []
    for path in map(Path, paths):
        base = str(path.resolve().parent)
        try:
            if _is_parquet(path):
                rows.extend(normalise_row(r, base) for r in _parquet_rows(path))
                continue
            with open(path, "rb") as f:
                head = f.read(1)
            # The format by content (a redirected stdout has no telling suffix); the one reader
            # of result files unescapes the text cells, so sources are real paths again.
            rows.extend(normalise_row(r, base) for r in read_rows(path, JSONL if head == b"{" else CSV))
        except (OSError, csv.Error, UnicodeError, ValueError, ImportError) as e:  # ResultFileError too
            problems.append(f"{path}: {type(e).__name__}: {e}")
    return rows, problems


def _is_parquet(path: Path) -> bool:
    """`nsnet batch` writes Parquet (files or a folder of parts); recognised by the PAR1 magic."""
    if path.is_dir():
        return any(_is_parquet(p) for p in path.glob("*.parquet"))
    with open(path, "rb") as f:
        return f.read(4) == b"PAR1"


def _parquet_rows(path: Path) -> Iterable[dict]:
    import pyarrow.parquet as pq  # optional: only Parquet results need it

    for batch in pq.ParquetFile(path).iter_batches() if path.is_file() else pq.read_table(path).to_batches():
        # nsnet batch escapes text cells exactly as nsnet detect's files do (results.escape_text)
        yield from ({k: unescape_value(v) for k, v in row.items()} for row in batch.to_pylist())


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        v = WARNING_SEP.join(map(str, v))
    return str(v)[:MAX_CELL]


def normalise_row(raw: dict, base: str = "") -> dict:
    """One result row with every column the report uses: ``source``, ``prob_fake`` (float or
    None), ``verdict`` (one of `VERDICTS`), ``error``, ``warnings``, ``provenance`` (summary),
    ``c2pa``, ``generator``, ``base`` (the results file's folder: relative sources are looked up
    there when they are not found from the working directory). Missing columns are tolerated: without ``verdict`` (no calibrated
    band) it follows ``is_fake``."""
    prob = _float(raw.get("prob_fake"))
    error = _text(raw.get("error")) or None
    if prob is not None and not 0.0 <= prob <= 1.0:
        error = error or f"prob_fake {prob!r} in the results row is not a probability"
        prob = None
    if error is None and prob is None:
        error = "no score in the results row"
    verdict = _text(raw.get("verdict"))
    if error is not None:
        verdict = "error"
    elif verdict not in VERDICTS[:3]:
        fake = raw.get("is_fake")
        fake = fake if isinstance(fake, bool) else str(fake).strip().lower() in ("true", "1", "yes")
        verdict = "ai-generated" if fake else "real"
    prov = raw.get("provenance")
    c2pa = raw.get("c2pa")
    gen = raw.get("generator")
    if isinstance(prov, dict):  # a full provenance record (Prediction.to_dict)
        c2pa = (prov.get("c2pa") or {}).get("state")
        gen = prov.get("generator")
        prov = prov.get("summary")
    return {"source": _text(raw.get("source") or raw.get("path")), "prob_fake": prob, "verdict": verdict, "error": error,
            "warnings": _text(raw.get("warnings")), "provenance": _text(prov), "c2pa": _text(c2pa),
            "generator": _text(gen), "base": base}


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


def thumbnail(source: str, max_side: int, max_pixels: int) -> tuple[str, tuple[int, int]]:
    """(JPEG data URI of at most ``max_side`` px, original (width, height)); raises NSNetError."""
    import cv2

    from .pipeline import load_image

    rgb = load_image(source, max_pixels=max_pixels, name=source)
    h, w = rgb.shape[:2]
    s = min(1.0, max_side / max(h, w))
    small = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA) if s < 1 else rgb
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(small[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 82])
    if not ok:
        raise NSNetError(f"{source}: could not encode a thumbnail", source=source)
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii"), (w, h)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long for the OS, or with a NUL: not a file here
        return False


def _locate(row: dict) -> str:
    src = row["source"]
    if not _exists(Path(src)) and row.get("base") and _exists(Path(row["base"]) / src):
        return str(Path(row["base"]) / src)
    return src


def _short(src: str) -> str:
    """The file name with its folder: ``ai/0001.png`` and ``nature/0001.png`` stay apart."""
    parts = Path(src).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else src


def _card(row: dict, detector: Any, reader: Any, max_side: int, max_pixels: int) -> str:
    src = _locate(row)
    esc = html.escape
    try:
        uri, (w, h) = thumbnail(src, max_side, max_pixels)
        overlay = ""
        if detector is not None:
            ex = detector.explain(src)
            lim = max((abs(c) for c in ex.contributions), default=0.0)
            rects = "".join(
                f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" fill="{_diverging(c, lim)}" '
                f'fill-opacity="0.45" stroke="{_diverging(c, lim)}" stroke-width="{max(1, w // 200)}">'
                f'<title>{c:+.3f}</title></rect>' for (x0, y0, x1, y1), c in zip(ex.boxes, ex.contributions))
            overlay = f'<svg viewBox="0 0 {w} {h}" preserveAspectRatio="none" class="overlay">{rects}</svg>'
        thumb = f'<div class="thumb"><img src="{uri}" alt="{esc(_short(src))}">{overlay}</div>'
    except Exception as e:  # a moved or unreadable file: the card says so, the report goes on
        thumb = f'<div class="thumb noimg">image not available: {esc(type(e).__name__)}: {esc(str(e)[:200])}</div>'
    prov, c2pa = row["provenance"], row["c2pa"]
    if not prov and reader is not None:
        rec = reader.read(src)
        prov, c2pa = rec["summary"], (rec.get("c2pa") or {}).get("state", "")
        row = dict(row, generator=rec.get("generator") or "")
    badges = f'<span class="badge v-{row["verdict"]}">{esc(row["verdict"])}</span>'
    if prov:
        badges += f'<span class="badge p-{esc(prov)}" title="{esc(row["generator"])}">provenance: {esc(prov)}</span>'
    if c2pa:
        badges += f'<span class="badge c-{esc(c2pa)}">C2PA {esc(c2pa)}</span>'
    score = "not scored" if row["prob_fake"] is None else f"prob_fake {row['prob_fake']:.4f}"
    return (f'<div class="card">{thumb}<div class="name" title="{esc(src)}">{esc(_short(src))}</div>'
            f'<div>{score}</div>{badges}</div>')


# -- the page -------------------------------------------------------------------------------------

def build_report(rows: Sequence[dict], out: str | Path, *, detector: Any = None, reader: Any = None,
                 top: int = 24, thumb_side: int = 256, title: str = "NS-Net review report",
                 sources: Sequence[str] = (), problems: Sequence[str] = (),
                 max_pixels: int | None = None) -> Path:
    """Write the HTML report of normalised ``rows`` (see `read_results`) to ``out``.

    ``detector``: a `Detector` to draw explanation overlays on the ``top`` most suspicious images
    (None: thumbnails only). ``reader``: a `ProvenanceReader` for badges of rows that carry no
    provenance column (None: only what the rows say).
    """
    from .pipeline import MAX_PIXELS

    counts = _counts(rows)
    count_html = "".join(f'<div class="count v-{v}"><b>{counts[v]:,}</b>{v}</div>' for v in VERDICTS)
    count_html += f'<div class="count v-total"><b>{len(rows):,}</b>total</div>'
    scored = sorted((r for r in rows if r["prob_fake"] is not None and r["verdict"] != "error"),
                    key=lambda r: -r["prob_fake"])[:max(0, top)]
    cards = "".join(_card(r, detector, reader, thumb_side, max_pixels or MAX_PIXELS) for r in scored)
    # Files whose metadata declares their origin, from the rows' provenance columns (nsnet detect
    # --provenance): shown whatever their score, since a declaration is evidence of its own.
    declared = [r for r in rows if r["provenance"] in ("ai-declared", "non-ai-declared") or r["c2pa"]]
    declared_cards = "".join(_card(r, detector, None, thumb_side, max_pixels or MAX_PIXELS)
                             for r in declared[:max(0, top)])
    errs = [r for r in rows if r["verdict"] == "error"]
    err_items = [f"<li><b>{html.escape(r['source'])}</b>: {html.escape(r['error'] or '')}</li>"
                 for r in errs[:MAX_ERRORS_LISTED]]
    err_items += [f"<li><b>results file</b>: {html.escape(p)}</li>" for p in problems[:MAX_ERRORS_LISTED]]
    more = len(errs) - MAX_ERRORS_LISTED
    errors_html = (f'<ul class="errors">{"".join(err_items)}</ul>' if err_items else "<p>none</p>") + (
        f'<p class="note">and {more:,} more: choose "error" in the table below</p>' if more > 0 else "")
    data = [[r["source"], None if r["prob_fake"] is None else round(r["prob_fake"], 5),
             VERDICTS.index(r["verdict"]), r["provenance"] + (f" (C2PA {r['c2pa']})" if r["c2pa"] else ""),
             r["warnings"], r["error"] or ""] for r in rows]
    # Inside <script> only "</" could end the element early; "<\/" is the same JSON string.
    rows_json = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    has_band = any(r["verdict"] == "uncertain" for r in rows)
    page = Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        title=html.escape(title),
        subtitle=html.escape(f"{len(rows):,} rows from {', '.join(map(str, sources)) or 'results'}; written "
                             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"),
        counts=count_html,
        verdict_note=("Verdicts come from the model's calibrated two-threshold band." if has_band else
                      "Rows without a verdict column follow is_fake (the single threshold); "
                      "a calibrated model adds an 'uncertain' band."),
        histogram=histogram_svg(rows),
        suspicious_note=(f"The {len(scored)} highest prob_fake scores"
                         + (", with each selected patch coloured by how much it moves the logit "
                            "(red: towards AI-generated, blue: towards real)" if detector is not None else "")
                         + ". Provenance is what the file itself declares; 'unknown' is not evidence of a real photo."),
        cards=cards or "<p>no scored rows</p>",
        n_declared=f"{len(declared):,}", declared_cards=declared_cards,
        declared_note=("C2PA manifests, IPTC digital source types and generator metadata found in the "
                       f"files{f'; the first {top} shown' if len(declared) > top else ''}." if declared else
                       "None among the rows' provenance columns (run nsnet detect --provenance to fill them)."),
        n_errors=f"{len(errs):,}", errors=errors_html,
        rows_json=rows_json, page_size=PAGE_SIZE)
    out = Path(out)
    atomic_write(out, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return out
