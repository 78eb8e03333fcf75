"""``backend="auto"``: the CPU engine for an .onnx file is chosen from the measured table, and
`Detector.info()` / ``nsnet info`` say which engine and precision and why (the table row and the
CPU flags behind it). Checked against tables, never against timings."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _sdk_util import build_stand_in_onnx

from nsnet_sdk import Detector
from nsnet_sdk.backends import cpu_engine_choice
from nsnet_sdk.backends.openvino import load_engine_table, within_bound
from nsnet_sdk.options import BackendOptions, InputOptions

AMX = {"avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "sse4_2"}
AVX2 = {"avx2", "fma", "sse4_2"}


def _row(isa, backend, precision, ratio, needs=(), parity=None):
    return {"isa": isa, "backend": backend, "precision": precision, "artifact": "fp32", "needs": list(needs),
            "ratio": ratio, "parity": parity or {"max_abs_logit": 1e-7, "max_abs_prob": 1e-8, "agreement": 1.0},
            "measured": f"{isa} {backend} {precision} row"}


TABLE = [
    _row("amx", "onnxruntime", "fp32", 1.0),
    _row("amx", "openvino", "fp32", 1.2, ["avx512f"]),
    _row("amx", "openvino", "bf16", 4.7, ["amx_bf16", "avx512f"],
         {"max_abs_logit": 2e-3, "max_abs_prob": 5e-4, "agreement": 1.0}),
    _row("avx2", "onnxruntime", "fp32", 1.0),
    _row("avx2", "openvino", "fp32", 0.9),  # slower than ONNX Runtime on this class: never chosen
]


def test_the_report_names_the_row_and_the_flags_behind_the_choice():
    both = ["onnxruntime", "openvino"]
    c = cpu_engine_choice("bf16", "fp32", features=AMX, table=TABLE, available=both)
    assert (c["engine"], c["precision"], c["row"]) == ("openvino", "bf16", TABLE[2])
    assert c["cpu"] == "amx" and {"amx_bf16", "avx512f"} <= set(c["cpu_flags"]) and "sse4_2" not in c["cpu_flags"]
    assert "amx" in c["why"] and "4.70x" in c["why"]
    # the FP32 bound rules BF16 out: the fastest FP32 row instead
    c = cpu_engine_choice("fp32", "fp32", features=AMX, table=TABLE, available=both)
    assert (c["engine"], c["precision"], c["row"]) == ("openvino", "fp32", TABLE[1])
    # a CPU without AMX uses its own class's rows: ONNX Runtime is the faster there
    c = cpu_engine_choice("bf16", "fp32", features=AVX2, table=TABLE, available=both)
    assert (c["engine"], c["precision"], c["row"]) == ("onnxruntime", "fp32", TABLE[3])
    assert c["cpu"] == "avx2" and "amx_bf16" not in c["cpu_flags"]
    # OpenVINO not installed: its rows cannot be chosen
    c = cpu_engine_choice("bf16", "fp32", features=AMX, table=TABLE, available=["onnxruntime"])
    assert (c["engine"], c["row"]) == ("onnxruntime", TABLE[0])


def test_a_cpu_class_without_usable_rows_falls_back_to_the_baseline_and_says_so():
    c = cpu_engine_choice("fp32", "fp32", features={"sse4_2"}, table=TABLE[:3])
    assert (c["engine"], c["precision"], c["row"]) == ("onnxruntime", "fp32", None)
    assert "baseline" in c["why"]


def _best_of_checked_in_table(features, precision):
    """The fastest row of the checked-in table this CPU can run within ``precision``'s bound."""
    table = load_engine_table()
    for isa in ("amx", "avx512", "avx2", "baseline")[("amx", "avx512", "avx2", "baseline").index(
            cpu_engine_choice(precision, "fp32", features=features)["cpu"]):]:
        rows = [r for r in table if r["isa"] == isa and r.get("artifact", "fp32") == "fp32"
                and set(r.get("needs", ())) <= set(features) and within_bound(precision, r["parity"])]
        if any(r["isa"] == isa for r in table):
            return max(rows, key=lambda r: r["ratio"]) if rows else None
    return None


@pytest.mark.parametrize("features", [AMX, AVX2, {"avx2", "fma", "avx512f"}], ids=["amx", "avx2", "avx512"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_checked_in_table_gives_its_fastest_runnable_row(features, precision):
    c = cpu_engine_choice(precision, "fp32", features=features, available=["onnxruntime", "openvino"])
    want = _best_of_checked_in_table(features, precision)
    assert c["row"] == want
    if want is not None:
        assert (c["engine"], c["precision"]) == (want["backend"], want["precision"])


def test_detector_info_says_which_engine_auto_chose_and_why(tmp_path):
    model = build_stand_in_onnx(tmp_path / "m.onnx")
    want = cpu_engine_choice("fp32", "fp32")
    if want["engine"] == "openvino":
        pytest.importorskip("openvino")
    with Detector(model, backend="auto", options=InputOptions(workers=0)) as det:
        info = det.info()
        assert det.backend.name == want["engine"] == info["backend"]
        assert info["engine_choice"] == want
        assert f"engine={want['engine']}" in det.settings()
    with Detector(model, backend=BackendOptions(engine="onnxruntime"), options=InputOptions(workers=0)) as det:
        assert det.info()["engine_choice"]["engine"] == "onnxruntime"
        assert "asked for" in det.info()["engine_choice"]["why"]


def test_nsnet_info_prints_the_choice(tmp_path):
    model = build_stand_in_onnx(tmp_path / "m.onnx")
    want = cpu_engine_choice("bf16", "fp32")
    if want["engine"] == "openvino":
        pytest.importorskip("openvino")
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-m", "nsnet_sdk.cli", "info", str(model), "--backend", "auto",
                        "--precision", "bf16", "--json"], capture_output=True, text=True, timeout=120, cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads(r.stdout)
    assert info["engine_choice"] == json.loads(json.dumps(want)) and info["backend"] == want["engine"]
    r = subprocess.run([sys.executable, "-m", "nsnet_sdk.cli", "info", str(model), "--backend", "auto",
                        "--precision", "bf16"], capture_output=True, text=True, timeout=120, cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("engine choice"))
    assert f"{want['engine']} {want['precision']}" in line and want["cpu"] in r.stdout


def test_auto_on_an_artifact_of_another_engine_runs_its_own_engine_and_says_so():
    pytest.importorskip("torch")
    pytest.importorskip("open_clip")
    from _sdk_util import tiny_export

    run = tiny_export()["run"]
    with Detector(run, backend=BackendOptions(engine="auto", device="cpu", precision="fp32"),
                  options=InputOptions(workers=0)) as det:
        choice = det.info()["engine_choice"]
        assert det.kind == det.backend.name == choice["engine"] == "torch"
        assert "its own engine" in choice["why"] and "engine=torch precision=fp32" in det.settings()
