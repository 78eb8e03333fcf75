"""`nsnet detect` / `nsnet info` end to end: rows counted against inputs, outputs, exit codes."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _sdk_util import build_stand_in_onnx, contract_metadata, textured, write_png
from nsnet_sdk import Detector
from nsnet_sdk.cli import main


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_stand_in_onnx(tmp_path_factory.mktemp("m") / "nsnet.onnx",
                               metadata=contract_metadata(threshold=0.5))


@pytest.fixture()
def tree(tmp_path) -> dict[str, list[Path]]:
    """images/: 3 pictures + 1 corrupt .jpg + notes.txt (not scanned) + sub/ with 2 pictures."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    top = [write_png(root / f"p{i}.png", textured(60 + 10 * i, 90, seed=i)) for i in range(3)]
    bad = root / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    (root / "notes.txt").write_text("not an image")
    sub = [write_png(root / "sub" / f"q{i}.png", textured(70, 70 + 5 * i, seed=10 + i)) for i in range(2)]
    return {"root": [root], "top": sorted(top + [bad]), "sub": sub, "bad": [bad]}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_detect_writes_one_row_per_input_in_json_and_csv(model, tree, tmp_path, capsys):
    root = tree["root"][0]
    missing = tmp_path / "missing.png"
    explicit_txt = root / "notes.txt"  # named explicitly: attempted (and fails) even if not an image
    out_j, out_c = tmp_path / "out.jsonl", tmp_path / "out.csv"
    rc = main(["detect", str(root), str(missing), str(explicit_txt), "--model", str(model),
               "--json", str(out_j), "--csv", str(out_c), "--batch-size", "2", "--workers", "2"])
    assert rc == 0
    expected_sources = [str(p) for p in tree["top"]] + [str(missing), str(explicit_txt)]
    rows = read_jsonl(out_j)
    assert [r["source"] for r in rows] == expected_sources
    assert all(set(r) == {"source", "prob_fake", "is_fake", "error"} for r in rows)
    with open(out_c, newline="") as f:
        crow = list(csv.DictReader(f))
    assert [r["source"] for r in crow] == expected_sources
    errors = {r["source"] for r in rows if r["error"]}
    assert errors == {str(tree["bad"][0]), str(missing), str(explicit_txt)}
    for r, c in zip(rows, crow):
        if r["error"]:
            assert r["prob_fake"] is None and c["prob_fake"] == "" and c["error"] == r["error"]
        else:
            assert float(c["prob_fake"]) == pytest.approx(r["prob_fake"], abs=1e-12)
            assert c["is_fake"] == str(r["is_fake"]) and r["is_fake"] == (r["prob_fake"] >= 0.5)
    scored = [r for r in rows if not r["error"]]
    ref = Detector(model, workers=0).predict([Path(r["source"]) for r in scored])
    np.testing.assert_allclose([r["prob_fake"] for r in scored], [p.prob_fake for p in ref], atol=1e-9)
    err = capsys.readouterr().err
    fake = sum(r["is_fake"] for r in scored)
    assert f"{len(rows)} inputs: {len(scored)} scored, {fake} fake, 3 errors" in err


def test_recursive_scans_subdirectories(model, tree, tmp_path):
    root = tree["root"][0]
    out = tmp_path / "r.jsonl"
    assert main(["detect", str(root), "-m", str(model), "--recursive", "--json", str(out), "-q"]) == 0
    got = [r["source"] for r in read_jsonl(out)]
    assert sorted(got) == sorted(str(p) for p in tree["top"] + tree["sub"])
    assert len(got) == 6


