"""`nsnet batch`: score folders, globs, URI prefixes or listings of paths/URIs, one Parquet row per
input, keyed as the input was listed.

Every input is read by one function, `score_items`, with the byte limit of ``nsnet detect``
(stat before read; local files through `nsnet_sdk.pipeline.read`, URIs through `nsnet_sdk.uris`)
and decoded by the same `Detector`, so a missing, corrupt, oversized or unreachable input is an
error row, never a failed job. A small job runs in this process; a large one, or one given a
cluster address, runs on Ray actors (`nsnet_sdk.batch_ray`). Inputs are listed lazily and rows
are written in small Parquet parts as they finish, each renamed into place whole, so a killed
driver loses at most the batches in flight and ``--resume`` skips exactly the rows written.
"""
from __future__ import annotations

import itertools
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .batch_inputs import iter_inputs, location
from .batch_rows import (PROVENANCE_ROW_FIELDS, ROW_FIELDS, Item, failed_row, prediction_row,
                         row_schema)

__all__ = ["PROVENANCE_ROW_FIELDS", "ROW_FIELDS", "BatchSummary", "PartWriter", "done_paths", "failed_row",
           "prediction_row", "recover_journals", "run_batch"]
from .artifact import model_sha256
from .constants import DEFAULT_BATCH_SIZE
from .pipeline.config import MAX_PIXELS
from .results import escape_text

# A Parquet part is written once this many rows or seconds have gathered; until then each
# finished batch is appended to a journal beside it (an Arrow stream, written through to the
# file), so a killed driver loses only the batches in flight: the next run turns the journal's
# whole batches into a part.
ROWS_PER_FILE = 5000
FLUSH_SECONDS = 30.0
# Below this many inputs (and with no cluster address) starting Ray costs more than it saves.
SMALL_JOB = 2000
# A job run in this process decodes in worker processes (`pipeline.executors`): a native decoder
# crash (a segfault, an abort) kills a decode worker, which costs the one input that caused it
# (retried alone, then its error row), not the job. (Ray actors always decode that way.)
DECODE = "processes"

# -- output ---------------------------------------------------------------------------------

def done_paths(out: str | os.PathLike) -> set[str]:
    """Paths that already have a row in ``out``'s Parquet files (what ``--resume`` skips)."""
    import pyarrow.parquet as pq

    done: set[str] = set()
    for f in sorted(Path(out).glob("*.parquet")):
        done.update(v for v in pq.read_table(f, columns=["path"]).column("path").to_pylist())
    return done


def _table(rows: Sequence[dict[str, Any]], schema: Any):
    import pyarrow as pa

    return pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)


def _columns(out: Path) -> tuple[str, ...] | None:
    """The columns of the Parquet parts already in ``out`` (None when it has none)."""
    import pyarrow.parquet as pq

    for f in sorted(out.glob("*.parquet")):
        return tuple(pq.read_schema(f).names)
    return None


def _write_part(table: Any, final: Path) -> None:
    import pyarrow.parquet as pq

    tmp = final.with_name("." + final.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, final)


def recover_journals(out: Path) -> int:
    """Turn the journals a killed run left in ``out`` into Parquet parts (their whole batches,
    less rows already in a part); returns how many rows were recovered."""
    import pyarrow as pa
    import pyarrow.compute as pc

    recovered = 0
    for journal in sorted(out.glob(".journal-*.arrows")):
        batches = []
        try:
            with pa.OSFile(str(journal)) as f:
                reader = pa.ipc.open_stream(f)
                while True:
                    batches.append(reader.read_next_batch())
        except (StopIteration, pa.ArrowInvalid, OSError):
            pass  # the end, or a batch cut short by the kill: what came before is whole
        if batches:
            table = pa.Table.from_batches(batches)  # the journal's own columns
            done = done_paths(out)  # a run killed between a part's rename and the journal's removal
            table = table.filter(pc.invert(pc.is_in(table.column("path"),
                                                    value_set=pa.array(sorted(done), pa.string()))))
            if table.num_rows:
                run = journal.stem[len(".journal-"):]
                _write_part(table, out / f"part-{run}-recovered.parquet")
                recovered += table.num_rows
        journal.unlink()
    return recovered


