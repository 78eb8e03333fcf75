"""What `nsnet batch` scores: folders, globs and listings expanded to paths/URIs, and the error row
text of local paths that must not be handed to Ray's readers."""
from __future__ import annotations

import glob
import os
import stat
from typing import Sequence

from .errors import NSNetError
from .pipeline import iter_image_paths, load_image

LISTING_SUFFIXES = (".txt", ".lst", ".csv")
_GLOB_CHARS = frozenset("*?[")


def _has_scheme(s: str) -> bool:
    head, sep, _ = s.partition("://")
    return bool(sep) and head.isidentifier() and len(head) > 1


def _read_listing(path: str) -> list[str]:
    """Paths/URIs listed in a text file (one a line; blank lines and ``#`` comments skipped) or in
    a Parquet file's ``path`` column (its first column when it has none)."""
    if path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        col = table.column("path") if "path" in table.column_names else table.column(0)
        return [str(v) for v in col.to_pylist() if v is not None]
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return [s for s in (line.strip() for line in f) if s and not s.startswith("#")]


def expand_inputs(inputs: Sequence[str]) -> tuple[list[str], list[str]]:
    """(paths, warnings): folders scanned recursively, globs expanded, ``.txt``/``.lst``/``.csv``/
    ``.parquet`` listings read; URIs (``s3://…``) and plain files kept as given. Each path once,
    first occurrence first."""
    out: list[str] = []
    warnings: list[str] = []
    for raw in inputs:
        low = raw.lower()
        if _has_scheme(raw):
            out.append(raw)
        elif low.endswith((".parquet", *LISTING_SUFFIXES)) and os.path.isfile(raw):
            out.extend(_read_listing(raw))
        elif _GLOB_CHARS & set(raw) and not os.path.exists(raw):
            found = sorted(glob.glob(raw, recursive=True))
            if not found:
                warnings.append(f"no file matches {raw}")
            for f in found:
                paths, warn = iter_image_paths([f], True)
                out.extend(paths)
                warnings.extend(warn)
        else:
            paths, warn = iter_image_paths([raw], True)
            out.extend(paths)
            warnings.extend(warn)
    return list(dict.fromkeys(out)), warnings


def local_error(path: str) -> str | None:
    """The error row's text for a local path Ray must not be asked to read (missing, a folder,
    unreadable, not a regular file), or None when it is a readable regular file (or a URI)."""
    if _has_scheme(path):
        return None
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # Ray's readers (pyarrow) take UTF-8 paths only
        return f"ImageDecodeError: {path}: file name is not valid UTF-8 (rename it)"
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        st = None
    if st is not None and stat.S_ISREG(st.st_mode) and os.access(path, os.R_OK):
        return None
    if st is not None and not stat.S_ISDIR(st.st_mode) and not stat.S_ISREG(st.st_mode):
        # a FIFO or device: opening it could block or never end
        return f"ImageDecodeError: {path}: not a regular file"
    try:  # missing, a folder or unreadable: load_image fails before reading any byte
        load_image(path)
    except NSNetError as e:
        return f"{type(e).__name__}: {e}"
    return f"ImageDecodeError: {path}: cannot read"
