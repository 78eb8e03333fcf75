"""`nsnet detect` / `nsnet info` end to end: rows counted against inputs, outputs, exit codes.
Result files that survive kills, --resume/--overwrite and escaping: tests/test_cli_results.py."""
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
from nsnet_sdk import Detector, InputOptions
from nsnet_sdk.cli import main
from nsnet_sdk.artifact import model_sha256
from nsnet_sdk.results import DETECT_FIELDS


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


def test_detect_writes_one_row_per_input_in_jsonl_and_csv(model, tree, tmp_path, capsys):
    root = tree["root"][0]
    explicit_txt = root / "notes.txt"  # named explicitly: attempted (and fails) even if not an image
    tiny = write_png(tmp_path / "tiny.png", textured(10, 10, seed=9))
    out_j, out_c = tmp_path / "out.jsonl", tmp_path / "out.csv"
    rc = main(["detect", str(root), str(explicit_txt), str(tiny), "--model", str(model),
               "--jsonl", str(out_j), "--csv", str(out_c), "--batch-size", "2", "--workers", "2"])
    assert rc == 0
    expected_sources = [str(p) for p in tree["top"]] + [str(explicit_txt), str(tiny)]
    rows = read_jsonl(out_j)
    assert [r["source"] for r in rows] == expected_sources
    assert all(tuple(r) == DETECT_FIELDS for r in rows)
    with open(out_c, newline="") as f:
        assert f.readline().rstrip("\r\n") == ",".join(DETECT_FIELDS)  # the header comes first
        f.seek(0)
        crow = list(csv.DictReader(f))
    assert [r["source"] for r in crow] == expected_sources
    errors = {r["source"] for r in rows if r["error"]}
    assert errors == {str(tree["bad"][0]), str(explicit_txt)}
    sha = model_sha256(model)
    for r, c in zip(rows, crow):
        assert r["threshold"] == 0.5 and float(c["threshold"]) == 0.5
        assert r["model_sha256"] == c["model_sha256"] == sha
        assert r["verdict"] is None and c["verdict"] == ""
        if r["error"]:
            assert r["prob_fake"] is None and r["logit"] is None
            assert c["prob_fake"] == c["logit"] == "" and c["error"] == r["error"]
        else:
            assert float(c["prob_fake"]) == pytest.approx(r["prob_fake"], abs=1e-12)
            assert float(c["logit"]) == pytest.approx(r["logit"], abs=1e-9)
            assert c["is_fake"] == str(r["is_fake"]) and r["is_fake"] == (r["prob_fake"] >= 0.5)
    # the 10x10 image is scored with a warning; a list in JSONL, "; "-joined in CSV
    warned = {r["source"]: (r["warnings"], c["warnings"]) for r, c in zip(rows, crow) if r["warnings"]}
    assert list(warned) == [str(tiny)]
    (jw, cw), = warned.values()
    assert len(jw) == 1 and "10x10" in jw[0] and cw == "; ".join(jw)
    scored = [r for r in rows if not r["error"]]
    ref = Detector(model, options=InputOptions(workers=0)).predict([Path(r["source"]) for r in scored])
    np.testing.assert_allclose([r["prob_fake"] for r in scored], [p.prob_fake for p in ref], atol=1e-9)
    np.testing.assert_allclose([r["logit"] for r in scored], [p.logit for p in ref], atol=1e-6)
    err = capsys.readouterr().err
    fake = sum(r["is_fake"] for r in scored)
    assert f"{len(rows)} inputs: {len(scored)} scored, {fake} fake, 2 errors" in err
    assert f"results written to {out_j}, {out_c}" in err


def test_model_sha256_is_the_model_files_hash(model):
    import hashlib

    assert model_sha256(model) == hashlib.sha256(model.read_bytes()).hexdigest()


