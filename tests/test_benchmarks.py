"""benchmarks/throughput.py smoke test on nsnet-tiny: report schema and sanity, nothing timed.

One real run (PyTorch baseline, derived optimised + INT8 graphs, preprocessing, end-to-end through
the SDK, each configuration in its own child process) shared by the tests below; plus the pieces
whose failure would silently corrupt figures: peak-RSS accounting, ratio arithmetic, crash isolation.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("open_clip")
pytest.importorskip("onnx")
pytest.importorskip("matplotlib")

from _sdk_util import tiny_export  # noqa: E402
from benchmarks import _measure, _report, throughput  # noqa: E402

BATCHES, WORKERS = (1, 3), (1, 2)
BACKENDS = {"onnxruntime", "onnxruntime-spin", "openvino", "tensorrt", "torch"}
PRECISIONS, STAGES = {"fp32", "fp16", "bf16", "int8"}, \
    {"model", "preprocess", "end_to_end"}
KEYS = {"backend", "precision", "stage", "batch_size", "workers", "images_per_s", "p50_ms", "p99_ms",
        "peak_rss_mb"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    art = tiny_export()
    out = tmp_path_factory.mktemp("bench")
    argv = ["--model", str(art["onnx"]), "--ckpt", str(art["run"]), "--batch-sizes", "1,3",
            "--synthetic", "6", "--size", "96", "--workers", "1,2", "--iters", "2", "--warmup", "1",
            "--parity-n", "4", "--threads", "1", "--device", "cpu",
            "--json", str(out / "r.json"), "--plot", str(out / "r.png"), "--workdir", str(out / "work")]
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = throughput.main(argv)
    return {"rc": rc, "report": json.loads((out / "r.json").read_text()), "stdout": buf.getvalue(),
            "png": out / "r.png", "workdir": out / "work"}


def test_run_completes_and_reports_this_machine_and_these_libraries(bench):
    import os
    from importlib import metadata

    rep = bench["report"]
    assert bench["rc"] == 0, rep["failed"]
    assert rep["failed"] == [] and rep["not_on_gpu"] == []
    assert rep["machine"]["cpu_count"] == os.cpu_count()
    for lib in ("onnxruntime", "torch", "numpy"):
        assert rep["libraries"][lib] == metadata.version(lib), lib
    assert rep["command"].split()[1:3] == ["-m", "benchmarks.throughput"]  # a command that runs as written
    assert "--batch-sizes 1,3" in rep["command"] and rep["threads"] == 1 and rep["backbone"] == "nsnet-tiny"
    assert any("TensorRT" in s for s in rep["not_run"])  # no engine, no CUDA here: said, not hidden


def test_model_rows_rate_is_images_over_the_timed_calls(bench):
    # --iters 2: the median of two batch latencies is their mean, so images/s must equal
    # batch / p50 exactly; a rate computed from the wrong image count or time would not.
    rows = [r for r in bench["report"]["results"] if r["stage"] == "model"]
    assert rows
    for r in rows:
        assert r["workers"] == 0, r
        assert r["images_per_s"] == pytest.approx(r["batch_size"] * 1e3 / r["p50_ms"], rel=1e-9), r
        assert r["p50_ms"] <= r["p99_ms"], r


def test_row_and_cpu_time_arithmetic():
    spec = {"label": "onnxruntime", "precision": "int8"}
    lat = [0.1] * 9 + [1.0]  # seconds per call
    r = _measure.row(spec, "model", 4, 0, images=40, seconds=2.0, latencies_s=lat)
    assert set(r) == set(_measure.ROW_KEYS)
    assert r["images_per_s"] == pytest.approx(20.0)
    assert r["p50_ms"] == pytest.approx(100.0)
    assert r["p99_ms"] == pytest.approx(100.0 + 0.91 * 900.0)  # linear interpolation at rank 8.91
    c = _measure.cpu_entry(r, cpu_s=0.5, images=40)
    assert c["cpu_ms_per_image"] == pytest.approx(12.5)
    assert {k: c[k] for k in ("backend", "precision", "stage", "batch_size", "workers")} == \
        {"backend": "onnxruntime", "precision": "int8", "stage": "model", "batch_size": 4, "workers": 0}


def test_expected_backend_stage_combinations_present(bench):
    got = {(r["backend"], r["precision"], r["stage"], r["batch_size"], r["workers"]) for r in bench["report"]["results"]}
    want = set()
    for backend, prec in (("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")):
        want |= {(backend, prec, "model", b, 0) for b in BATCHES}
        want |= {(backend, prec, "end_to_end", max(BATCHES), w) for w in WORKERS}
    want |= {("onnxruntime", "fp32", "preprocess", 1, w) for w in WORKERS}
    want |= {("onnxruntime-spin", "fp32", "end_to_end", max(BATCHES), w) for w in WORKERS}
    from nsnet_sdk.backends.openvino import bf16_supported
    from nsnet_sdk.cpuinfo import cpu_features

    import importlib.util

    for prec in ("fp32", "int8") + (("bf16",) if bf16_supported(cpu_features()) else ()):
        if importlib.util.find_spec("openvino") is None:  # the [openvino] extra: rows only with it
            break
        want |= {("openvino", prec, "model", b, 0) for b in BATCHES}
    assert want <= got, sorted(want - got)
    assert len(got) == len(bench["report"]["results"])  # no configuration reported twice


# Runs a script with torch and open_clip unimportable: python -c BLOCK_TORCH SCRIPT ARGS...
BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, runpy, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "open_clip"):
                raise ImportError("blocked for the test: " + name)
    sys.meta_path.insert(0, Block())
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


def test_each_configuration_has_its_own_child_and_ort_children_never_load_torch(bench, tmp_path):
    """Structural, not a memory figure: every measured configuration was one `_measure.py` child
    (its own spec), so each row's peak RSS is its own process's; and an ONNX Runtime child runs to
    the end with torch and open_clip unimportable, so its figure cannot include them (torch's can)."""
    specs = [json.loads(p.read_text()) for p in sorted(bench["workdir"].glob("*.spec.json"))]
    rep = bench["report"]
    measured = {(r["backend"], r["precision"]) for r in rep["results"] + rep["reference_results"]}
    assert measured <= {(s["label"], s["precision"]) for s in specs}
    assert len({s["out"] for s in specs}) == len(specs)  # one output (one process) per configuration
    ort = next(s for s in specs if s["kind"] == "model" and s["label"] == "onnxruntime")
    spec = tmp_path / "ort.spec.json"
    spec.write_text(json.dumps(dict(ort, out=str(tmp_path / "ort.json"))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(throughput.__file__).parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH, _measure.__file__, str(spec)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "ort.json").read_text())["rows"]
    assert rows and {r["backend"] for r in rows} == {"onnxruntime"}


def test_derived_variants_fused_quantised_and_in_parity(bench):
    rep = bench["report"]
    models = {m["variant"]: m for m in rep["models"]}
    assert set(models) == {"plain", "optimized", "int8"}
    assert "Attention" not in models["plain"]["ops"]
    assert models["optimized"]["ops"].get("Attention") == 2  # nsnet-tiny has 2 blocks
    assert models["optimized"]["ops"].get("SkipLayerNormalization", 0) > 0
    assert models["int8"]["ops"].get("MatMulInteger", 0) + models["int8"]["ops"].get("DynamicQuantizeMatMul", 0) > 0
    par = {p["config"]: p for p in rep["parity"]}
    assert {p["reference"] for p in rep["parity"]} == {"torch fp32"}
    for name in ("onnxruntime plain", "onnxruntime optimized"):
        assert par[name]["max_abs_logit"] <= 1e-4 and par[name]["n"] == 4
    assert par["openvino fp32"]["max_abs_logit"] <= 1e-4  # OpenVINO FP32 is an FP32 engine
    q = par["onnxruntime int8"]
    assert 1e-7 < q["max_abs_logit"] < 1.0  # INT8 is a different (quantised) graph, yet close
    # The plain graph is kept as a reference figure, out of "results".
    assert {r.get("variant") for r in rep["reference_results"]} == {"plain"}


def test_outputs_table_and_png(bench):
    out = bench["stdout"]
    n_rows = len(bench["report"]["results"]) + len(bench["report"]["reference_results"])
    table = [line for line in out.splitlines() if line[:1] != " " and line.split()[:1] and line.split()[0] in
             BACKENDS | {"onnxruntime*"}]
    assert len(table) == n_rows
    assert "parity" in out and "vs torch" in out
    assert bench["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_peak_rss_is_reset_per_stage():
    # In a fresh process: a long test session's heap (freed pages kept by the allocator, threads'
    # cached RSS counters) can hide a 40 MiB allocation from VmHWM.
    code = textwrap.dedent("""
        import mmap, sys
        from benchmarks import _measure
        if not _measure.reset_peak_rss():
            print("unsupported"); sys.exit(0)
        base = _measure.peak_rss_mb()
        block = mmap.mmap(-1, 40 << 20)
        block.write(b"x" * (40 << 20))  # 40 MiB of new pages, touched
        high = _measure.peak_rss_mb()
        block.close()
        _measure.reset_peak_rss()
        after = _measure.peak_rss_mb()
        print(base, high, after)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    if r.stdout.strip() == "unsupported":
        pytest.skip("/proc/self/clear_refs not writable: per-stage peak RSS unsupported here")
    base, high, after = map(float, r.stdout.split())
    assert high >= base + 35
    assert after < high - 30


def test_ratio_arithmetic():
    rows = [
        {"backend": "torch", "precision": "fp32", "stage": "model", "batch_size": 8, "workers": 0, "images_per_s": 10.0},
        {"backend": "onnxruntime", "precision": "int8", "stage": "model", "batch_size": 8, "workers": 0, "images_per_s": 35.0},
        {"backend": "onnxruntime", "precision": "int8", "stage": "end_to_end", "batch_size": 8, "workers": 1, "images_per_s": 14.0},
        {"backend": "onnxruntime", "precision": "int8", "stage": "end_to_end", "batch_size": 8, "workers": 2, "images_per_s": 33.25},
    ]
    assert _report.ratios(rows)[("onnxruntime", "int8", 8)] == pytest.approx(3.5)
    (f,) = _report.e2e_fraction(rows)
    assert f["workers"] == 2 and f["fraction"] == pytest.approx(0.95)


def test_a_crashing_configuration_is_a_failed_row_not_a_failed_run(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is no ONNX model")
    spec = dict(kind="model", name="onnxruntime broken", backend="onnxruntime", label="onnxruntime",
                precision="fp32", model=str(bad), device="cpu", providers=["CPUExecutionProvider"],
                threads=1, batch_sizes=[1], workers=[1], e2e_batch_size=1, files=[], iters=1, warmup=0,
                parity_inputs=None)
    res, err = throughput.run_child(spec, tmp_path, timeout=120)
    assert res is None and "exit code" in err and "ModelLoadError" in err


@pytest.mark.parametrize("argv", [["--batch-sizes", "0"], ["--workers", "x"]])
def test_usage_errors_exit_2(argv, tmp_path):
    with pytest.raises(SystemExit) as e:
        throughput.main(["--model", str(tmp_path / "m.onnx"), *argv])
    assert e.value.code == 2


def test_missing_model_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        throughput.main(["--model", str(tmp_path / "absent.onnx"), "--synthetic", "2"])
    assert e.value.code == 2 and "absent.onnx" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"garbage", b""])
def test_damaged_model_is_a_usage_error(tmp_path, capsys, content):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    with pytest.raises(SystemExit) as e:
        throughput.main(["--model", str(bad), "--synthetic", "2"])
    assert e.value.code == 2 and "bad.onnx" in capsys.readouterr().err


def test_onnx_without_nsnet_metadata_is_a_usage_error(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["logit"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("logit", TensorProto.FLOAT, [1])])
    plain = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph), str(plain))
    with pytest.raises(SystemExit) as e:
        throughput.main(["--model", str(plain), "--synthetic", "2"])
    assert e.value.code == 2 and "not an NS-Net export" in capsys.readouterr().err


def test_every_row_has_its_own_cpu_time(bench):
    rep = bench["report"]
    keys = ("backend", "precision", "stage", "batch_size", "workers")
    cpu = [tuple(c[k] for k in keys) for c in rep["cpu_time"] if "variant" not in c]
    assert sorted(cpu) == sorted(tuple(r[k] for k in keys) for r in rep["results"])  # one each, no strays


def test_device_of_a_row_is_the_backends_own():
    assert throughput.on_gpu("cuda") and throughput.on_gpu("cuda:1")
    assert throughput.on_gpu("CUDAExecutionProvider") and throughput.on_gpu("TensorrtExecutionProvider")
    assert not throughput.on_gpu("cpu") and not throughput.on_gpu("CPUExecutionProvider")
    assert not throughput.on_gpu(None)


def test_a_cuda_configuration_that_ran_on_the_cpu_is_flagged(tmp_path):
    # ONNX Runtime given CUDA then CPU runs on the CPU where CUDA is unusable: the child reports the
    # backend's actual provider and the run flags the configuration instead of printing CPU figures
    # as CUDA ones.
    from _sdk_util import textured, write_png

    files = [str(write_png(tmp_path / f"{i}.png", textured(64, 80, i))) for i in range(2)]
    spec = dict(kind="model", name="onnxruntime-cuda optimized", backend="onnxruntime", label="onnxruntime",
                precision="fp32", model=str(tiny_export()["onnx"]), device="cuda",
                providers=["CPUExecutionProvider"], threads=1, batch_sizes=[2], workers=[1],
                e2e_batch_size=2, files=files, iters=1, warmup=0, parity_inputs=None, e2e=False)
    res, err = throughput.run_child(spec, tmp_path, timeout=120)
    assert err is None, err
    assert res["device"] == "CPUExecutionProvider"
    assert throughput.device_flag(spec, res["device"]) == {
        "config": "onnxruntime-cuda optimized", "planned": "cuda", "ran_on": "CPUExecutionProvider"}
    assert throughput.device_flag(dict(spec, device="cpu"), res["device"]) is None
    assert throughput.device_flag(spec, "CUDAExecutionProvider") is None
    report = {"results": [], "reference_results": [], "threads": 1, "device": "cuda", "inputs": "-",
              "parity": [], "models": [], "end_to_end_vs_model": [], "failed": [], "not_run": [],
              "not_on_gpu": [throughput.device_flag(spec, res["device"])]}
    import io

    out = io.StringIO()
    _report.print_report(report, out)
    assert "NOT ON GPU onnxruntime-cuda optimized" in out.getvalue()


def test_unreadable_input_is_reported_not_fatal(tmp_path):
    from _sdk_util import textured, write_png

    files = [str(write_png(tmp_path / f"{i}.png", textured(64, 80, i))) for i in range(2)]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    spec = dict(kind="model", name="onnxruntime tiny", backend="onnxruntime", label="onnxruntime",
                precision="fp32", model=str(tiny_export()["onnx"]), device="cpu",
                providers=["CPUExecutionProvider"], threads=1, batch_sizes=[2], workers=[1],
                e2e_batch_size=2, files=[files[0], str(bad), files[1]], iters=1, warmup=0, parity_inputs=None)
    res, err = throughput.run_child(spec, tmp_path, timeout=120)
    assert err is None, err
    assert [r["stage"] for r in res["rows"]] == ["model", "end_to_end"]
    assert len(res["input_errors"]) == 1 and "broken.jpg" in res["input_errors"][0]


def test_report_counts_read_in_the_singular_and_the_plural(bench):
    import io

    rep = json.loads(json.dumps(bench["report"]))
    # which worker count was fastest is the machine's business: give the two entries one each
    e2e = rep["end_to_end_vs_model"]
    assert len(e2e) >= 2, e2e
    rep["end_to_end_vs_model"] = [dict(e2e[0], workers=1), dict(e2e[1], workers=2)]
    for errors, want in ((["a.jpg: ImageDecodeError"], "1 input was not scored"),
                         (["a.jpg: x", "b.jpg: y"], "2 inputs were not scored")):
        buf = io.StringIO()
        _report.print_report(dict(rep, input_errors=errors), out=buf)
        text = buf.getvalue()
        assert want in text and "(1 worker)" in text and "(2 workers)" in text and "1 workers" not in text


def test_cuda_plan_has_the_gpu_rows(tmp_path):
    # Planning only (no GPU here): on CUDA the run must hold the PyTorch FP32 and FP16-autocast
    # (+ CUDA graph) baselines, ORT's CUDA EP on the fused FP32 and FP16 graphs, and the engine.
    import argparse

    from benchmarks._variants import Variant

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    (tmp_path / "m.engine.json").write_text(json.dumps({"nsnet.precision": "fp16"}))
    args = argparse.Namespace(ckpt=tmp_path, engine=engine)
    variants = [Variant("plain", "fp32", tmp_path / "a.onnx", False), Variant("optimized", "fp32", tmp_path / "b.onnx", True),
                Variant("fp16", "fp16", tmp_path / "c.onnx", True)]
    got = {(c["label"], c["precision"], c["device"], bool(c.get("cuda_graphs")), tuple(c.get("providers") or ()))
           for c in throughput.plan(args, variants, "cuda", cuda_ort=True)}
    gpu = ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert got == {("torch", "fp32", "cuda", False, ()), ("torch", "fp16", "cuda", True, ()),
                   ("onnxruntime", "fp32", "cuda", False, gpu), ("onnxruntime", "fp16", "cuda", False, gpu),
                   ("tensorrt", "fp16", "cuda", False, ())}


def test_images_dir_lists_what_nsnet_detect_scores(tmp_path):
    from nsnet_sdk.pipeline import iter_image_paths

    (tmp_path / "sub").mkdir()
    for name in ("a.png", "sub/b.JPG", "sub/c.webp", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    files = throughput.image_files(tmp_path)
    assert files == iter_image_paths([str(tmp_path)], recursive=True)[0]
    assert [Path(f).name for f in files] == ["a.png", "b.JPG", "c.webp"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(throughput.BenchError, match="no image files"):
        throughput.image_files(empty)


def test_dedupe_benchmark_reports_both_scorers_and_the_cache_hit(tmp_path):
    """benchmarks.dedupe runs end to end and its figures are consistent with each other (the times
    themselves belong to the report, not to a test)."""
    from _sdk_util import build_stand_in_onnx
    from benchmarks import dedupe

    model = build_stand_in_onnx(tmp_path / "m.onnx")
    out = tmp_path / "d.json"
    assert dedupe.main(["--model", str(model), "--files", "8", "--size", "96", "--repeat", "1",
                        "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["files"] == 8 and r["distinct"] == 4 and r["machine"]["cpu"]
    assert r["ratio"] == pytest.approx(r["each_distinct_once_s"] / r["every_file_s"])
    assert r["every_file_s"] > 0 and r["cache_hit_ms"] > 0


def test_a_repeated_folder_holds_each_picture_twice(tmp_path):
    import hashlib

    from benchmarks.dedupe import repeated_folder

    files = repeated_folder(6, 64, tmp_path)
    digests = [hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files]
    assert len(files) == 6 and len(set(digests)) == 3 and all(digests.count(d) == 2 for d in digests)
