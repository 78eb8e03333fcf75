"""What `nsnet batch` scores: folders, globs, URI prefixes and listings expanded, lazily, to the
inputs as listed, each paired with where to read it (a local path made absolute on the driver, so
a worker started in another directory reads the same file; a URI as it is)."""
from __future__ import annotations

import glob
import itertools
import os
from typing import Iterable, Iterator, Sequence

from .pipeline import iter_image_paths
from .uris import has_scheme, list_prefix, local_path

LISTING_SUFFIXES = (".txt", ".lst", ".csv")
_GLOB_CHARS = frozenset("*?[")


def _read_listing(path: str) -> Iterator[str]:
    """Paths/URIs listed in a text file (one a line; blank lines and ``#`` comments skipped) or in
    a Parquet file's ``path`` column (its first column when it has none), read as they are used:
    a listing of millions of lines is never held whole."""
    if path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        column = "path" if "path" in names else names[0]
        for batch in pf.iter_batches(batch_size=65536, columns=[column]):
            yield from (str(v) for v in batch.column(0).to_pylist() if v is not None)
        return
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            s = line.strip()
            if s and not s.startswith("#"):
                yield s


def _expand_uri(uri: str, warnings: list[str]) -> Iterable[str]:
    """A URI ending with ``/`` is a prefix (its image objects, as a folder scan); any other one
    input. A ``file://`` folder is scanned like a local folder, its files keeping the scheme."""
    if not uri.endswith("/"):
        return [uri]
    local = local_path(uri)
    if local is not None:
        paths, warn = iter_image_paths([local], True)
        warnings.extend(warn)
        root = local.rstrip("/") + "/"
        return [uri.rstrip("/") + "/" + p[len(root):] if p.startswith(root) else "file://" + p
                for p in paths]
    return list_prefix(uri)


def iter_inputs(inputs: Sequence[str], warnings: list[str]) -> Iterator[str]:
    """Each input as it will be keyed in the output: folders scanned recursively, globs expanded,
    URI prefixes listed (in a listing too), ``.txt``/``.lst``/``.csv``/``.parquet`` listings read
    line by line; URIs
    and plain files kept as given. Each once, first occurrence first; ``warnings`` collects what
    was left out and why."""
    seen: set[str] = set()
    for raw in inputs:
        low = raw.lower()
        if has_scheme(raw):
            found: Iterable[str] = _expand_uri(raw, warnings)
        elif low.endswith((".parquet", *LISTING_SUFFIXES)) and os.path.isfile(raw):
            # a URI prefix in a listing is listed too (a local folder there stays one input)
            found = itertools.chain.from_iterable(
                _expand_uri(u, warnings) if has_scheme(u) else (u,) for u in _read_listing(raw))
        elif _GLOB_CHARS & set(raw) and not os.path.exists(raw):
            matches = sorted(glob.glob(raw, recursive=True))
            if not matches:
                warnings.append(f"no file matches {raw}")
            found, warn = iter_image_paths(matches, True)
            warnings.extend(warn)
        else:
            found, warn = iter_image_paths([raw], True)
            warnings.extend(warn)
        for p in found:
            if p not in seen:
                seen.add(p)
                yield p


def expand_inputs(inputs: Sequence[str]) -> tuple[list[str], list[str]]:
    """(inputs, warnings) of `iter_inputs`, as a list."""
    warnings: list[str] = []
    return list(iter_inputs(inputs, warnings)), warnings


def location(key: str) -> str:
    """Where a worker reads input ``key``: a URI as it is, a local path made absolute here (on the
    driver), so the worker's own working directory does not matter."""
    return key if has_scheme(key) else os.path.abspath(key)
