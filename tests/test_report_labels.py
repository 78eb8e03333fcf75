"""Reviewer labels in the report page, in headless Chromium: rows labelled by button, key and note
survive a reload, the exported labels.jsonl holds exactly what was clicked (with each file's
sha256), "next unreviewed" and export work over 100,000 rows; and labels.jsonl read back."""
from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime

import numpy as np
import pytest

from _browser import browser  # noqa: F401  (the fixture)
from _sdk_util import textured, write_png

from nsnet_sdk.labels import KEYS, LabelFileError, check_model, read_labels, split_scores
from nsnet_sdk.report import build_report, normalise_row

MODEL = "ab" * 32
ROWS = "document.querySelectorAll('#rows tbody tr')"
SMALL = ("image is 10x10 pixels, smaller than one 32x32 patch: its few pixels are repeated to fill "
         "the model input, so the score says little")


@pytest.fixture()
def report(tmp_path):
    """Five scored files (prob_fake 0.9 … 0.1: the table's default order), one of them too small
    to say much, one row whose file is gone, and one error row."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rows = []
    for i, p in enumerate((0.9, 0.7, 0.5, 0.3, 0.1)):
        f = imgs / f"f{i}.png"
        write_png(f, textured(40 + i, 50, seed=i))
        rows.append({"source": str(f), "prob_fake": p, "verdict": "uncertain" if p == 0.5 else None,
                     "is_fake": p > 0.5, "model_sha256": MODEL, "threshold": 0.5,
                     "warnings": [SMALL] if p == 0.3 else []})
    rows.append({"source": str(imgs / "gone.png"), "prob_fake": 0.05, "model_sha256": MODEL})
    rows.append({"source": str(imgs / "bad.png"), "error": "ImageDecodeError: truncated", "model_sha256": MODEL})
    out = build_report([normalise_row(r) for r in rows], tmp_path / "r.html", top=0)
    return out, imgs


def _src(i: int) -> str:
    return f"{ROWS}[{i}].children[0].textContent"


def test_labels_survive_reload_and_export_what_was_clicked(report, browser, tmp_path):  # noqa: F811
    out, imgs = report
    browser.open(out)
    browser.js("localStorage.clear()")
    browser.open(out)
    assert browser.js(f"{ROWS}.length") == 7
    assert browser.js(_src(0)).endswith("f0.png")
    # Row 0 by its button, row 1 by keyboard (move down, press a), row 2 skipped with a note.
    browser.js(f"{ROWS}[0].querySelector('button[data-l=\"0\"]').click()")
    browser.key("j")
    browser.key("a")  # labels row 1 and moves the cursor to row 2
    browser.js(f"const n = {ROWS}[2].querySelector('input'); n.value = 'blurry <b>'; "
               "n.dispatchEvent(new Event('change', {bubbles: true}))")
    # The too-small image can be skipped but not called real or ai-generated.
    assert browser.js(f"{ROWS}[3].querySelector('button[data-l=\"0\"]').disabled") is True
    browser.key("n")  # next unreviewed after row 2: row 3
    assert browser.js("nsnetReport.cursorRow()") == 3
    browser.key("r")  # refused on the low-information row: no label, the cursor stays
    assert browser.js("nsnetReport.cursorRow()") == 3
    browser.key("n")
    assert browser.js("nsnetReport.cursorRow()") == 4
    assert browser.js("document.getElementById('reviewed').textContent") == "3 of 7 rows labelled"

    browser.open(out)  # reload: the labels are still there
    assert browser.js("document.getElementById('reviewed').textContent") == "3 of 7 rows labelled"
    on = browser.js(f"Array.from({ROWS}).map(tr => {{ const b = tr.querySelector('button.on'); "
                    "return b ? b.textContent : ''; })")
    assert on == ["real", "ai-generated", "skip", "", "", "", ""]
    assert browser.js(f"{ROWS}[2].querySelector('input').value") == "blurry <b>"
    # The review filter shows what is left to do.
    browser.js("const s = document.getElementById('review'); s.value = 'unreviewed'; s.dispatchEvent(new Event('change'))")
    assert browser.js(f"{ROWS}.length") == 4

    (tmp_path / "dl").mkdir()
    saved = browser.download(tmp_path / "dl", "document.getElementById('export').click()", "labels.jsonl")
    recs = [json.loads(line) for line in saved.read_text(encoding="utf-8").splitlines()]
    assert [tuple(r) for r in recs] == [KEYS] * 3
    assert [(r["label"], r["note"], r["prob_fake"]) for r in recs] == [
        ("real", "", 0.9), ("ai-generated", "", 0.7), ("skip", "blurry <b>", 0.5)]
    for i, r in enumerate(recs):
        f = imgs / f"f{i}.png"
        assert r["source"] == str(f) and r["model_sha256"] == MODEL
        assert r["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
        datetime.fromisoformat(r["time"].replace("Z", "+00:00"))
    # The file reads back as labels: real 0.9, ai-generated 0.7, the skip left out.
    labels = read_labels([saved])
    check_model(labels, MODEL)
    assert split_scores(labels) == ([0.9], [0.7], {"skip": 1, "no_score": 0})
    assert browser.errors == []


def test_hundred_thousand_rows_label_next_and_export(browser, hundred_thousand_report):  # noqa: F811
    # The session's page (tests/conftest.py), shared with test_report.py; labels live in this browser only.
    probs, out = hundred_thousand_report["probs"], hundred_thousand_report["page"]
    browser.open(out)
    browser.js("localStorage.clear()")
    browser.open(out)
    # Label the first 50 rows of the default order (highest scores) by key; "n" then lands on row 50.
    for _ in range(50):
        browser.key("s")
    browser.js("document.getElementById('prev').click()")  # back to page 1, cursor on row 0
    t0 = time.perf_counter()
    browser.key("n")
    t_next = time.perf_counter() - t0
    order = np.argsort(-probs, kind="stable")
    assert browser.js("nsnetReport.cursorRow()") == int(order[50])
    t0 = time.perf_counter()
    text = browser.js("nsnetReport.exportText()")
    t_export = time.perf_counter() - t0
    recs = [json.loads(line) for line in text.splitlines()]
    assert sorted(r["source"] for r in recs) == sorted(f"/data/review/image_{i:06d}.jpg" for i in order[:50])
    assert all(r["label"] == "skip" for r in recs)
    print(f"\n100,000 rows: next unreviewed {t_next * 1e3:.1f} ms, export of 50 labels {t_export * 1e3:.1f} ms "
          "(DevTools round trip included)")
    assert browser.errors == []


def test_labels_file_is_validated(tmp_path):
    good = {"source": "a.png", "sha256": "cd" * 32, "model_sha256": MODEL, "prob_fake": 0.4, "label": "real",
            "note": "", "time": "2026-01-02T03:04:05.000Z"}
    f = tmp_path / "l.jsonl"
    f.write_text(json.dumps(good) + "\n" + json.dumps(dict(good, label="ai-generated", time="2026-01-03T00:00:00Z"))
                 + "\n")
    [lab] = read_labels([f])  # the same file twice: the later label wins
    assert lab.label == "ai-generated"
    with pytest.raises(LabelFileError, match="another model"):
        check_model([lab], "ef" * 32)
    for bad, msg in ((dict(good, label="fake"), "field label"), (dict(good, prob_fake=1.5), "field prob_fake"),
                     ({k: v for k, v in good.items() if k != "note"}, "missing"), (dict(good, extra=1), "unknown"),
                     (dict(good, sha256="XYZ"), "field sha256")):
        f.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(LabelFileError, match=rf"l.jsonl:2: .*{msg}"):
            read_labels([f])
