"""OpenVINO backend (nsnet_sdk/backends/openvino.py), its NNCF INT8 export (export/to_openvino.py)
and the CPU engine choice, on the real nsnet-tiny export and the real OpenVINO / NNCF.

Nothing here is timed: the choice is tested against the checked-in measured table and small
tables written here, never against a timing taken in the test.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

ov = pytest.importorskip("openvino")
pytest.importorskip("nncf")
pytest.importorskip("torch")
pytest.importorskip("onnx")

from _export_util import random_inputs, script  # noqa: E402
from _sdk_util import textured, tiny_export, write_png  # noqa: E402

from export.parity import compare  # noqa: E402
from nsnet_sdk.artifact import read_model_meta  # noqa: E402
from nsnet_sdk.backends import load_backend  # noqa: E402
from nsnet_sdk.backends import openvino as ovb  # noqa: E402
from nsnet_sdk.cpuinfo import cpu_features  # noqa: E402
from nsnet_sdk.errors import BackendUnavailableError, InferenceError, ModelLoadError  # noqa: E402

HAS_BF16 = ovb.bf16_supported(cpu_features())


@pytest.fixture(scope="module")
def tiny():
    return tiny_export()


@pytest.fixture(scope="module")
def held_out():
    """Held-out mosaics: pictures that are in neither calibration folder, preprocessed."""
    from nsnet_sdk.pipeline import preprocess_batch

    cfg = read_model_meta(tiny_export()["onnx"]).preprocess
    return preprocess_batch([textured(300 + 7 * i, 280 + 5 * i, seed=100 + i) for i in range(12)], cfg)


def _folder(root, n, seed):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_png(root / f"{seed}_{i}.png", textured(260 + 9 * i, 300, seed=seed + i))
    return root


@pytest.fixture(scope="module")
def int8_model(tiny, tmp_path_factory):
    """An INT8 artifact made by the CLI as documented, with a held-out parity check."""
    root = tmp_path_factory.mktemp("ov-int8")
    calib, hold = _folder(root / "calib", 16, 0), _folder(root / "hold", 8, 50)
    out = root / "nsnet.int8-ov.onnx"
    proc = subprocess.run(script("to_openvino") + ["--onnx", str(tiny["onnx"]), "--calibration", str(calib),
                                                   "--holdout", str(hold), "--out", str(out),
                                                   "--json", str(root / "parity.json")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"path": out, "report": json.loads((root / "parity.json").read_text()), "calib": calib, "hold": hold}


def _ort_logits(path, x):
    b = load_backend("onnxruntime", path, providers=["CPUExecutionProvider"])
    try:
        return b.run(x)
    finally:
        b.close()


def test_fp32_matches_onnxruntime(tiny):
    x = random_inputs(6, seed=3)
    b = load_backend("openvino", tiny["onnx"], precision="fp32", intra_op_threads=1)
    try:
        got = b.run(x)
        assert b.name == "openvino" and b.precision == "fp32"
        assert b.metadata == read_model_meta(tiny["onnx"]).metadata()
    finally:
        b.close()
    assert got.dtype == np.float32 and got.shape == (6,)
    np.testing.assert_allclose(got, _ort_logits(tiny["onnx"], x), rtol=0, atol=1e-5)


def test_throughput_hint_keeps_batch_order(tiny):
    """The throughput hint splits a batch across streams: logits must come back in input order."""
    x = random_inputs(7, seed=4)
    lat = load_backend("openvino", tiny["onnx"], precision="fp32", hint="latency")
    thr = load_backend("openvino", tiny["onnx"], precision="fp32", hint="throughput", intra_op_threads=2)
    try:
        np.testing.assert_allclose(thr.run(x), lat.run(x), rtol=0, atol=1e-5)
        np.testing.assert_allclose(thr.run(x[:1]), lat.run(x[:1]), rtol=0, atol=1e-5)
    finally:
        lat.close()
        thr.close()


@pytest.mark.skipif(not HAS_BF16, reason="no AMX or AVX-512-BF16 on this CPU")
def test_bf16_within_its_bound(tiny, held_out):
    b = load_backend("openvino", tiny["onnx"], precision="bf16")
    try:
        got = b.run(held_out)
        kernels = b.kernels()
    finally:
        b.close()
    par = compare("bf16", _ort_logits(tiny["onnx"], held_out), got, read_model_meta(tiny["onnx"]).threshold)
    assert ovb.within_bound("bf16", par.__dict__), par
    assert any("bf16" in k for k in kernels), kernels  # it really ran BF16 primitives


def test_bf16_refused_without_hardware(tiny, monkeypatch):
    monkeypatch.setattr(ovb, "cpu_features", lambda cpuinfo=None: frozenset({"avx2", "fma", "avx512f"}))
    with pytest.raises(BackendUnavailableError, match="AMX or AVX-512-BF16.*precision='fp32'"):
        load_backend("openvino", tiny["onnx"], precision="bf16")


def test_int8_round_trip(tiny, int8_model, held_out):
    path = int8_model["path"]
    meta = read_model_meta(path)  # the SDK's own reader accepts the artifact
    assert meta.precision == "int8" and meta.preprocess == read_model_meta(tiny["onnx"]).preprocess
    from export.to_onnx import op_counts

    assert op_counts(path).get("QuantizeLinear", 0) > 0
    b = load_backend("openvino", path)
    try:
        got = b.run(held_out)
        assert b.precision == "int8"
        if {"amx_int8", "avx512_vnni"} & cpu_features():
            assert any("i8" in k for k in b.kernels()), b.kernels()  # INT8 primitives really ran
    finally:
        b.close()
    par = compare("int8", _ort_logits(tiny["onnx"], held_out), got, meta.threshold)
    assert ovb.within_bound("int8", par.__dict__), par
    assert int8_model["report"]["passes"] and int8_model["report"]["n"] == 8


def test_int8_precision_mismatches_are_refused(tiny, int8_model):
    with pytest.raises(ModelLoadError, match="export.to_openvino"):
        load_backend("openvino", tiny["onnx"], precision="int8")
    with pytest.raises(ModelLoadError, match="runs as int8"):
        load_backend("openvino", int8_model["path"], precision="bf16")


def test_calibration_set_may_not_be_the_parity_set(tiny, int8_model, tmp_path):
    same = subprocess.run(script("to_openvino") + ["--onnx", str(tiny["onnx"]), "--calibration",
                          str(int8_model["calib"]), "--holdout", str(int8_model["calib"]), "--out",
                          str(tmp_path / "x.onnx")], capture_output=True, text=True, timeout=300)
    assert same.returncode == 2 and "never saw" in same.stderr
    mixed = _folder(tmp_path / "mixed", 2, 900)
    shutil.copy(next(int8_model["calib"].iterdir()), mixed / "copied.png")
    shared = subprocess.run(script("to_openvino") + ["--onnx", str(tiny["onnx"]), "--calibration",
                            str(int8_model["calib"]), "--holdout", str(mixed), "--out",
                            str(tmp_path / "y.onnx")], capture_output=True, text=True, timeout=300)
    assert shared.returncode == 2 and "shares 1 image" in shared.stderr
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.onnx").exists()


def test_cuda_arrays_and_bad_options_are_refused(tiny):
    with pytest.raises(ValueError, match="hint"):
        load_backend("openvino", tiny["onnx"], hint="fast")
    b = load_backend("openvino", tiny["onnx"])
    try:
        class FakeCuda:  # only the interface `device_array` reads
            __cuda_array_interface__ = {"shape": (1, 3, 224, 224), "typestr": "<f4", "data": (1, False)}

        with pytest.raises(InferenceError, match="CUDA array"):
            b.run(FakeCuda())
    finally:
        b.close()


# -- CPU features and the engine choice ----------------------------------------------------------

CPUINFO_AMX = "processor\t: 0\nflags\t\t: fpu avx2 fma avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8\n"
CPUINFO_ZEN3 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma f16c\n"


def test_cpu_features_and_class():
    assert ovb.isa_class(cpu_features(CPUINFO_AMX)) == "amx"
    assert ovb.isa_class(cpu_features(CPUINFO_ZEN3)) == "avx2"
    assert ovb.isa_class({"avx512f", "avx2", "fma"}) == "avx512"
    assert ovb.isa_class(set()) == "baseline" and cpu_features("no flags here") == frozenset()
    assert ovb.bf16_supported(cpu_features(CPUINFO_AMX))
    assert not ovb.bf16_supported(cpu_features(CPUINFO_ZEN3))


def _eligible(table, feats, precision, artifact="fp32"):
    cls = ovb.isa_class(feats)
    return [r for r in table if r["isa"] == cls and r.get("artifact", "fp32") == artifact
            and set(r["needs"]) <= set(feats) and ovb.within_bound(precision, r["parity"])]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_measured_table_choice_on_this_class(precision):
    table = ovb.load_engine_table()
    feats = cpu_features(CPUINFO_AMX)
    choice = ovb.choose_cpu_engine(feats, table, precision=precision)
    rows = _eligible(table, feats, precision)
    assert rows, "the checked-in table has rows for an AMX CPU"
    chosen = next(r for r in rows if (r["backend"], r["precision"]) == (choice.backend, choice.precision))
    assert all(float(chosen["ratio"]) >= float(r["ratio"]) for r in rows)
    if precision == "fp32":
        assert choice.precision == "fp32"  # a BF16 engine is past the FP32 bound
    assert choice.backend in choice.why and "amx" in choice.why


def test_choice_never_uses_instructions_the_cpu_lacks():
    table = ovb.load_engine_table()
    for feats in (cpu_features(CPUINFO_ZEN3), frozenset({"avx2", "fma", "avx512f"}), frozenset()):
        for precision in ("fp32", "bf16", "int8"):
            c = ovb.choose_cpu_engine(feats, table, precision=precision)
            eligible = {(r["backend"], r["precision"]) for r in _eligible(table, feats, precision)}
            assert c.precision != "bf16", (feats, precision, c)
            assert (c.backend, c.precision) in eligible or "baseline" in c.why


def test_choice_prefers_fastest_within_bound_and_falls_back():
    ok32 = {"max_abs_logit": 1e-6, "max_abs_prob": 2e-7, "agreement": 1.0}
    okbf = {"max_abs_logit": 4e-3, "max_abs_prob": 1e-3, "agreement": 1.0}
    table = [
        {"isa": "avx2", "backend": "onnxruntime", "precision": "fp32", "needs": [], "ratio": 1.0, "parity": ok32},
        {"isa": "avx2", "backend": "openvino", "precision": "fp32", "needs": ["avx2"], "ratio": 1.3, "parity": ok32},
        {"isa": "amx", "backend": "openvino", "precision": "bf16", "needs": ["amx_bf16"], "ratio": 4.8, "parity": okbf},
        {"isa": "amx", "backend": "openvino", "precision": "bf16", "needs": ["amx_bf16"], "ratio": 9.0,
         "parity": {"max_abs_prob": 0.3, "agreement": 0.8}, "measured": "a fast row past its bound"},
    ]
    zen = cpu_features(CPUINFO_ZEN3)
    assert ovb.choose_cpu_engine(zen, table, precision="bf16")[:2] == ("openvino", "fp32")
    assert ovb.choose_cpu_engine(zen, table, available=["onnxruntime"])[:2] == ("onnxruntime", "fp32")
    amx = cpu_features(CPUINFO_AMX)
    assert ovb.choose_cpu_engine(amx, table, precision="bf16")[:2] == ("openvino", "bf16")
    # FP32 asked on an AMX CPU: its class has no FP32 row within the bound -> the baseline, said so
    c = ovb.choose_cpu_engine(amx, table, precision="fp32")
    assert c[:2] == ("onnxruntime", "fp32") and "baseline" in c.why
    # an AVX-512 CPU without AMX: no avx512 rows measured -> the avx2 rows (a subset of its ISA)
    assert ovb.choose_cpu_engine({"avx2", "fma", "avx512f"}, table)[:2] == ("openvino", "fp32")
    with pytest.raises(ValueError, match="precision"):
        ovb.choose_cpu_engine(amx, table, precision="fp8")


def test_auto_choice_on_this_machine_is_a_table_row_it_can_run():
    c = ovb.auto_cpu_engine("bf16")
    rows = _eligible(ovb.load_engine_table(), cpu_features(), "bf16")
    assert (c.backend, c.precision) in {(r["backend"], r["precision"]) for r in rows} or "baseline" in c.why
    if c.precision == "bf16":
        assert HAS_BF16


def test_import_nsnet_sdk_does_not_import_openvino():
    code = "import sys, nsnet_sdk, nsnet_sdk.backends.openvino; sys.exit('openvino' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


# -- ONNX Runtime sharing the same cores ----------------------------------------------------------

def test_ort_spinning_is_off_on_the_cpu_provider_unless_asked(monkeypatch):
    pytest.importorskip("onnxruntime")
    from nsnet_sdk.ort_options import session_options_for

    def spin(**kw):
        so = session_options_for("fp32", kw.pop("provider", "CPUExecutionProvider"), **kw)
        return so.get_session_config_entry("session.intra_op.allow_spinning")

    monkeypatch.delenv("NSNET_ORT_SPINNING", raising=False)
    assert spin() == "0" and spin(provider=("CPUExecutionProvider", {})) == "0"
    assert spin(provider="CUDAExecutionProvider") == "1"
    assert spin(allow_spinning=True) == "1"
    monkeypatch.setenv("NSNET_ORT_SPINNING", "1")
    assert spin() == "1" and spin(allow_spinning=False) == "0"