class PartWriter:
    """Writes rows into ``part-<run>-<n>.parquet`` files under ``out`` once ``rows_per_file`` rows
    or ``flush_seconds`` have gathered; each file is written beside its final name and renamed
    into place, so a killed job leaves only whole files. Rows not yet in a part are in the
    journal (`recover_journals`)."""

    def __init__(self, out: Path, rows_per_file: int = ROWS_PER_FILE,
                 flush_seconds: float = FLUSH_SECONDS, provenance: bool = False) -> None:
        self.out = out
        self.schema = row_schema(provenance)
        self.run = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.rows_per_file = rows_per_file
        self.flush_seconds = flush_seconds
        self.pending: list[dict[str, Any]] = []
        self.files = 0
        self.written = 0
        self.first = 0.0  # when the oldest pending row arrived
        self._journal: Any = None  # (file, stream writer, path) while rows are pending

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        if not self.pending:
            self.first = time.monotonic()
        if self._journal is None:
            import pyarrow as pa

            path = self.out / f".journal-{self.run}-{self.files:05d}.arrows"
            sink = pa.OSFile(str(path), "wb")  # unbuffered: each batch reaches the file at once
            self._journal = (sink, pa.ipc.new_stream(sink, self.schema), path)
        self._journal[1].write_table(_table(rows, self.schema))
        self.pending.extend(rows)
        self.tick()

    def tick(self) -> None:
        """Write the pending rows if there are enough of them or the oldest has waited long
        enough (called between results too, so a stalled job still writes what it has)."""
        if self.pending and (len(self.pending) >= self.rows_per_file
                             or time.monotonic() - self.first >= self.flush_seconds):
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        _write_part(_table(self.pending, self.schema), self.out / f"part-{self.run}-{self.files:05d}.parquet")
        self.files += 1
        self.written += len(self.pending)
        self.pending.clear()
        sink, stream, path = self._journal
        self._journal = None
        stream.close()
        sink.close()
        path.unlink()


@dataclass
class BatchSummary:
    """What a `run_batch` call did."""

    inputs: int = 0           # known when on_start runs only when the listing is short (else 0)
    skipped: int = 0          # already in the output folder (``resume``)
    scored: int = 0
    errors: int = 0
    seconds: float = 0.0
    files: int = 0
    engine: str = "in-process"  # or "ray"
    warnings: list[str] = field(default_factory=list)
    per_worker: dict[str, tuple[int, float]] = field(default_factory=dict)  # rows, busy seconds

    @property
    def images_per_s(self) -> float:
        return (self.scored + self.errors) / self.seconds if self.seconds > 0 else 0.0