def test_missing_command_line_path_is_a_usage_error_before_any_work(model, tree, tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    with pytest.raises(SystemExit) as e:
        main(["detect", str(tree["top"][0]), str(tmp_path / "typo.png"), "-m", str(model),
              "--jsonl", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "typo.png" in err and "usage: nsnet detect" in err
    assert not out.exists()  # nothing was written, not even an empty file


def test_json_is_an_alias_of_jsonl(model, tree, tmp_path, capsys):
    img = str(tree["top"][0])
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(["detect", img, "-m", str(model), "--json", str(a), "-q"]) == 0
    assert main(["detect", img, "-m", str(model), "--jsonl", str(b), "-q"]) == 0
    assert a.read_text() == b.read_text() and len(read_jsonl(a)) == 1
    with pytest.raises(SystemExit) as e:
        main(["detect", img, "-m", str(model), "--json", str(a), "--jsonl", str(b)])
    assert e.value.code == 2
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["detect", "--help"])
    assert "alias of --jsonl" in capsys.readouterr().out


@pytest.mark.parametrize("same,flag", [("same", "--json"), ("same", "--jsonl"),
                                       ("dot", "--jsonl"), ("stdout", "--json")])
def test_csv_and_jsonl_into_one_file_is_a_usage_error(model, tree, tmp_path, capsys, same, flag):
    target = str(tmp_path / "o.txt")
    other = {"same": target, "dot": str(tmp_path / "." / "o.txt"), "stdout": "-"}[same]
    first = "-" if same == "stdout" else target
    with pytest.raises(SystemExit) as e:
        main(["detect", str(tree["top"][0]), "-m", str(model), "--csv", first, flag, other])
    assert e.value.code == 2
    assert "usage: nsnet detect" in capsys.readouterr().err
    assert not (tmp_path / "o.txt").exists()


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
                 str(tmp_path / "o.jsonl"), "--csv", str(tmp_path / "o.csv")]) == 0
    assert (tmp_path / "o.jsonl").read_text() == ""
    assert (tmp_path / "o.csv").read_text() == ",".join(DETECT_FIELDS) + "\n"
    assert "no image files" in capsys.readouterr().err


def test_without_recursive_the_summary_counts_skipped_subfolders(model, tree, tmp_path, capsys):
    root = tree["root"][0]
    (root / "sub2").mkdir()
    assert main(["detect", str(root), "-m", str(model), "--jsonl", str(tmp_path / "o.jsonl")]) == 0
    assert "skipped 2 subfolder(s) (use --recursive to include them)" in capsys.readouterr().err
    assert main(["detect", str(root), "-m", str(model), "-r", "--jsonl", str(tmp_path / "p.jsonl")]) == 0
    assert "subfolder" not in capsys.readouterr().err


def test_hidden_and_non_regular_entries_are_counted_and_listed(model, tmp_path, capsys):
    root = tmp_path / "scan"
    root.mkdir()
    good = write_png(root / "good.png", textured(64, 64))
    write_png(root / ".hidden.png", textured(64, 64, seed=1))
    (root / ".cache").mkdir()
    write_png(root / ".cache" / "inside.png", textured(64, 64, seed=2))
    (root / ".jpg").write_bytes(good.read_bytes())  # a dotfile named like an extension
    os.mkfifo(root / "pipe.jpg")
    (root / "gone.png").symlink_to(root / "nowhere.png")
    (root / "folder.jpg").mkdir()
    out = tmp_path / "o.jsonl"
    assert main(["detect", str(root), "-m", str(model), "--jsonl", str(out)]) == 0
    assert [r["source"] for r in read_jsonl(out)] == [str(good)]
    err = capsys.readouterr().err
    assert "skipped 3 hidden entries (use --hidden to include them)" in err
    assert "skipped 3 non-regular entries named like images (--verbose lists them)" in err
    assert "pipe.jpg" not in err
    assert main(["detect", str(root), "-m", str(model), "--jsonl", str(out), "--overwrite",
                 "--verbose"]) == 0
    err = capsys.readouterr().err
    for name, reason in [("pipe.jpg", "FIFO"), ("gone.png", "broken symlink"),
                         ("folder.jpg", "directory"), (".hidden.png", "hidden")]:
        assert f"skipped {str(root / name)!r}: {reason}" in err
    assert main(["detect", str(root), "-m", str(model), "--jsonl", str(out), "--overwrite",
                 "--hidden", "-r", "-q"]) == 0
    got = sorted(r["source"] for r in read_jsonl(out))
    assert got == sorted(str(p) for p in [good, root / ".hidden.png", root / ".cache" / "inside.png",
                                          root / ".jpg"])


