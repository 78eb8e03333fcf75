"""nsnet_sdk.results: the escaping rule is reversible for every string, cells are UTF-8 and safe
in a spreadsheet, and rows written by `ResultWriter` read back as written, in both formats."""
from __future__ import annotations

import csv
import io
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nsnet_sdk.prediction import Prediction
from nsnet_sdk.results import (CSV, FIELDS, JSONL, ResultWriter, csv_cell, escape_text, read_rows,
                               result_row, unescape_text)

# any code point, lone surrogates included (what os.fsdecode gives for undecodable bytes)
ANY_TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=()))
FORMULA = ("=", "+", "-", "@", "\t", "\r")


@given(ANY_TEXT)
@settings(max_examples=500, deadline=None)
def test_escape_is_reversible_and_yields_clean_utf8(text):
    cell = escape_text(text)
    assert unescape_text(cell) == text
    cell.encode("utf-8")  # no surrogates left
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in cell)
    safe = csv_cell(text)
    assert not safe.startswith(FORMULA)
    assert unescape_text(safe[1:] if safe.startswith("'") else safe) == text


@given(st.binary(min_size=1, max_size=40))
@settings(max_examples=300, deadline=None)
def test_any_file_name_bytes_come_back_from_the_cell(raw):
    name = os.fsdecode(raw)
    assert os.fsencode(unescape_text(escape_text(name))) == raw


def test_escape_keeps_ordinary_names_and_writes_bytes_as_hex():
    for name in ["photos/IMG_0001.JPG", "café/ü ñ 東京.png", "a b (1).webp", "<bytes #3>"]:
        assert escape_text(name) == name
    assert escape_text(os.fsdecode(b"bad\xffname.jpg")) == "bad\\xffname.jpg"
    assert escape_text("a\\b") == "a\\\\b"
    assert escape_text("line\nbreak\ttab") == "line\\x0abreak\\x09tab"
    assert unescape_text("bad\\xffname.jpg").encode("utf-8", "surrogateescape") == b"bad\xffname.jpg"


@pytest.mark.parametrize("text,cell", [
    ("=1+1", "'=1+1"), ("+1", "'+1"), ("-1", "'-1"), ("@SUM(A1)", "'@SUM(A1)"),
    ("\tx", "\\x09x"), ("'q", "''q"), ("ok.png", "ok.png"), ("a=b", "a=b"),
])
def test_csv_cells_follow_owasp(text, cell):
    assert csv_cell(text) == cell


def _preds(sources):
    out = []
    for i, s in enumerate(sources):
        if i % 3 == 2:
            out.append(Prediction.failed(s, ValueError(f"{s}: broken; really")))
        else:
            out.append(Prediction(source=s, prob_fake=0.25 * (i % 4), is_fake=i % 2 == 0,
                                  logit=-1.5 + i, warnings=("w1; x", "w2") if i % 2 else ()))
    return out


@given(st.lists(ANY_TEXT.filter(bool), min_size=1, max_size=6))
@settings(max_examples=60, deadline=None)
def test_rows_read_back_as_written_in_both_formats(tmp_path_factory, sources):
    d = tmp_path_factory.mktemp("rows")
    for fmt in (CSV, JSONL):
        path = d / f"r.{fmt}"
        w = ResultWriter(str(path), fmt, mode="overwrite")
        w.begin()
        rows = [result_row(p, threshold=0.5, model_sha256="ab" * 32) for p in _preds(sources)]
        for r in rows:
            w.add(r)
        w.close()
        path.read_bytes().decode("utf-8")
        back = read_rows(path)
        assert [b["source"] for b in back] == sources
        assert [b["error"] or None for b in back] == [r["error"] for r in rows]
        if fmt == JSONL:
            assert back == rows


def test_csv_columns_and_values(tmp_path):
    path = tmp_path / "r.csv"
    w = ResultWriter(str(path), CSV, mode="new")
    w.begin()
    w.add(result_row(Prediction("a.png", 0.75, True, 1.0986, warnings=("small", "cut")),
                     threshold=0.5, model_sha256="f" * 64))
    w.add(result_row(Prediction.failed("b.png", ValueError("nope")), threshold=0.5,
                     model_sha256="f" * 64))
    w.close()
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert tuple(rows[0]) == FIELDS
    assert rows[0]["warnings"] == "small; cut" and rows[0]["is_fake"] == "True"
    assert float(rows[0]["logit"]) == 1.0986 and rows[0]["verdict"] == ""
    assert rows[1]["prob_fake"] == "" and rows[1]["error"] == "ValueError: nope"


def test_rows_reach_the_file_at_flush_in_one_piece(tmp_path):
    path = tmp_path / "r.jsonl"
    w = ResultWriter(str(path), JSONL, mode="new")
    w.begin()
    w.add(result_row(Prediction("a.png", 0.1, False, -2.2), threshold=0.5, model_sha256=""))
    assert path.read_bytes() == b""  # queued, not yet written
    w.flush()
    assert json.loads(path.read_text())["source"] == "a.png"  # on disk before close
    w.close()


def test_a_new_writer_refuses_a_file_that_holds_results_and_resume_reads_it(tmp_path):
    from nsnet_sdk.results import ResultFileError

    path = tmp_path / "r.jsonl"
    path.write_text('{"source": "a.png", "model_sha256": "x"}\n{"source": "b.p')
    with pytest.raises(ResultFileError, match="already holds results"):
        ResultWriter(str(path), JSONL, mode="new")
    w = ResultWriter(str(path), JSONL, mode="resume")
    assert w.done == {"a.png"} and w.model_sha256s == {"x"}
    assert path.read_text().endswith('"b.p')  # opening changes nothing
    w.begin()
    w.close()
    assert path.read_text() == '{"source": "a.png", "model_sha256": "x"}\n'


def test_an_extra_column_holding_a_record_is_escaped_in_jsonl_and_json_in_csv(tmp_path):
    fields = FIELDS + ("provenance",)
    row = result_row(Prediction("a.png", 0.5, True, 0.0), threshold=0.5, model_sha256="")
    row["provenance"] = {"generator": "=evil\udcff", "signed": False}
    for fmt in (JSONL, CSV):
        path = tmp_path / f"r.{fmt}"
        w = ResultWriter(str(path), fmt, fields=fields)
        w.begin()
        w.add(row)
        w.close()
        path.read_bytes().decode("utf-8")
        back = read_rows(path)[0]["provenance"]
        assert (back if fmt == JSONL else json.loads(back)) == row["provenance"]
        if fmt == CSV:
            assert '"{""generator"": ""=evil\\xff""' in path.read_text()
