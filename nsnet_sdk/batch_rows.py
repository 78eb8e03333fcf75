"""The rows of `nsnet batch`: one Parquet row per input, and `score_items`, which reads a group of
inputs (each with the byte limit of ``nsnet detect``) and scores them with a `Detector`, in
process or inside a Ray actor alike."""
from __future__ import annotations

from typing import Any, Sequence

from .errors import NSNetError
from .pipeline.read import file_byte_limit, read_image_file
from .prediction import Prediction
from .results import FIELDS, escape_text, result_row
from .uris import has_scheme, read_uri

# One Parquet row per input: the fields of `nsnet detect`'s rows (nsnet_sdk.results), the input
# named `path`; text cells escaped as in detect's files (`results.unescape_text` reverses it).
ROW_FIELDS = tuple("path" if f == "source" else f for f in FIELDS)
Item = tuple[str, str]  # (input as listed, where to read it)


def row_schema():
    import pyarrow as pa

    types = {"prob_fake": pa.float64(), "logit": pa.float64(), "is_fake": pa.bool_(),
             "threshold": pa.float64(), "warnings": pa.list_(pa.string())}
    return pa.schema([(f, types.get(f, pa.string())) for f in ROW_FIELDS])


def prediction_row(pred: Prediction, threshold: float, sha256: str) -> dict[str, Any]:
    """The Parquet row of one Prediction: `results.result_row` with ``source`` as ``path``."""
    row = result_row(pred, threshold=threshold, model_sha256=sha256)
    row["path"] = row.pop("source")
    for k in ("path", "error", "verdict"):
        if row[k] is not None:
            row[k] = escape_text(row[k])
    row["warnings"] = [escape_text(w) for w in row["warnings"]]
    return row


def failed_row(path: str, error: str, threshold: float, sha256: str) -> dict[str, Any]:
    """The row of an input that never reached a Detector."""
    pred = Prediction(source=path, prob_fake=None, is_fake=None, logit=None, error=error)
    return prediction_row(pred, threshold, sha256)


def read_item(key: str, where: str, limit: int) -> bytes:
    """The bytes of one input, at most ``limit`` (its size checked before reading); errors name
    ``key``, the input as listed."""
    if has_scheme(where):
        return read_uri(where, limit)
    return read_image_file(where, limit, key)


def score_items(det: Any, items: Sequence[Item], sha256: str, store: Any) -> list[dict[str, Any]]:
    """The rows of ``items`` scored by ``det`` (a `Detector`), in order: each input read with the
    Detector's byte limit (a read failure its error row) and hashed; a file whose bytes ``store``
    (`cache.run_store`, one per job or actor) already holds, or that repeats one earlier in the
    group, takes that result under its own name instead of being decoded again."""
    import hashlib

    from .cache import score_chunk

    limit = file_byte_limit(det.max_pixels)
    chunk: list[tuple[str, Any, str | None]] = []
    for key, where in items:
        try:
            data = read_item(key, where, limit)
            chunk.append((key, data, hashlib.sha256(data).hexdigest()))
        except NSNetError as e:
            chunk.append((key, e, None))
    return [prediction_row(pred, det.threshold, sha256) for pred, _ in score_chunk(det, chunk, store)]
