"""`nsnet detect` result files users can trust: rows on disk as they are reported (a SIGKILLed run
keeps them), --resume / --overwrite, lossless readable paths (non-UTF-8 names) and CSV formula
injection neutralised."""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest

from _sdk_util import build_stand_in_onnx, contract_metadata, textured, write_png
from nsnet_sdk.cli import main
from nsnet_sdk.results import DETECT_FIELDS, read_rows, unescape_text

BATCH = 4


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_stand_in_onnx(tmp_path_factory.mktemp("m") / "nsnet.onnx",
                               metadata=contract_metadata(threshold=0.5))


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory) -> tuple[Path, list[str]]:
    """300 versions of one 1024x768 JPEG, each with its own comment segment (distinct files, so
    none is answered as an identical copy of another): each takes a few ms to decode and select
    patches, so a run lasts long enough to be killed in the middle."""
    root = tmp_path_factory.mktemp("many")
    data = cv2.imencode(".jpg", textured(768, 1024, seed=5), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    paths = []
    for i in range(300):
        p = root / f"img{i:03d}.jpg"
        comment = f"copy {i}".encode()
        p.write_bytes(data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:])
        paths.append(str(p))
    return root, paths


def _start(model: Path, folder: Path, out_j: Path, out_c: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nsnet_sdk.cli", "detect", str(folder), "-m", str(model),
         "--jsonl", str(out_j), "--csv", str(out_c), "--batch-size", str(BATCH), "--workers", "1",
         *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "100"})


def _kill_after_reported(proc: subprocess.Popen, at_least: int, total: int,
                         sig: int = signal.SIGKILL) -> tuple[int, str]:
    """Send ``sig`` to ``proc`` once its progress bar reports ``at_least`` images; returns the
    highest count it reported and its stderr (read after it ended)."""
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stderr.read1(4096), b"")))
    reader.start()
    pattern = re.compile(rf"(\d+)/{total}\b")

    def reported() -> int:
        return max((int(n) for n in pattern.findall(b"".join(chunks).decode(errors="replace"))),
                   default=0)

    deadline = time.monotonic() + 120
    while reported() < at_least:
        assert proc.poll() is None, "the run ended before it could be killed: " + \
            b"".join(chunks).decode(errors="replace")[-2000:]
        assert time.monotonic() < deadline, "no progress reported"
        time.sleep(0.01)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    reader.join(timeout=30)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    return reported(), b"".join(chunks).decode(errors="replace")


def _check_complete(out_j: Path, out_c: Path, inputs: list[str]) -> tuple[list[str], list[str]]:
    """Both files hold only complete rows of known inputs; returns their sources."""
    text = out_j.read_text()
    assert text == "" or text.endswith("\n"), "a torn JSON Lines row"
    jrows = [json.loads(line) for line in text.splitlines()]
    assert all(tuple(r) == DETECT_FIELDS for r in jrows)
    ctext = out_c.read_text()
    assert ctext.startswith(",".join(DETECT_FIELDS) + "\n") and ctext.endswith("\n")
    with open(out_c, newline="") as f:
        crows = list(csv.DictReader(f))
    assert all(len(r) == len(DETECT_FIELDS) and None not in r.values() for r in crows)
    for rows in (jrows, crows):
        assert {r["source"] for r in rows} <= set(inputs)
    return [r["source"] for r in jrows], [r["source"] for r in crows]


