"""The rows of `nsnet batch`: one Parquet row per input, and `score_items`, which reads a group of
inputs (each with the byte limit of ``nsnet detect``) and scores them with a `Detector`, in
process or inside a Ray actor alike."""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

from .errors import NSNetError
from .pipeline.read import file_byte_limit, read_image_file
from .prediction import Prediction
from .provenance import PROVENANCE_COLUMNS, provenance_columns
from .results import FIELDS, escape_text, result_row
from .uris import has_scheme, read_uri

# One Parquet row per input: the fields of `nsnet detect`'s rows (nsnet_sdk.results), the input
# named `path`; text cells escaped as in detect's files (`results.unescape_text` reverses it).
ROW_FIELDS = tuple("path" if f == "source" else f for f in FIELDS)
# With ``--provenance``: the columns of ``nsnet detect --provenance`` after those.
PROVENANCE_ROW_FIELDS = ROW_FIELDS + PROVENANCE_COLUMNS
Item = tuple[str, str]  # (input as listed, where to read it)


def row_schema(provenance: bool = False):
    """The Parquet schema of the rows, with the provenance columns or without."""
    import pyarrow as pa

    types = {"prob_fake": pa.float64(), "logit": pa.float64(), "is_fake": pa.bool_(),
             "threshold": pa.float64(), "warnings": pa.list_(pa.string()),
             "provenance_signals": pa.list_(pa.string())}
    fields = PROVENANCE_ROW_FIELDS if provenance else ROW_FIELDS
    return pa.schema([(f, types.get(f, pa.string())) for f in fields])


def prediction_row(pred: Prediction, threshold: float, sha256: str,
                   provenance: bool = False) -> dict[str, Any]:
    """The Parquet row of one Prediction: `results.result_row` with ``source`` as ``path``, and
    with ``provenance`` the columns `provenance.provenance_columns` gives ``nsnet detect``; text
    escaped as in detect's files (in lists too)."""
    row = result_row(pred, threshold=threshold, model_sha256=sha256)
    row["path"] = row.pop("source")
    if provenance:
        row.update(provenance_columns(pred.provenance))
    for k, v in row.items():
        if isinstance(v, str):
            row[k] = escape_text(v)
        elif isinstance(v, list):
            row[k] = [escape_text(x) if isinstance(x, str) else x for x in v]
    return row


def failed_row(path: str, error: str, threshold: float, sha256: str,
               provenance: bool = False) -> dict[str, Any]:
    """The row of an input that never reached a Detector (its provenance columns empty)."""
    pred = Prediction(source=path, prob_fake=None, is_fake=None, logit=None, error=error)
    return prediction_row(pred, threshold, sha256, provenance)


def read_item(key: str, where: str, limit: int) -> bytes:
    """The bytes of one input, at most ``limit`` (its size checked before reading); errors name
    ``key``, the input as listed."""
    if has_scheme(where):
        return read_uri(where, limit)
    return read_image_file(where, limit, key)


def read_items(items: Iterable[Item], limit: int) -> Iterator[list[tuple[str, Any, str | None]]]:
    """``items`` read (each with the byte limit ``limit``; a read failure its typed error) and
    hashed, in groups of at most `cache.CHUNK_FILES` inputs and `cache.CHUNK_BYTES` bytes, the
    bounds of ``nsnet detect``: (input as listed, bytes or error, sha256 or None)."""
    import hashlib

    from .cache import CHUNK_BYTES, CHUNK_FILES

    it = iter(items)
    while True:
        chunk: list[tuple[str, Any, str | None]] = []
        held = 0
        for key, where in it:
            try:
                data = read_item(key, where, limit)
                chunk.append((key, data, hashlib.sha256(data).hexdigest()))
                held += len(data)
            except NSNetError as e:
                chunk.append((key, e, None))
            if len(chunk) >= CHUNK_FILES or held >= CHUNK_BYTES:
                break
        if not chunk:
            return
        yield chunk


def iter_rows(det: Any, chunk: list[tuple[str, Any, str | None]], sha256: str,
              store: Any) -> Iterator[dict[str, Any]]:
    """The rows of a `read_items` group scored by ``det`` (a `Detector`; one pass of its pipeline,
    so its decode workers start once per group), in order, each as soon as it is known: a file
    whose bytes ``store`` (`cache.run_store`, one per job or actor) already holds, or that repeats
    one earlier in the group, takes that result under its own name instead of being decoded again.
    A Detector with a provenance reader adds its columns, read from the same bytes (an input is
    opened once)."""
    from dataclasses import replace

    from .cache import score_chunk

    with_provenance = det.provenance is not None
    for (_, data, sha), (pred, _) in zip(chunk, score_chunk(det, chunk, store)):
        if with_provenance and sha is None:  # unread: the record detect gives it (nothing, and why)
            pred = replace(pred, provenance=det._unread_provenance(data))
        yield prediction_row(pred, det.threshold, sha256, with_provenance)


def score_items(det: Any, items: Sequence[Item], sha256: str, store: Any) -> list[dict[str, Any]]:
    """The rows of ``items`` (`read_items`, then `iter_rows`), in order."""
    groups = read_items(items, file_byte_limit(det.max_pixels))
    return [row for chunk in groups for row in iter_rows(det, chunk, sha256, store)]