@pytest.mark.parametrize("argv", [
    ["detect", "--model", "m.onnx"],                         # no PATH
    ["detect", "x.png"],                                     # no --model
    ["detect", "x.png", "-m", "M", "--batch-size", "0"],
    ["detect", "x.png", "-m", "M", "--batch-size", "many"],
    ["detect", "x.png", "-m", "M", "--threshold", "1.5"],
    ["detect", "x.png", "-m", "M", "--workers", "-1"],
    ["detect", "x.png", "-m", "M", "--overwrite", "--resume"],
    ["detect", "x.png", "-m", "M", "-q", "-v"],
    ["frobnicate"],
    [],
])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_a_wrong_flag_prints_the_subcommands_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["detect", "x.png", "-m", "M", "--recursve"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: nsnet detect") and "unrecognized arguments: --recursve" in err


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
    assert main(["detect", img, "-m", str(tmp_path / "missing.onnx"), "--json", str(earlier),
                 "--overwrite"]) == 1
    assert earlier.read_text() == '{"source": "old"}\n'


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
    rc = main(["detect", *paths, "-m", str(model), "--batch-size", "2", "--jsonl", str(out), "-q"])
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


def test_library_noise_stays_off_the_terminal(model, tmp_path):
    """libpng and libtiff print their own errors to fd 2; they must not reach the terminal."""
    import struct
    import zlib

    import cv2
    from _decode_util import png_chunk

    # Structurally sound files (so the header checks let them through to the libraries) whose
    # contents the libraries reject: a row filter type that does not exist, an unsupported codec.
    pic = textured(96, 96, seed=3)
    rows = b"".join(b"\x09" + pic[r].tobytes() for r in range(96))
    png = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 96, 96, 8, 2, 0, 0, 0))
           + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))
    tif = bytearray(cv2.imencode(".tiff", pic)[1].tobytes())
    e = "<" if tif[:2] == b"II" else ">"
    ifd = struct.unpack(e + "I", tif[4:8])[0]
    for k in range(struct.unpack(e + "H", tif[ifd : ifd + 2])[0]):
        if struct.unpack(e + "H", tif[ifd + 2 + 12 * k : ifd + 4 + 12 * k])[0] == 259:  # Compression
            tif[ifd + 10 + 12 * k : ifd + 12 + 12 * k] = struct.pack(e + "H", 50000)
    (tmp_path / "cut.png").write_bytes(png)
    (tmp_path / "cut.tiff").write_bytes(bytes(tif))
    exe = [sys.executable, "-m", "nsnet_sdk.cli"]
    args = ["detect", str(tmp_path / "cut.png"), str(tmp_path / "cut.tiff"), "-m", str(model)]
    r = subprocess.run([*exe, *args, "-q"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["error"] is not None for x in r.stdout.splitlines()] == [True, True]
    assert r.stderr == ""
    # the same run with --verbose shows what the libraries said: the inputs did provoke it
    r = subprocess.run([*exe, *args, "--verbose"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and ("libpng" in r.stderr or "TIFF" in r.stderr), r.stderr


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


# ---- pipeline, device, engine and limits from the command line --------------------------------

def test_detect_runs_the_gpu_pipeline_on_the_cpu_device(model, tree, tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    from nsnet_sdk.pipeline.gpu import GpuPipeline

    batches = []
    real_prepare = GpuPipeline.prepare

    def counted(self, items, *args):
        batches.append((self.device, len(items)))
        return real_prepare(self, items, *args)

    monkeypatch.setattr(GpuPipeline, "prepare", counted)
    root, out = tree["root"][0], tmp_path / "gpu.jsonl"
    assert main(["detect", str(root), "-m", str(model), "--pipeline", "gpu", "--device", "cpu",
                 "--batch-size", "2", "--jsonl", str(out)]) == 0
    rows = read_jsonl(out)
    assert [r["source"] for r in rows] == [str(p) for p in tree["top"]]
    assert batches == [("cpu", 2), ("cpu", 2)]  # every input went through the GPU executor, on the CPU
    assert {r["settings"] for r in rows} == {f"max_pixels={100_000_000} pipeline=gpu engine=onnxruntime precision=fp32"}
    assert "onnxruntime on CPUExecutionProvider" in capsys.readouterr().err
    monkeypatch.setattr(GpuPipeline, "prepare", real_prepare)
    cpu_out = tmp_path / "cpu.jsonl"
    assert main(["detect", str(root), "-m", str(model), "--jsonl", str(cpu_out), "-q"]) == 0
    for g, c in zip(rows, read_jsonl(cpu_out)):
        assert g["error"] == c["error"] and g["warnings"] == c["warnings"]
        if c["error"] is None:
            assert g["logit"] == pytest.approx(c["logit"], abs=1e-5)


@pytest.mark.parametrize("argv, why", [
    (["--decode", "processes", "--pipeline", "gpu"], "applies to the CPU pipeline only"),
    (["--decode", "processes", "--workers", "0"], "needs workers >= 1"),
    (["--pipeline", "GPU"], "invalid choice"),
    (["--backend", "onnx"], "invalid choice"),
    (["--precision", "fp8"], "invalid choice"),
    (["--max-pixels", "0"], "positive integer"),
])
def test_options_that_would_be_ignored_or_are_invalid_are_usage_errors(model, tree, tmp_path, capsys, argv, why):
    with pytest.raises(SystemExit) as e:
        main(["detect", str(tree["top"][0]), "-m", str(model), "--jsonl", str(tmp_path / "o.jsonl"), *argv])
    assert e.value.code == 2 and why in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists() or (tmp_path / "o.jsonl").stat().st_size == 0


@pytest.mark.parametrize("argv, why", [
    (["--precision", "fp16"], "precision='fp16' cannot be honoured by the 'onnxruntime' engine"),
    (["--backend", "torch"], "cannot be run by engine='torch'"),
])
def test_options_the_engine_cannot_honour_fail_the_model_load(model, tree, tmp_path, capsys, argv, why):
    assert main(["detect", str(tree["top"][0]), "-m", str(model), "--jsonl", str(tmp_path / "o.jsonl"),
                 *argv]) == 1
    assert why in capsys.readouterr().err


def test_max_pixels_lifts_or_lowers_the_pixel_limit(model, tmp_path, capsys):
    img = str(write_png(tmp_path / "a.png", textured(60, 100)))  # 6,000 pixels
    out = tmp_path / "o.jsonl"
    assert main(["detect", img, "-m", str(model), "--jsonl", str(out), "-q", "--max-pixels", "5999"]) == 0
    row, = read_jsonl(out)
    assert row["error"].startswith("ImageTooLargeError") and "raise max_pixels" in row["error"]
    assert main(["detect", img, "-m", str(model), "--jsonl", str(out), "-q", "--overwrite",
                 "--max-pixels", "6000"]) == 0
    row, = read_jsonl(out)
    assert row["error"] is None and row["settings"].startswith("max_pixels=6000 ")


def test_a_banded_model_decides_by_verdict_and_the_summary_counts_verdicts(tmp_path, capsys):
    band = {"t_real": 0.3, "t_fake": 0.6, "fpr": 0.05, "fnr": 0.1, "source": "test"}
    banded = build_stand_in_onnx(tmp_path / "b.onnx", metadata=dict(
        contract_metadata(threshold=0.5), **{"nsnet.verdict_band": json.dumps(band)}))
    imgs = [str(write_png(tmp_path / f"p{i}.png", textured(64 + 9 * i, 80 + 7 * i, seed=i))) for i in range(24)]
    out = tmp_path / "o.jsonl"
    assert main(["detect", *imgs, "-m", str(banded), "--jsonl", str(out)]) == 0
    rows = read_jsonl(out)
    verdicts = [r["verdict"] for r in rows]
    assert {"ai-generated", "uncertain"} <= set(verdicts) or {"real", "uncertain"} <= set(verdicts)
    for r in rows:  # one decision rule: is_fake follows the verdict, never the single threshold
        assert r["is_fake"] == {"ai-generated": True, "real": False, "uncertain": None}[r["verdict"]]
    counts = ", ".join(f"{verdicts.count(v)} {v}" for v in ("ai-generated", "real", "uncertain"))
    err = capsys.readouterr().err
    assert f"24 inputs: 24 scored, {counts}, 0 errors (verdict band 0.3..0.6" in err
    assert " fake," not in err
