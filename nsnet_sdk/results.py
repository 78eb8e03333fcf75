"""Result files: the row fields of `nsnet detect`, CSV and JSON Lines writers that escape every
text cell and write whole rows per batch, and reading an existing file back for ``--resume``.

Escaping (the same in both formats, so a CSV and a JSONL of one run hold identical text):

- every text cell (``source``, ``error``, ``warnings``, ``verdict``) is the text with each byte of
  a file name that is not valid UTF-8 written ``\\xNN`` (two lowercase hex digits), each ASCII
  control character (newline, tab, …) written ``\\xNN`` too, the other control and line-break
  characters (U+0080–U+009F, U+2028, U+2029) and any other lone surrogate ``\\uXXXX``, and a
  backslash written ``\\\\``. `unescape_text` reverses it exactly: ``unescape_text(cell)``
  is the string `os.fsdecode` gave for the path, so ``open(unescape_text(row["source"]), "rb")``
  opens the file. Names made of printable UTF-8 without backslashes are written unchanged.
- CSV only: a text cell that starts with ``=``, ``+``, ``-``, ``@``, tab or carriage return
  (OWASP's rule against formula injection), or with ``'``, gets one leading ``'``; `read_rows`
  removes it. Numbers (``prob_fake``, ``logit``, ``threshold``) are written as numbers.

Files are UTF-8; a CSV starts with its header. Rows reach the file (one ``write`` per batch of
whole rows, then flushed) as they are scored, so a run killed at any moment leaves only complete
rows, except at worst one torn last line, which `read_rows` ignores and `ResultWriter` cuts off
before it appends.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Sequence


CSV = "csv"
JSONL = "jsonl"
FORMATS = (CSV, JSONL)

FIELDS = ("source", "prob_fake", "is_fake", "logit", "error", "warnings", "verdict", "threshold",
          "model_sha256")
"""Columns of a result row, in file order. ``warnings`` is a list in JSONL and the entries
joined with ``"; "`` in CSV; ``verdict`` may be empty (None)."""
SETTINGS = "settings"
"""`nsnet detect`'s extra column: the options beside model and threshold that change a row's
values (pixel limit, pipeline, engine, precision), compared on ``--resume``."""
CACHED = "cached"
"""`nsnet detect`'s column saying the row was not computed for this file but reused: from an
identical file earlier in the run, or from ``--cache`` (same model and options)."""
DETECT_FIELDS = FIELDS + (SETTINGS, CACHED)
"""Columns of `nsnet detect`'s files (before any ``--provenance`` columns)."""

WARNING_SEP = "; "
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
_ESCAPE_RE = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_UNESCAPE_RE = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4})")


class ResultFileError(ValueError):
    """An existing result file cannot be resumed (other format or columns, another model)."""


# -- text cells -------------------------------------------------------------------------------

def _escape_char(m: re.Match) -> str:
    c = m.group()
    if c == "\\":
        return "\\\\"
    o = ord(c)
    if o < 0x80:
        return f"\\x{o:02x}"
    if 0xDC80 <= o <= 0xDCFF:  # os.fsdecode's surrogateescape form of the raw byte o - 0xDC00
        return f"\\x{o - 0xDC00:02x}"
    return f"\\u{o:04x}"


def _unescape_seq(m: re.Match) -> str:
    s = m.group(1)
    if s == "\\":
        return "\\"
    v = int(s[1:], 16)
    if s[0] == "x":
        return chr(v) if v < 0x80 else chr(0xDC00 + v)
    return chr(v)


def escape_text(text: str) -> str:
    """Printable, UTF-8-encodable text that `unescape_text` turns back into ``text`` exactly."""
    return _ESCAPE_RE.sub(_escape_char, text)


def unescape_text(cell: str) -> str:
    """The original text of an escaped cell (for a ``source``: the path, as `os.fsdecode` gives it)."""
    return _UNESCAPE_RE.sub(_unescape_seq, cell)


def csv_cell(text: str) -> str:
    """An escaped text cell made safe for spreadsheets (OWASP: a leading ``'`` before ``= + - @``,
    tab, CR, and before ``'`` itself so the rule is reversible)."""
    text = escape_text(text)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _csv_uncell(cell: str) -> str:
    return unescape_text(cell[1:] if cell.startswith("'") else cell)


# -- rows -------------------------------------------------------------------------------------

def result_row(pred: Any, *, threshold: float, model_sha256: str) -> dict[str, Any]:
    """The row of one `Prediction` (JSON-ready values, text not yet escaped)."""
    return {
        "source": pred.source, "prob_fake": pred.prob_fake, "is_fake": pred.is_fake,
        "logit": pred.logit, "error": pred.error, "warnings": list(pred.warnings),
        "verdict": pred.verdict, "threshold": float(threshold), "model_sha256": model_sha256,
    }


def _escaped(value: Any) -> Any:
    if isinstance(value, str):
        return escape_text(value)
    if isinstance(value, (list, tuple)):
        return [_escaped(v) for v in value]
    if isinstance(value, dict):  # e.g. a provenance record added as an extra column
        return {escape_text(str(k)): _escaped(v) for k, v in value.items()}
    return value


