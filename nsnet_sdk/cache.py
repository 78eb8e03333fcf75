"""Identical files scored once: result rows keyed by (file sha256, model sha256, options that change
a row), deduplicated within a run (`first_of_each`) and kept across runs and processes in a SQLite
cache (`ResultCache`: the standard library's sqlite3, WAL mode, safe with several writers).

A cache answers only for its own model and options: both are part of every key, so another model's
or option's row can never come back. A cache file that SQLite cannot read, or whose schema is not
this one, is reported (`ResultCache.problems`), moved aside and rebuilt, never trusted; a stored row
that does not decode is dropped and scored again.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

SCHEMA = "nsnet-result-cache/1"
_TABLE = ("CREATE TABLE IF NOT EXISTS results (file_sha256 TEXT NOT NULL, model_sha256 TEXT NOT NULL, "
          "options TEXT NOT NULL, row TEXT NOT NULL, created REAL NOT NULL, "
          "PRIMARY KEY (file_sha256, model_sha256, options)) WITHOUT ROWID")


def options_key(options: Mapping[str, Any]) -> str:
    """A stable digest of the options that change a row (threshold, band, pixel limit,
    preprocessing, provenance on/off, ...): canonical JSON, sorted keys, then sha256."""
    text = json.dumps(options, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def first_of_each(file_sha256s: Sequence[str | None]) -> tuple[list[int], list[int]]:
    """In-run deduplication: (indices to score: the first input of each distinct sha256, and every
    unreadable one, whose sha256 is None; for each input, the index whose row it takes)."""
    first: dict[str, int] = {}
    todo, source = [], []
    for i, sha in enumerate(file_sha256s):
        if sha is None or sha not in first:
            if sha is not None:
                first[sha] = i
            todo.append(i)
            source.append(i)
        else:
            source.append(first[sha])
    return todo, source


class ResultCache:
    """Rows of one model and one set of options in a SQLite file shared by runs and processes.

    ``get(file_sha256)`` returns the stored row with ``cached`` set to True (None on a miss);
    ``put(file_sha256, row)`` stores a row (its ``cached`` key is not stored).
    """

    def __init__(self, path: str | os.PathLike, *, model_sha256: str, options: Mapping[str, Any],
                 timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.model_sha256 = model_sha256
        self.options = options_key(options)
        self.timeout = timeout
        self.problems: list[str] = []
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as e:  # not a database, a broken header, another schema
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}-{os.getpid()}")
            self.problems.append(f"{self.path}: not a usable result cache ({e}); moved to {aside} and rebuilt")
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
                except FileNotFoundError:
                    pass
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        # check_same_thread=False: a service builds it on one thread and serves on another; the
        # connection is used by one thread at a time (the caller's event loop or run).
        db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
            db.execute("PRAGMA synchronous=NORMAL")
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("integrity check failed")
            db.execute("BEGIN IMMEDIATE")  # one process creates the tables; the others wait for it
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA,))
            db.execute(_TABLE)
            db.execute("COMMIT")
            schema = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if schema is None or schema[0] != SCHEMA:
                raise sqlite3.DatabaseError(f"schema {schema and schema[0]!r}, expected {SCHEMA!r}")
            cols = [r[1] for r in db.execute("PRAGMA table_info(results)")]
            if cols != ["file_sha256", "model_sha256", "options", "row", "created"]:
                raise sqlite3.DatabaseError(f"table results has columns {cols}")
        except BaseException:
            db.close()
            raise
        return db

    def get(self, file_sha256: str) -> dict[str, Any] | None:
        """The row stored for this file, model and options, marked ``cached``; None when absent."""
        hit = self._db.execute("SELECT row FROM results WHERE file_sha256 = ? AND model_sha256 = ? AND options = ?",
                               (file_sha256, self.model_sha256, self.options)).fetchone()
        if hit is None:
            return None
        try:
            row = json.loads(hit[0])
        except ValueError:
            row = None
        if not isinstance(row, dict):  # a damaged entry is dropped, and the file scored again
            self.problems.append(f"{self.path}: entry for {file_sha256} does not decode; dropped")
            self._db.execute("DELETE FROM results WHERE file_sha256 = ? AND model_sha256 = ? AND options = ?",
                             (file_sha256, self.model_sha256, self.options))
            return None
        return dict(row, cached=True)

    def put(self, file_sha256: str, row: Mapping[str, Any]) -> None:
        """Store ``row`` (JSON-ready values) for this file under this model and options."""
        # ASCII JSON: a file name that is not UTF-8 (a lone surrogate) travels as \udcXX and comes back
        data = json.dumps({k: v for k, v in row.items() if k != "cached"}, ensure_ascii=True, allow_nan=False)
        self._db.execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?)",
                         (file_sha256, self.model_sha256, self.options, data, time.time()))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ResultCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- scoring each distinct file once ------------------------------------------------------------

CHUNK_FILES = 512  # inputs read and hashed ahead of the Detector, at most ...
CHUNK_BYTES = 256 << 20  # ... and this many bytes of them held at once


def reused(row: Mapping[str, Any], name: str) -> Any:
    """The `Prediction` a stored row (`ResultCache.get`) gives the identical file ``name``."""
    from .prediction import Prediction, renamed

    return renamed(Prediction.from_dict({k: v for k, v in row.items() if k != "cached"}), row["source"], name)


def storable(pred: Any) -> bool:
    """Whether a result describes the file itself, and so may answer for its bytes later: not a
    model failure, nor a decode worker that failed for reasons of its own."""
    from .pipeline.executors import WORKER_FAILED

    return not pred.error or not (pred.error.startswith("InferenceError") or WORKER_FAILED in pred.error)


def result_options(det: Any, **extra: Any) -> dict[str, Any]:
    """Every option beside the model that changes ``det``'s results (threshold, verdict band,
    pixel limit, pipeline, engine, precision, preprocessing), plus the caller's ``extra``: what a
    cache of its results is keyed by."""
    band = det.meta.band.to_dict() if det.meta.band is not None else None
    return {"threshold": det.threshold, "band": band, "settings": det.settings(),
            "preprocess": det.config.to_json(), **extra}


@contextlib.contextmanager
def run_store(in_memory: bool = False) -> Iterator[ResultCache]:
    """A temporary result cache for one run: the results of the files it has scored, on disk, so
    memory stays bounded at any input count, and removed on exit. ``in_memory``: held in memory
    instead (a Ray actor, which may be killed without running any exit code)."""
    with tempfile.TemporaryDirectory(prefix="nsnet-run-") as tmp:
        store = ResultCache(":memory:" if in_memory else Path(tmp) / "run.sqlite", model_sha256="run",
                            options={})
        try:
            yield store
        finally:
            store.close()


def read_chunks(det: Any, paths: Iterable[str]) -> Iterator[list[tuple[str, Any, str | None]]]:
    """``paths`` read through the pipeline's bounded reader and hashed, in chunks of at most
    `CHUNK_FILES` files and `CHUNK_BYTES` bytes: (name, bytes or the typed error, sha256 or None)."""
    from .errors import as_input_error
    from .pipeline.read import read_input_bytes

    it = iter(paths)
    while True:
        chunk: list[tuple[str, Any, str | None]] = []
        held = 0
        for name in it:
            try:
                data = read_input_bytes(name, det.max_pixels, name)
                chunk.append((name, data, hashlib.sha256(data).hexdigest()))
                held += len(data)
            except Exception as e:  # recorded for this input: the run goes on
                chunk.append((name, as_input_error(e, name), None))
            if len(chunk) >= CHUNK_FILES or held >= CHUNK_BYTES:
                break
        if not chunk:
            return
        yield chunk


def score_once(det: Any, paths: Sequence[str], cache: ResultCache | None = None,
               on_chunk: Callable[[list[str]], None] | None = None) -> Iterator[tuple[Any, bool]]:
    """(Prediction, reused) for every path, in order, each distinct file decoded and scored once:
    a file whose bytes were already scored in this run, or are in ``cache`` (same model and
    options), takes that result under its own name (``reused`` True) without being decoded.

    Files are read once, through the pipeline's bounded reader, and the bytes handed to the
    Detector; a path that cannot be read gets the Detector's own error for it. Results of this run
    are kept in ``cache``, or in a temporary `run_store`. ``on_chunk(names)`` is called before
    each chunk of inputs is decoded (no input of a later chunk is decoded before then).
    """
    with contextlib.ExitStack() as stack:
        store = cache if cache is not None else stack.enter_context(run_store())
        for chunk in read_chunks(det, paths):
            if on_chunk is not None:
                on_chunk([name for name, _, _ in chunk])
            yield from score_chunk(det, chunk, store)


def score_chunk(det: Any, chunk: Sequence[tuple[str, Any, str | None]],
                store: ResultCache) -> Iterator[tuple[Any, bool]]:
    """(Prediction, reused) of each (name, bytes or error, sha256) of ``chunk``, in order, each
    yielded as soon as it is known (a backend failure mid-chunk leaves every earlier one
    delivered): a file already in ``store`` or earlier in the chunk is reused, the others scored
    by ``det`` and stored."""
    from .prediction import Prediction, rename_source, renamed

    known = {i: store.get(sha) for i, (_, _, sha) in enumerate(chunk) if sha is not None}
    _, first = first_of_each([None if sha is None or known[i] else sha for i, (_, _, sha) in enumerate(chunk)])
    misses = [i for i, (_, _, sha) in enumerate(chunk) if sha is not None and not known[i] and first[i] == i]
    preds = det.predict_iter([chunk[i][1] for i in misses], on_error="record")  # lazily, in order
    position = {i: j for j, i in enumerate(misses)}
    scored: dict[int, Any] = {}
    for i, (name, data, sha) in enumerate(chunk):
        if sha is None:
            yield Prediction.failed(name, data), False
        elif known[i]:
            yield reused(known[i], name), True
        elif first[i] != i:
            yield renamed(scored[first[i]], chunk[first[i]][0], name), True
        else:
            pred = scored[i] = rename_source(next(preds), position[i], name)
            if storable(pred):
                store.put(sha, pred.to_dict())
            yield pred, False