def test_threshold_override_and_stdout_default(model, tree, capsys):
    paths = [str(p) for p in tree["top"] if p.suffix == ".png"]
    assert main(["detect", *paths, "-m", str(model), "--threshold", "0", "-q"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3 and all(r["is_fake"] is True for r in rows)
    assert main(["detect", *paths, "-m", str(model), "--threshold", "1", "-q"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3 and all(r["is_fake"] is (r["prob_fake"] >= 1.0) for r in rows)


def test_empty_directory_completes_with_a_warning(model, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["detect", str(tmp_path / "empty"), "-m", str(model), "--json",
                 str(tmp_path / "o.jsonl")]) == 0
    assert (tmp_path / "o.jsonl").read_text() == ""
    assert "no image files" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["detect", "--model", "m.onnx"],                         # no PATH
    ["detect", "x.png"],                                     # no --model
    ["detect", "x.png", "-m", "M", "--batch-size", "0"],
    ["detect", "x.png", "-m", "M", "--batch-size", "many"],
    ["detect", "x.png", "-m", "M", "--threshold", "1.5"],
    ["detect", "x.png", "-m", "M", "--workers", "-1"],
    ["frobnicate"],
    [],
])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_unwritable_output_is_a_usage_error(model, tree, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["detect", str(tree["top"][0]), "-m", str(model),
              "--json", str(tmp_path / "no" / "such" / "dir" / "o.jsonl")])
    assert e.value.code == 2


def test_model_that_cannot_be_loaded_exits_1(tree, tmp_path, capsys):
    img = str(tree["top"][0])
    assert main(["detect", img, "-m", str(tmp_path / "missing.onnx")]) == 1
    assert "cannot load model" in capsys.readouterr().err
    (tmp_path / "junk.onnx").write_bytes(b"\x00" * 10)
    assert main(["detect", img, "-m", str(tmp_path / "junk.onnx")]) == 1
    assert main(["info", str(tmp_path / "missing.onnx")]) == 1
    earlier = tmp_path / "earlier.jsonl"  # a previous run's results survive a run that cannot start
    earlier.write_text('{"source": "old"}\n')
    assert main(["detect", img, "-m", str(tmp_path / "missing.onnx"), "--json", str(earlier)]) == 1
    assert earlier.read_text() == '{"source": "old"}\n'


def test_outputs_are_replaced_not_appended(model, tree, tmp_path):
    img = str(tree["top"][0])
    out_j, out_c = tmp_path / "o.jsonl", tmp_path / "o.csv"
    out_j.write_text("stale line\n" * 50)
    out_c.write_text("stale,row\n" * 50)
    for _ in range(2):
        assert main(["detect", img, "-m", str(model), "--json", str(out_j), "--csv", str(out_c),
                     "-q"]) == 0
        assert [r["source"] for r in read_jsonl(out_j)] == [img]
        with open(out_c, newline="") as f:
            assert [r["source"] for r in csv.DictReader(f)] == [img]


def test_backend_failure_mid_run_exits_1_and_keeps_the_rows_before_it(model, tree, tmp_path,
                                                                       capsys, monkeypatch):
    from nsnet_sdk import InferenceError
    from nsnet_sdk.backends.onnxruntime import OrtBackend

    real_run, calls = OrtBackend.run, []

    def failing_second_batch(self, images):
        calls.append(len(images))
        if len(calls) == 2:
            raise InferenceError("simulated device failure")
        return real_run(self, images)

    monkeypatch.setattr(OrtBackend, "run", failing_second_batch)
    paths = [str(p) for p in tree["top"] if p.suffix == ".png"]
    out = tmp_path / "o.jsonl"
    rc = main(["detect", *paths, "-m", str(model), "--batch-size", "2", "--json", str(out), "-q"])
    assert rc == 1
    assert [r["source"] for r in read_jsonl(out)] == paths[:2]
    err = capsys.readouterr().err
    assert "inference failed after 2 of 3 inputs" in err and "simulated device failure" in err
    assert "Traceback" not in err


def test_info_prints_metadata_and_backend(model, capsys):
    assert main(["info", str(model)]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "CPUExecutionProvider" in out and "nsnet.preprocess" in out
    assert main(["info", str(model), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backend"] == "onnxruntime" and info["threshold"] == 0.5
    assert info["metadata"] == contract_metadata(threshold=0.5)


def test_console_script_runs_with_progress_bar_on_stderr(model, tree, tmp_path):
    exe = Path(sys.executable).with_name("nsnet")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "nsnet_sdk.cli"]
    out = tmp_path / "o.jsonl"
    r = subprocess.run([*cmd, "detect", str(tree["root"][0]), "--model", str(model), "--json", str(out)],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "100"})
    assert r.returncode == 0, r.stderr
    assert len(read_jsonl(out)) == len(tree["top"])
    assert "img" in r.stderr and "4 inputs: 3 scored" in r.stderr
    assert r.stdout == ""


def test_info_on_an_engine_without_tensorrt_prints_the_sidecar(tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here: the engine itself is loaded")
    except ImportError:
        pass
    from _sdk_util import write_engine_pair

    eng = write_engine_pair(tmp_path / "nsnet.engine", contract_metadata(threshold=0.25))
    assert main(["info", str(eng), "--json"]) == 0
    captured = capsys.readouterr()
    info = json.loads(captured.out)
    assert info["backend"] == "tensorrt" and info["device"] is None and info["threshold"] == 0.25
    assert info["metadata"]["nsnet.trt.max_batch"] == "32" and info["precision"] == "fp16"
    assert "sidecar" in captured.err and "tensorrt" in captured.err
    assert main(["info", str(eng)]) == 0
    assert "nsnet.trt.max_batch = 32" in capsys.readouterr().out
    eng.with_name(eng.name + ".json").write_text("{}")  # no usable metadata: still an error
    assert main(["info", str(eng)]) == 1
    assert "cannot load model" in capsys.readouterr().err