def format_jsonl(row: dict[str, Any], fields: Sequence[str] = FIELDS) -> str:
    """One JSON Lines record (with its newline) of ``row``'s ``fields``, text escaped (also inside
    lists and dicts, so an extra column such as ``fields=FIELDS + ("provenance",)`` works)."""
    rec = {k: _escaped(row.get(k)) for k in fields}
    return json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n"


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return csv_cell(value)
    if isinstance(value, (list, tuple)):
        return csv_cell(WARNING_SEP.join(str(v) for v in value)) if value else ""
    if isinstance(value, dict):  # an extra column holding a record: one JSON text cell
        return csv_cell(json.dumps(value, ensure_ascii=False, default=str))
    if isinstance(value, float):
        return repr(value)
    return str(value)


def format_csv(rows: Iterable[dict[str, Any]], fields: Sequence[str] = FIELDS,
               header: bool = False) -> str:
    """CSV text of ``rows`` (and the header first when asked), cells escaped."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(fields)
    for row in rows:
        w.writerow([_csv_value(row.get(k)) for k in fields])
    return buf.getvalue()


def detect_format(path: str | os.PathLike) -> str:
    """``"csv"`` for a ``.csv`` name, else ``"jsonl"``."""
    return CSV if str(path).lower().endswith(".csv") else JSONL


# -- reading back ------------------------------------------------------------------------------

def _complete_lines(data: bytes) -> list[str]:
    end = data.rfind(b"\n")  # a torn last line (killed mid-write) is not a row
    if end < 0:
        return []
    # split on "\n" alone: str.splitlines would also break at U+0085 and friends inside a cell
    return data[:end].decode("utf-8", errors="replace").split("\n")


def read_rows(path: str | os.PathLike, fmt: str | None = None) -> list[dict[str, Any]]:
    """Every complete row of a result file, text unescaped (``source`` is the path again).

    CSV cells come back as strings except ``warnings`` (a list); JSONL values as written.
    Raises `ResultFileError` when the file is not a result file of that format.
    """
    return _parse_rows(Path(path).read_bytes(), fmt or detect_format(path), str(path))


def _parse_rows(data: bytes, fmt: str, path: str) -> list[dict[str, Any]]:
    lines = _complete_lines(data)
    if fmt == JSONL:
        rows = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ResultFileError(f"{path}:{n}: not a JSON Lines result file ({e})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("source"), str):
                raise ResultFileError(f"{path}:{n}: a row without a 'source' text field")
            rows.append({k: unescape_value(v) for k, v in rec.items()})
        return rows
    if not lines:
        return []
    reader = csv.reader(lines)
    head = next(reader)
    if "source" not in head:
        raise ResultFileError(f"{path}: no 'source' column in the CSV header {head}")
    rows = []
    for n, cells in enumerate(reader, 2):
        if len(cells) != len(head):
            raise ResultFileError(f"{path}:{n}: {len(cells)} cells under {len(head)} columns")
        row = {k: _csv_uncell(v) for k, v in zip(head, cells)}
        if "warnings" in row:
            row["warnings"] = row["warnings"].split(WARNING_SEP) if row["warnings"] else []
        rows.append(row)
    return rows


def unescape_value(value: Any) -> Any:
    """A row value with every text cell (in lists and dicts too) unescaped."""
    if isinstance(value, str):
        return unescape_text(value)
    if isinstance(value, list):
        return [unescape_value(v) for v in value]
    if isinstance(value, dict):
        return {unescape_text(k): unescape_value(v) for k, v in value.items()}
    return value


# -- writing ----------------------------------------------------------------------------------

class ResultWriter:
    """Writes result rows to one file (or stdout, ``"-"``) in one format.

    Opening checks and reads what it must but changes nothing; `begin` (called once the run can
    start) empties the file for ``mode="overwrite"``, cuts a torn last line off for ``"resume"``
    and writes a CSV header when the file has none. Rows are queued with `add` and written by
    `flush` in one ``write`` of whole rows, handed to the OS at once: call it once per batch.
    ``mode``: ``"new"`` (the file must not hold results yet), ``"overwrite"``, or
    ``"resume"`` (append; `done` holds the sources already present, `model_sha256s` the models
    they came from, `thresholds` and `settings` those they were scored with). Files that are not regular (a FIFO, ``/dev/stdout``) are written as they are.

    Raises (when opening): `ResultFileError` for a file that cannot be resumed (or, with
    ``"new"``, one that holds results), `OSError` when the file cannot be opened for writing.
    """

    def __init__(self, spec: str, fmt: str, *, mode: str = "new",
                 fields: Sequence[str] = FIELDS) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
        if mode not in ("new", "overwrite", "resume"):
            raise ValueError(f"mode must be new, overwrite or resume, got {mode!r}")
        self.spec, self.fmt, self.mode, self.fields = spec, fmt, mode, tuple(fields)
        self.done: set[str] = set()
        self.model_sha256s: set[str] = set()
        self.thresholds: set[float] = set()
        self.settings: set[str] = set()
        self._pending: list[dict[str, Any]] = []
        self._raw: BinaryIO | None = None
        self._header_due = fmt == CSV
        self._keep: int | None = None  # resume: bytes of complete rows to keep
        if spec == "-":
            return
        if mode == "new" and holds_result(spec):
            raise ResultFileError(f"{spec} already holds results (mode 'resume' adds to it, "
                                  "'overwrite' replaces it)")
        if mode == "resume" and holds_result(spec):
            self._read_existing()
        self._raw = open(spec, "ab", buffering=0)  # appending: opening alone truncates nothing

    def _read_existing(self) -> None:
        data = Path(self.spec).read_bytes()
        if self.fmt == CSV:
            head = next(csv.reader(_complete_lines(data)[:1]), None)
            if head is not None and tuple(head) != self.fields:
                raise ResultFileError(
                    f"{self.spec}: its columns {','.join(head)} differ from this run's "
                    f"{','.join(self.fields)}; cannot resume into it")
            self._header_due = head is None
        rows = _parse_rows(data, self.fmt, self.spec)
        self.done = {r["source"] for r in rows}
        self.model_sha256s = {r.get("model_sha256") for r in rows} - {None, ""}
        self.settings = {r.get(SETTINGS) for r in rows} - {None, ""}
        try:
            self.thresholds = {float(r["threshold"]) for r in rows if r.get("threshold") not in (None, "")}
        except (TypeError, ValueError) as e:
            raise ResultFileError(f"{self.spec}: a threshold cell is not a number ({e}); cannot "
                                  "resume into it") from None
        self._keep = data.rfind(b"\n") + 1

    def begin(self) -> None:
        """Make the file ready for this run's rows (see the class docstring)."""
        if self._raw is not None and os.path.isfile(self.spec):
            size = os.path.getsize(self.spec)
            if self.mode == "overwrite" or (self._keep is not None and self._keep < size):
                self._raw.truncate(self._keep or 0)  # a torn last row is scored again
        self.flush()

    def add(self, row: dict[str, Any]) -> None:
        """Queue one row (from `result_row`) for the next `flush`."""
        self._pending.append(row)

    def flush(self) -> None:
        """Write the queued rows (after the header, if still due) as one piece."""
        if not self._pending and not self._header_due:
            return
        if self.fmt == CSV:
            text = format_csv(self._pending, self.fields, header=self._header_due)
        else:
            text = "".join(format_jsonl(r, self.fields) for r in self._pending)
        self._header_due = False
        self._pending.clear()
        if self._raw is None:
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        data = memoryview(text.encode("utf-8"))
        while data:  # a regular file takes it in one write; a pipe may take less
            data = data[self._raw.write(data):]

    def close(self) -> None:
        """Write what is queued and close the file (stdout stays open)."""
        try:
            self.flush()
        finally:
            if self._raw is not None:
                self._raw.close()
                self._raw = None


