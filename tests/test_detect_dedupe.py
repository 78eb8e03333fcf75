"""`nsnet detect` scores each distinct file once: identical files within a run are decoded once
and every input still gets its own row; with --cache, a later run answers from the SQLite cache
without decoding, and never for another threshold or model."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from _sdk_util import build_stand_in_onnx, textured, write_png
from nsnet_sdk.cli import main
from nsnet_sdk.pipeline import executors
from nsnet_sdk.results import read_rows


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_stand_in_onnx(tmp_path_factory.mktemp("m") / "m.onnx")


@pytest.fixture()
def folder(tmp_path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    write_png(d / "a.png", textured(64, 80, 1))
    shutil.copy(d / "a.png", d / "a-copy.png")
    shutil.copy(d / "a.png", d / "a-again.png")
    write_png(d / "b.png", textured(70, 50, 2))
    (d / "bad.png").write_bytes(b"not an image")
    (d / "bad-copy.png").write_bytes(b"not an image")
    return d


@pytest.fixture()
def decodes(monkeypatch) -> list[str]:
    """The names the executors decode (a spy around the real decoder; nothing is replaced)."""
    seen: list[str] = []
    real = executors.decode_image

    def spy(src, max_pixels, *, name=None, rgb=True):
        seen.append(name)
        return real(src, max_pixels, name=name, rgb=rgb)

    monkeypatch.setattr(executors, "decode_image", spy)
    return seen


def _detect(model: Path, folder: Path, out: Path, *extra: str) -> dict[str, dict]:
    assert main(["detect", str(folder), "-m", str(model), "-q", "--workers", "0", "--jsonl", str(out),
                 "--overwrite", *extra]) == 0
    return {Path(r["source"]).name: r for r in read_rows(out)}


def test_identical_files_are_decoded_once_and_each_gets_its_row(model, folder, decodes, tmp_path):
    rows = _detect(model, folder, tmp_path / "r.jsonl")
    assert sorted(rows) == sorted(p.name for p in folder.iterdir())
    assert len(decodes) == 3  # a, b and one of the two identical bad files
    copies = ("a.png", "a-copy.png", "a-again.png")
    assert sorted(rows[name]["cached"] for name in copies) == [False, True, True]  # one scored
    for name in copies:
        assert rows[name]["logit"] == rows["a.png"]["logit"] and rows[name]["error"] is None
    # An identical bad file: the same error, naming its own path.
    for name in ("bad.png", "bad-copy.png"):
        assert rows[name]["prob_fake"] is None and str(folder / name) in rows[name]["error"]
    assert rows["b.png"]["cached"] is False


def test_a_cache_answers_a_later_run_without_decoding_only_for_the_same_options(model, folder, decodes,
                                                                                tmp_path):
    cache = tmp_path / "cache.sqlite"
    first = _detect(model, folder, tmp_path / "1.jsonl", "--cache", str(cache))
    decodes.clear()
    second = _detect(model, folder, tmp_path / "2.jsonl", "--cache", str(cache))
    assert decodes == []  # every file answered from the cache
    for name, row in second.items():
        assert row["cached"] is True
        assert {k: row[k] for k in ("prob_fake", "logit", "is_fake")} == \
            {k: first[name][k] for k in ("prob_fake", "logit", "is_fake")}
    other = _detect(model, folder, tmp_path / "3.jsonl", "--cache", str(cache), "--threshold", "0.3")
    # Another threshold: the cache does not answer; only the in-run duplicates are reused.
    assert len(decodes) == 3 and sum(r["cached"] for r in other.values()) == 3
    assert all(r["threshold"] == 0.3 for r in other.values())


def test_a_corrupt_cache_is_reported_and_rebuilt(model, folder, tmp_path, capsys):
    cache = tmp_path / "cache.sqlite"
    cache.write_bytes(b"this is not a database" * 100)
    rows = _detect(model, folder, tmp_path / "r.jsonl", "--cache", str(cache))
    assert "not a usable result cache" in capsys.readouterr().err
    assert len(rows) == 6 and rows["b.png"]["cached"] is False


def test_a_reused_error_names_its_own_input_and_nothing_else_changes(model, tmp_path, monkeypatch):
    """Two identical unreadable files named with short names that occur inside the message: the
    second's error is the first's with only the input's name changed."""
    from nsnet_sdk import Detector, InputOptions
    from nsnet_sdk.cache import score_once

    monkeypatch.chdir(tmp_path)
    for name in ("e", "x"):
        Path(name).write_bytes(b"not an image")
    with Detector(model, options=InputOptions(workers=0)) as det:
        (first, reused_first), (second, reused_second) = score_once(det, ["e", "x"])
    assert (reused_first, reused_second) == (False, True)
    assert first.error.startswith("ImageDecodeError: e: not a recognised image")
    assert second.error == "ImageDecodeError: x" + first.error[len("ImageDecodeError: e"):]