def test_sigkilled_run_keeps_every_reported_row_and_resume_completes_it(model, big_folder, tmp_path):
    folder, inputs = big_folder
    out_j, out_c = tmp_path / "r.jsonl", tmp_path / "r.csv"
    proc = _start(model, folder, out_j, out_c)
    reported, _ = _kill_after_reported(proc, at_least=3 * BATCH, total=len(inputs))
    j_sources, c_sources = _check_complete(out_j, out_c, inputs)
    assert len(j_sources) >= reported and len(c_sources) >= reported, (reported, len(j_sources))
    assert len(j_sources) < len(inputs), "killed mid-run"
    assert j_sources == inputs[: len(j_sources)] and c_sources == inputs[: len(c_sources)]
    killed_j = out_j.read_bytes()

    # without --resume or --overwrite the earlier result is refused, untouched
    with pytest.raises(SystemExit) as e:
        main(["detect", str(folder), "-m", str(model), "--jsonl", str(out_j), "--csv", str(out_c)])
    assert e.value.code == 2
    assert out_j.read_bytes() == killed_j

    # --resume, itself killed once more, then run to the end: every input exactly once
    proc = _start(model, folder, out_j, out_c, "--resume")
    remaining = len(set(inputs) - (set(j_sources) & set(c_sources)))  # missing from either file
    _kill_after_reported(proc, at_least=2 * BATCH, total=remaining)
    assert out_j.read_bytes().startswith(killed_j)  # earlier rows are kept as they were
    _check_complete(out_j, out_c, inputs)
    r = subprocess.run([sys.executable, "-m", "nsnet_sdk.cli", "detect", str(folder), "-m",
                        str(model), "--jsonl", str(out_j), "--csv", str(out_c), "--resume"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "already in the results were not scored again" in r.stderr
    j_sources, c_sources = _check_complete(out_j, out_c, inputs)
    assert sorted(j_sources) == inputs and sorted(c_sources) == inputs


def test_ctrl_c_writes_the_rows_scored_so_far_and_exits_130(model, big_folder, tmp_path):
    folder, inputs = big_folder
    out_j, out_c = tmp_path / "r.jsonl", tmp_path / "r.csv"
    proc = _start(model, folder, out_j, out_c)
    reported, err = _kill_after_reported(proc, at_least=2 * BATCH, total=len(inputs),
                                         sig=signal.SIGINT)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted after" in err and "Traceback" not in err
    j_sources, c_sources = _check_complete(out_j, out_c, inputs)
    assert j_sources == c_sources and reported <= len(j_sources) < len(inputs)


def test_overwrite_replaces_and_the_default_refuses(model, tmp_path, capsys):
    img = str(write_png(tmp_path / "a.png", textured(64, 64)))
    out_j, out_c = tmp_path / "o.jsonl", tmp_path / "o.csv"
    out_j.write_text("stale line\n" * 50)
    out_c.write_text("stale,row\n" * 50)
    with pytest.raises(SystemExit) as e:
        main(["detect", img, "-m", str(model), "--jsonl", str(out_j), "--csv", str(out_c)])
    assert e.value.code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out_j.read_text() == "stale line\n" * 50 and out_c.read_text() == "stale,row\n" * 50
    for _ in range(2):
        assert main(["detect", img, "-m", str(model), "--jsonl", str(out_j), "--csv", str(out_c),
                     "-q", "--overwrite"]) == 0
        assert [r["source"] for r in read_rows(out_j)] == [img]
        assert [r["source"] for r in read_rows(out_c)] == [img]
    empty = tmp_path / "empty.jsonl"  # an empty file holds no result: nothing to protect
    empty.touch()
    assert main(["detect", img, "-m", str(model), "--jsonl", str(empty), "-q"]) == 0
    assert len(read_rows(empty)) == 1


def test_resume_cuts_a_torn_row_and_scores_that_input_again(model, tmp_path):
    imgs = [str(write_png(tmp_path / f"p{i}.png", textured(64, 64, seed=i))) for i in range(3)]
    out = tmp_path / "o.jsonl"
    assert main(["detect", *imgs[:2], "-m", str(model), "--jsonl", str(out), "-q"]) == 0
    lines = out.read_text().splitlines(keepends=True)
    out.write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # killed in the middle of row 2
    assert main(["detect", *imgs, "-m", str(model), "--jsonl", str(out), "-q", "--resume"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["source"] for r in rows] == imgs
    assert out.read_text().startswith(lines[0])


def test_resume_refuses_a_file_of_another_model_or_format(model, tmp_path, capsys):
    img = str(write_png(tmp_path / "a.png", textured(64, 64)))
    other = build_stand_in_onnx(tmp_path / "other.onnx", seed=1)
    out, out_c = tmp_path / "o.jsonl", tmp_path / "o.csv"
    assert main(["detect", img, "-m", str(other), "--jsonl", str(out), "-q"]) == 0
    before = out.read_bytes()
    with pytest.raises(SystemExit) as e:
        main(["detect", img, "-m", str(model), "--jsonl", str(out), "--resume"])
    assert e.value.code == 2 and "another model" in capsys.readouterr().err
    out_c.write_text("source,prob_fake\nx.png,0.5\n")  # an older column set
    with pytest.raises(SystemExit) as e:
        main(["detect", img, "-m", str(model), "--csv", str(out_c), "--resume"])
    assert e.value.code == 2 and "columns" in capsys.readouterr().err
    assert out.read_bytes() == before and out_c.read_text() == "source,prob_fake\nx.png,0.5\n"


@pytest.mark.parametrize("fmt", ["--jsonl", "--csv"])
@pytest.mark.parametrize("change", [["--threshold", "0.9"], ["--max-pixels", "5000"],
                                    ["--pipeline", "gpu", "--device", "cpu"]])
def test_resume_refuses_rows_scored_with_another_threshold_or_settings(model, tmp_path, capsys, fmt, change):
    imgs = [str(write_png(tmp_path / f"p{i}.png", textured(64, 64, seed=i))) for i in range(2)]
    out = tmp_path / ("o.csv" if fmt == "--csv" else "o.jsonl")
    assert main(["detect", imgs[0], "-m", str(model), fmt, str(out), "-q"]) == 0
    before = out.read_bytes()
    with pytest.raises(SystemExit) as e:
        main(["detect", *imgs, "-m", str(model), fmt, str(out), "-q", "--resume", *change])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "resume it with" in err and "--overwrite" in err
    assert ("threshold 0.5, not 0.9" in err) if change[0] == "--threshold" else ("settings" in err)
    assert out.read_bytes() == before  # nothing mixed in
    # The same options resume it; explicitly giving the model's own threshold is the same run.
    assert main(["detect", *imgs, "-m", str(model), fmt, str(out), "-q", "--resume",
                 "--threshold", "0.5"]) == 0
    assert [r["source"] for r in read_rows(out)] == imgs


def _number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


NASTY = ["bad\udcffname.jpg",              # bytes b"bad\xffname.jpg": not UTF-8
         "=cmd|' -C calc'!A0.png",         # formula injection, OWASP's example
         "@SUM(1+1).png", "+1.png", "-2.png", "'quoted.png",
         "back\\slash.png", "new\nline.png", "tab\tin.png", "café ü.png"]


def test_odd_names_are_written_losslessly_readably_and_safely(model, tmp_path, monkeypatch):
    folder = tmp_path / "odd"
    folder.mkdir()
    data = cv2.imencode(".png", textured(64, 64))[1].tobytes()
    for name in NASTY:
        with open(os.path.join(os.fsencode(folder), os.fsencode(name)), "wb") as f:
            f.write(data)
    out_j, out_c = tmp_path / "o.jsonl", tmp_path / "o.csv"
    assert main(["detect", str(folder), "-m", str(model), "--jsonl", str(out_j), "--csv",
                 str(out_c), "-q"]) == 0
    expected = sorted(os.path.join(str(folder), n) for n in NASTY)
    for out in (out_j, out_c):
        raw = out.read_bytes()
        raw.decode("utf-8")  # strictly UTF-8, whatever the names
        rows = read_rows(out)
        assert sorted(r["source"] for r in rows) == expected
        assert all(r["error"] in (None, "") for r in rows)
        for r in rows:  # the source opens the very file
            with open(r["source"], "rb") as f:
                assert f.read() == data
    # readable: the undecodable byte is \xff, ASCII names are written as they are
    jsources = [json.loads(x)["source"] for x in out_j.read_text().splitlines()]
    assert os.path.join(str(folder), "bad\\xffname.jpg") in jsources
    assert os.path.join(str(folder), "café ü.png") in jsources
    assert os.path.join(str(folder), "new\\x0aline.png") in jsources
    assert all(unescape_text(s) in expected for s in jsources)
    # CSV: no text cell starts with a formula character (numbers such as a negative logit are
    # numbers to a spreadsheet); nor does a relative name given as is
    with open(out_c, newline="", encoding="utf-8") as f:
        cells = [c for row in csv.reader(f) for c in row]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r") and not _number(c)]
    assert any(_number(c) and c.startswith("-") for c in cells)  # the rule did meet numbers
    monkeypatch.chdir(folder)
    rel = ["=cmd|' -C calc'!A0.png", "@SUM(1+1).png", "-2.png", "'quoted.png"]
    rc = main(["detect", "-m", str(model), "--csv", str(tmp_path / "rel.csv"), "-q", "--", *rel])
    assert rc == 0
    with open(tmp_path / "rel.csv", newline="", encoding="utf-8") as f:
        got = [row["source"] for row in csv.DictReader(f)]
    assert got == ["'" + n for n in rel]
    assert [r["source"] for r in read_rows(tmp_path / "rel.csv")] == rel