def _batches(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def run_batch(inputs: Sequence[str], model: str | os.PathLike, out: str | os.PathLike, *,
              address: str | None = None, workers: int = 1, gpus_per_worker: float = 0.0,
              batch_size: int = DEFAULT_BATCH_SIZE, resume: bool = False, threshold: float | None = None,
              threads_per_worker: int | None = 1, on_rows: Callable[[list[dict]], None] | None = None,
              on_start: Callable[[BatchSummary], None] | None = None,
              ray_init: dict[str, Any] | None = None, rows_per_file: int = ROWS_PER_FILE,
              limit: int | None = None, use_ray: bool | None = None,
              max_pixels: int = MAX_PIXELS, decode: str = DECODE,
              provenance: Any = None) -> BatchSummary:
    """Score ``inputs`` (see `batch_inputs.iter_inputs`), one Parquet row each under ``out``.

    ``use_ray`` None: Ray only for a job of `SMALL_JOB` inputs or more, or with an ``address``
    or an initialised Ray; else in this process with a `Detector` (same rows). On Ray: the Ray
    already initialised here, else ``address`` (``"auto"``, ``"host:6379"``, ``"ray://host:10001"``)
    or a local Ray started for the job and stopped with it (``ray_init`` = extra `ray.init`
    arguments), ``workers`` actors each loading the model sent through the object store.
    ``on_start`` sees the summary once the first inputs are listed, ``on_rows`` each group of
    rows once written to the pending part (Ray rows also carry ``worker``: ``host:pid``);
    ``limit`` stops after that many new rows (a partial job that ``resume=True`` finishes).
    ``decode`` (in process): ``"processes"`` (default: a decoder crash costs its input's row only)
    or ``"threads"`` (no worker processes to start; a crash ends the job). A Ray actor always
    decodes in one worker process it keeps: a crash there costs its input's row too.
    ``provenance``: True or a `ProvenanceReader` adds the columns of ``nsnet detect --provenance``
    (`PROVENANCE_ROW_FIELDS`), read from the bytes each input was scored from.
    Raises `FileExistsError` when ``out`` already holds results and ``resume`` is false,
    `NSNetError` when the model cannot be used.
    """
    from .artifact import read_model_meta
    from .provenance import provenance_reader

    reader = provenance_reader(provenance)  # a bad trust-anchors file fails here, on the driver
    start = time.perf_counter()
    out = Path(out)
    model = os.path.abspath(model)
    # a missing or invalid model fails here, before any cluster work (no runtime is loaded)
    meta = read_model_meta(model)
    threshold = meta.threshold if threshold is None else float(threshold)
    sha = model_sha256(model)
    out.mkdir(parents=True, exist_ok=True)
    for tmp in out.glob(".part-*.parquet.tmp"):
        tmp.unlink()  # a file a killed run was writing; its rows are in the journal
    recover_journals(out)
    done = done_paths(out)
    if done and not resume:
        raise FileExistsError(f"{out} already holds results; pass --resume to continue that "
                              "job, or choose another --out")
    fields = PROVENANCE_ROW_FIELDS if reader is not None else ROW_FIELDS
    if _columns(out) not in (None, fields):
        with_ = "with" if reader is None else "without"
        raise FileExistsError(f"{out} holds results written {with_} --provenance; resume that job "
                              f"{with_} it, or choose another --out")
    summary = BatchSummary()
    listed = iter_inputs(inputs, summary.warnings)

    def todo() -> Iterator[Item]:
        for key in listed:
            summary.inputs += 1
            if escape_text(key) in done:
                summary.skipped += 1
            else:
                yield key, location(key)

    items = todo()
    if limit is not None:
        items = itertools.islice(items, limit)
    # Look ahead just far enough to choose where to run; the rest is listed as it is used.
    head = list(itertools.islice(items, SMALL_JOB))
    if use_ray is None:
        use_ray = len(head) >= SMALL_JOB or address is not None or _ray_initialized()
    summary.engine = "ray" if use_ray else "in-process"
    if on_start is not None:
        on_start(summary)
    writer = PartWriter(out, rows_per_file, provenance=reader is not None)

    def take(rows: list[dict]) -> None:
        for r in rows:
            if r["error"] is None:
                summary.scored += 1
            else:
                summary.errors += 1
        writer.add(rows)
        if on_rows is not None:
            on_rows(rows)

    batches = _batches(itertools.chain(head, items), batch_size)
    try:
        if use_ray:
            from .batch_ray import score_on_ray

            score_on_ray(batches, model, sha, take, writer.tick, summary, address=address,
                         workers=workers, gpus_per_worker=gpus_per_worker, batch_size=batch_size,
                         threshold=threshold, threads=threads_per_worker, ray_init=ray_init,
                         max_pixels=max_pixels, provenance=reader)
        else:
            _score_in_process(batches, model, sha, take, threshold=threshold,
                              batch_size=batch_size, max_pixels=max_pixels, decode=decode,
                              provenance=reader)
    finally:
        writer.flush()
        summary.files = writer.files
        summary.seconds = time.perf_counter() - start
    return summary


def _ray_initialized() -> bool:
    import sys

    ray = sys.modules.get("ray")  # never imported just to ask
    return ray is not None and ray.is_initialized()


def _score_in_process(batches: Iterator[list[Item]], model: str, sha: str,
                      take: Callable[[list[dict]], None], *, threshold: float,
                      batch_size: int, max_pixels: int, decode: str, provenance: Any) -> None:
    from .cache import run_store
    from .detector import Detector
    from .options import InputOptions

    # Decode workers end by themselves when a killed driver is gone (pipeline.executors).
    options = InputOptions(batch_size=batch_size, max_pixels=max_pixels, executor=decode,
                           provenance=provenance)
    with Detector(model, threshold=threshold, options=options) as det, run_store() as store:
        _score_with(det, store, batches, sha, take, batch_size, max_pixels)


def _score_with(det: Any, store: Any, batches: Iterator[list[Item]], sha: str,
                take: Callable[[list[dict]], None], batch_size: int, max_pixels: int) -> None:
    from .batch_rows import iter_rows, read_items
    from .pipeline.read import file_byte_limit

    # Groups as large as detect's (one start of the decode workers each); rows handed on a batch
    # at a time as they come, so a killed job loses at most one batch.
    for chunk in read_items(itertools.chain.from_iterable(batches), file_byte_limit(max_pixels)):
        rows: list[dict] = []
        for row in iter_rows(det, chunk, sha, store):
            rows.append(row)
            if len(rows) == batch_size:
                take(rows)
                rows = []
        if rows:
            take(rows)