def holds_result(spec: str) -> bool:
    """True when ``spec`` is a non-empty regular file (writing a new result there would lose it)."""
    return spec != "-" and os.path.isfile(spec) and os.path.getsize(spec) > 0



INFLIGHT = ".inflight"


class InflightJournal:
    """``<result file>.inflight``: the inputs being decoded in this process, so that a run killed by
    a native decoder crash (a segfault or abort in a codec library: no row, no exception says which
    input did it) can be resumed without decoding the killer in-process again.

    `record` (write + fsync, before each chunk of inputs is decoded) and `clear` (when the run has
    scored every input) keep it naming only the last chunk of a run that stopped; `left_over` is what
    ``--resume`` scores with every input decoded in a worker process of its own. One fsync per chunk
    of up to 512 inputs: under a microsecond per input (docs/guide.md). Result files that are not
    regular files (stdout, a FIFO) have no journal: such a run cannot be resumed anyway.
    """

    def __init__(self, specs: Sequence[str]) -> None:
        self.paths = [s + INFLIGHT for s in specs if s != "-" and os.path.isfile(s)]

    def left_over(self) -> set[str]:
        """The names a run that stopped early had in flight (empty after a completed run). A torn or foreign
        line is ignored: at worst an input is decoded again in-process, never skipped unscored."""
        names: set[str] = set()
        for path in self.paths:
            try:
                with open(path, "rb") as f:
                    lines = f.read().splitlines()
            except OSError:  # none: the last run ended normally, or never started
                continue
            for line in lines:
                try:
                    name = json.loads(line)
                except ValueError:
                    continue
                if isinstance(name, str):
                    names.add(name)
        return names

    def record(self, names: Iterable[str]) -> None:
        """Replace the journal with ``names``, on disk before the first of them is decoded. One JSON
        string per line (ASCII): a name may hold a newline or bytes that are not UTF-8."""
        text = "".join(json.dumps(n) + "\n" for n in names).encode("ascii")
        for path in self.paths:
            with open(path, "wb") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())

    def clear(self) -> None:
        """The run has scored every input (an interrupted or failed run keeps its journal: the next
        ``--resume`` decodes the inputs it names in worker processes, which costs only time)."""
        for path in self.paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
