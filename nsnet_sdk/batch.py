"""`nsnet batch`: score folders, globs or path listings on a Ray cluster (Ray Data), one Parquet row per input.

Bytes are read with ``ray.data.read_binary_files`` and decoded inside our actors by the same
`Detector` as ``nsnet detect``, so a corrupt, empty or bomb file is an error row, never a failed
job (``read_images`` would fail the job; ``max_errored_blocks`` would drop good images with it).
Images stay encoded bytes until the Detector's mosaic: nothing becomes float before the
224×224 patch mosaic. Rows reach the driver as Ray produces them and are written in Parquet
files renamed into place whole, so ``--resume`` after a stop or crash skips exactly the inputs
already written. Ray is imported only when a job runs (``pip install 'nsnet-sdk[ray]'``).
"""
from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .prediction import Prediction, rename_source
from .batch_inputs import expand_inputs, local_error
from .artifact import model_sha256
from .constants import DEFAULT_BATCH_SIZE
from .results import FIELDS, escape_text, result_row

# One Parquet row per input: the fields of `nsnet detect`'s rows (nsnet_sdk.results), the input
# named `path`; text cells escaped as in detect's files (`results.unescape_text` reverses it).
ROW_FIELDS = tuple("path" if f == "source" else f for f in FIELDS)
ROWS_PER_FILE = 5000
FLUSH_SECONDS = 30.0


def _row_schema():
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


# -- output ---------------------------------------------------------------------------------

def done_paths(out: str | os.PathLike) -> set[str]:
    """Paths that already have a row in ``out``'s Parquet files (what ``--resume`` skips)."""
    import pyarrow.parquet as pq

    done: set[str] = set()
    for f in sorted(Path(out).glob("*.parquet")):
        done.update(v for v in pq.read_table(f, columns=["path"]).column("path").to_pylist())
    return done


