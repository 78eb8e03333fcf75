"""Result rows for the review report: `nsnet detect` / `nsnet batch` files (JSON Lines, CSV or
Parquet) read and each row normalised to the columns the page uses."""
from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any, Iterable

from .results import CSV, JSONL, WARNING_SEP, read_rows, unescape_value

VERDICTS = ("ai-generated", "uncertain", "real", "error")
MAX_CELL = 2000  # characters kept of one text cell (a hostile results file cannot bloat the page)
_HEX64 = re.compile(r"[0-9a-f]{64}")


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
    there when they are not found from the working directory), ``sha256`` (of the file, when the
    results carry it), ``model_sha256`` and ``threshold`` (None when absent). Missing columns are
    tolerated: without ``verdict`` (no calibrated band) it follows ``is_fake``."""
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
            "generator": _text(gen), "base": base, "sha256": _hex64(raw.get("sha256")),
            "model_sha256": _hex64(raw.get("model_sha256")), "threshold": _float(raw.get("threshold"))}


def _hex64(v: Any) -> str | None:
    return v if isinstance(v, str) and _HEX64.fullmatch(v) else None
