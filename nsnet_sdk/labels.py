"""Reviewer labels: the ``labels.jsonl`` a review report exports, read back for calibration and
evaluation without scoring anything again.

One JSON object per line with exactly the keys `KEYS`: ``source`` (the results file's text cell
of the path), ``sha256`` (of the file, hex; null when the report could not read it),
``model_sha256`` (the model that scored it), ``prob_fake``, ``label`` (one of `LABELS`), ``note``
and ``time`` (ISO 8601, when the label was set). Files written by other tools are validated line
by line; a bad line is refused with its line number and field.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterable, Sequence

LABELS = ("real", "ai-generated", "skip")
KEYS = ("source", "sha256", "model_sha256", "prob_fake", "label", "note", "time")
MAX_LINE = 1 << 20  # one label is a few hundred bytes; a longer line is not a labels file
_HEX64 = re.compile(r"[0-9a-f]{64}")


class LabelFileError(ValueError):
    """A labels file that cannot be used: unreadable, a malformed line, or another model's labels."""


@dataclass(frozen=True)
class Label:
    """One reviewed row."""

    source: str
    sha256: str | None
    model_sha256: str | None
    prob_fake: float | None
    label: str
    note: str
    time: str

    @property
    def key(self) -> str:
        """What identifies the reviewed file: its sha256, else its name."""
        return self.sha256 or f"source:{self.source}"


def _check(rec: object, where: str) -> Label:
    if not isinstance(rec, dict):
        raise LabelFileError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if set(rec) != set(KEYS):
        missing, extra = sorted(set(KEYS) - set(rec)), sorted(set(rec) - set(KEYS))
        raise LabelFileError(f"{where}: keys must be exactly {', '.join(KEYS)}"
                             + (f"; missing {missing}" if missing else "") + (f"; unknown {extra}" if extra else ""))
    for k in ("source", "note", "time"):
        if not isinstance(rec[k], str):
            raise LabelFileError(f"{where}: field {k}: expected a string, got {rec[k]!r}")
    for k in ("sha256", "model_sha256"):
        if rec[k] is not None and not (isinstance(rec[k], str) and _HEX64.fullmatch(rec[k])):
            raise LabelFileError(f"{where}: field {k}: expected 64 lowercase hex digits or null, got {rec[k]!r}")
    p = rec["prob_fake"]
    if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p)
                          or not 0.0 <= p <= 1.0):
        raise LabelFileError(f"{where}: field prob_fake: expected a probability in [0, 1] or null, got {p!r}")
    if rec["label"] not in LABELS:
        raise LabelFileError(f"{where}: field label: expected one of {', '.join(LABELS)}, got {rec['label']!r}")
    return Label(rec["source"], rec["sha256"], rec["model_sha256"], None if p is None else float(p),
                 rec["label"], rec["note"], rec["time"])


def read_labels(paths: Iterable[str | Path]) -> list[Label]:
    """Labels of one or more ``labels.jsonl`` files; when a file is labelled more than once (two
    exports, two reviewers) the most recent label (``time``) wins. Raises `LabelFileError`."""
    by_key: dict[str, Label] = {}
    for path in map(Path, paths):
        try:
            with open(path, "rb") as f:
                for n, raw in enumerate(iter(lambda: f.readline(MAX_LINE + 1), b""), 1):
                    where = f"{path}:{n}"
                    if len(raw) > MAX_LINE:
                        raise LabelFileError(f"{where}: line longer than {MAX_LINE:,} bytes: not a labels file")
                    if not raw.strip():
                        continue
                    try:
                        lab = _check(json.loads(raw), where)
                    except (UnicodeDecodeError, json.JSONDecodeError) as e:
                        raise LabelFileError(f"{where}: not JSON: {e}") from None
                    old = by_key.get(lab.key)
                    if old is None or lab.time >= old.time:
                        by_key[lab.key] = lab
        except OSError as e:
            raise LabelFileError(f"{path}: cannot read: {e.strerror or e}") from None
    return list(by_key.values())


def model_identities(model: str | Path) -> set[str]:
    """The model sha256s whose scores ``model`` reproduces: its own file's, and the one its card's
    ``calibration`` record names (the model it was re-stamped from: metadata only, same weights)."""
    from .artifact import read_model_meta
    from .artifact import model_sha256

    ids = {model_sha256(model)}
    cal = read_model_meta(model).model_card.get("calibration")
    if isinstance(cal, dict) and isinstance(cal.get("model_sha256"), str):
        ids.add(cal["model_sha256"])
    return ids


def check_model(labels: Sequence[Label], model_sha256: str | Collection[str]) -> None:
    """Refuse labels whose scores came from another model (their ``prob_fake`` would not be this
    model's): `LabelFileError` naming the models found. ``model_sha256``: one sha256, or the set
    `model_identities` gives."""
    accepted = {model_sha256} if isinstance(model_sha256, str) else set(model_sha256)
    other = sorted({lab.model_sha256 or "not recorded" for lab in labels} - accepted)
    if other:
        raise LabelFileError(f"labels were scored by another model (sha256 {', '.join(other)}), not "
                             f"{' / '.join(sorted(accepted))}: score the files with this model, review that "
                             "report, and export its labels")


def split_scores(labels: Sequence[Label]) -> tuple[list[float], list[float], dict[str, int]]:
    """(real scores, ai-generated scores, counts of what was left out: ``skip`` labels and labels
    of rows without a score)."""
    real, fake = [], []
    left = {"skip": 0, "no_score": 0}
    for lab in labels:
        if lab.label == "skip":
            left["skip"] += 1
        elif lab.prob_fake is None:
            left["no_score"] += 1
        else:
            (real if lab.label == "real" else fake).append(lab.prob_fake)
    return real, fake, left