class PartWriter:
    """Writes rows into ``part-<run>-<n>.parquet`` files under ``out``; each file is written
    beside its final name and renamed into place, so a killed job leaves only whole files."""

    def __init__(self, out: Path, rows_per_file: int = ROWS_PER_FILE,
                 flush_seconds: float = FLUSH_SECONDS) -> None:
        self.out = out
        self.run = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.rows_per_file = rows_per_file
        self.flush_seconds = flush_seconds
        self.pending: list[dict[str, Any]] = []
        self.files = 0
        self.last = time.monotonic()

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        self.pending.extend(rows)
        if (len(self.pending) >= self.rows_per_file
                or time.monotonic() - self.last >= self.flush_seconds):
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.last = time.monotonic()
        if not self.pending:
            return
        table = pa.Table.from_pylist([{k: r[k] for k in ROW_FIELDS} for r in self.pending],
                                     schema=_row_schema())
        final = self.out / f"part-{self.run}-{self.files:05d}.parquet"
        tmp = final.with_name("." + final.name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        self.files += 1
        self.pending.clear()


# -- scoring on Ray -------------------------------------------------------------------------

class Scorer:
    """Ray Data callable class: one `Detector` per actor; a batch of (path, bytes) in, rows out."""

    def __init__(self, model: str, sha256: str, threshold: float, batch_size: int,
                 threads: int | None) -> None:
        from .detector import Detector
        from .options import BackendOptions, InputOptions

        self.det = Detector(model, threshold=threshold, backend=BackendOptions(intra_op_threads=threads),
                            options=InputOptions(batch_size=batch_size, workers=0))
        self.sha256 = sha256
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        start = time.perf_counter()
        paths = [str(p) for p in batch["path"]]
        preds = self.det.predict_iter(list(batch["bytes"]), on_error="record")
        rows = [prediction_row(rename_source(p, i, paths[i]), self.det.threshold, self.sha256)
                for i, p in enumerate(preds)]
        cols: dict[str, list] = {k: [r[k] for r in rows] for k in ROW_FIELDS}
        cols["worker"] = [self.worker] * len(rows)
        cols["seconds"] = [(time.perf_counter() - start) / max(1, len(rows))] * len(rows)
        return cols


@dataclass
class BatchSummary:
    """What a `run_batch` call did."""

    inputs: int = 0
    skipped: int = 0          # already in the output folder (``resume``)
    scored: int = 0
    errors: int = 0
    seconds: float = 0.0
    files: int = 0
    warnings: list[str] = field(default_factory=list)
    per_worker: dict[str, tuple[int, float]] = field(default_factory=dict)  # rows, busy seconds

    @property
    def images_per_s(self) -> float:
        return (self.scored + self.errors) / self.seconds if self.seconds > 0 else 0.0


def _ray_started(address: str | None, ray_init: dict[str, Any] | None) -> bool:
    """Connect to ``address`` (or start a local Ray); True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=address, log_to_driver=False, **(ray_init or {}))
    return True


def run_batch(inputs: Sequence[str], model: str | os.PathLike, out: str | os.PathLike, *,
              address: str | None = None, workers: int = 1, gpus_per_worker: float = 0.0,
              batch_size: int = DEFAULT_BATCH_SIZE, resume: bool = False, threshold: float | None = None,
              threads_per_worker: int | None = 1, on_rows: Callable[[list[dict]], None] | None = None,
              on_start: Callable[[BatchSummary], None] | None = None,
              ray_init: dict[str, Any] | None = None, rows_per_file: int = ROWS_PER_FILE,
              limit: int | None = None) -> BatchSummary:
    """Score ``inputs`` (see `expand_inputs`) with ``workers`` Ray actors, one Parquet row each.

    Uses the Ray already initialised in this process, else connects to ``address`` (``"auto"``,
    ``"ray://host:10001"``) or starts a local one (``ray_init`` = extra `ray.init` arguments).
    ``on_start`` sees the summary once the inputs are listed (``inputs``, ``skipped``,
    ``warnings`` set), ``on_rows`` each group of rows as it arrives (rows scored by an actor
    also carry ``worker``: ``host:pid``); ``limit`` stops after that many new rows
    (a partial job that ``resume=True`` finishes). Raises `FileExistsError` when ``out`` already
    holds results and ``resume`` is false, `NSNetError` when the model cannot be used.
    """
    from .artifact import read_model_meta

    start = time.perf_counter()
    out = Path(out)
    paths, warnings = expand_inputs(inputs)
    # a missing or invalid model fails here, before any cluster work (no runtime is loaded)
    meta = read_model_meta(model)
    threshold = meta.threshold if threshold is None else float(threshold)
    sha = model_sha256(model)
    out.mkdir(parents=True, exist_ok=True)
    for tmp in out.glob(".part-*.parquet.tmp"):
        tmp.unlink()  # a file a killed run was writing; its rows are not counted as done
    done = done_paths(out)
    if done and not resume:
        raise FileExistsError(f"{out} already holds results; pass --resume to continue that "
                              "job, or choose another --out")
    summary = BatchSummary(inputs=len(paths), skipped=sum(escape_text(p) in done for p in paths),
                           warnings=warnings)
    if on_start is not None:
        on_start(summary)
    writer = PartWriter(out, rows_per_file)
    todo: list[str] = []

    def take(rows: list[dict]) -> None:
        for r in rows:
            if r["error"] is None:
                summary.scored += 1
            else:
                summary.errors += 1
        writer.add(rows)
        if on_rows is not None:
            on_rows(rows)

    early = []
    for p in paths:
        if escape_text(p) in done:
            continue
        err = local_error(p)
        if err is None:
            todo.append(p)
        else:
            early.append(failed_row(p, err, threshold, sha))
    if limit is not None:
        early = early[:limit]
        todo = todo[:max(0, limit - len(early))]
    if early:
        take(early)
    try:
        if todo:
            _score_on_ray(todo, str(model), sha, take, summary, address=address, workers=workers,
                          gpus_per_worker=gpus_per_worker, batch_size=batch_size,
                          threshold=threshold, threads=threads_per_worker, ray_init=ray_init)
    finally:
        writer.flush()
        summary.files = writer.files
        summary.seconds = time.perf_counter() - start
    return summary


def _score_on_ray(todo: list[str], model: str, sha: str, take: Callable[[list[dict]], None],
                  summary: BatchSummary, *, address: str | None, workers: int,
                  gpus_per_worker: float, batch_size: int, threshold: float | None,
                  threads: int | None, ray_init: dict[str, Any] | None) -> None:
    import ray
    import ray.data

    owned = _ray_started(address, ray_init)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # our own bar counts rows, not Ray operators
        ctx.print_on_execution_start = False
        # Reading is I/O: a zero-CPU read task can run beside actors that hold every CPU (with a
        # CPU each, a 2-CPU node running 2 actors would never schedule a read). Zero-CPU tasks
        # are not limited by CPUs, so `concurrency` bounds how many read processes Ray starts;
        # blocks of a few batches each keep every actor busy without a task per batch.
        blocks = max(2 * workers, min(len(todo) // (4 * batch_size), 2000))
        ds = ray.data.read_binary_files(todo, include_paths=True, num_cpus=0,
                                        concurrency=max(2, workers), ignore_missing_paths=True,
                                        override_num_blocks=min(blocks, len(todo)))
        ds = ds.map_batches(
            Scorer, fn_constructor_kwargs=dict(model=model, sha256=sha, threshold=threshold,
                                               batch_size=batch_size, threads=threads),
            compute=ray.data.ActorPoolStrategy(size=workers), batch_size=batch_size,
            batch_format="numpy", num_cpus=1, num_gpus=gpus_per_worker or None)
        seen: set[str] = set()
        busy: dict[str, list] = {}
        for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            cols = b.to_pydict()
            rows = [{k: cols[k][i] for k in (*ROW_FIELDS, "worker")} for i in range(b.num_rows)]
            rows = [r for r in rows if r["path"] not in seen]  # never twice, whatever Ray retries
            seen.update(r["path"] for r in rows)
            for w, s in zip(cols["worker"], cols["seconds"]):
                acc = busy.setdefault(w, [0, 0.0])
                acc[0] += 1
                acc[1] += s
            take(rows)
        # a file that vanished between listing and reading still gets its row
        lost = [failed_row(p, f"ImageDecodeError: {p}: no row came back from Ray (missing or "
                              "unreadable when read)", threshold, sha)
                for p in todo if escape_text(p) not in seen]
        if lost:
            take(lost)
        summary.per_worker = {w: (n, s) for w, (n, s) in busy.items()}
    finally:
        if owned:
            ray.shutdown()
