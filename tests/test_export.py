"""export/: folding, ONNX (FP32 / FP16 / INT8 / fused), metadata, CLIs, TensorRT (skipped without it).

Run directories are real `training.train --epochs 0` outputs with random weights; each is built once
per test run (session fixtures in tests/conftest.py). ViT-B-32 and ViT-L-14 checks are marked slow (they run in CI).
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from _export_util import make_run, random_inputs, script, torch_logits, weight_matmuls  # noqa: E402

from export import ort_run  # noqa: E402
from export.fold import fold_model, folded_weights  # noqa: E402
from export.parity import artifact_logits, compare, reference_logits  # noqa: E402
from export.to_onnx import CheckpointError, export_model, export_onnx  # noqa: E402
from nsnet_sdk.artifact import read_onnx_metadata as read_metadata  # noqa: E402
from nsnet_sdk.ort_options import session_options_for  # noqa: E402
from nsnet_sdk.model import load_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tiny_artifacts):
    return tiny_artifacts["run"]  # the session's nsnet-tiny run (tests/conftest.py); read-only


@pytest.fixture(scope="module")
def tiny_model(tiny):
    return load_checkpoint(tiny)


@pytest.fixture(scope="module")
def tiny_fp32(tiny, tmp_path_factory):
    return export_model(tiny, tmp_path_factory.mktemp("onnx") / "nsnet.onnx")


# ---------------------------------------------------------------- folding


def _check_fold(model, n: int, seed: int = 3) -> float:
    images = torch.from_numpy(random_inputs(n, seed))
    folded = fold_model(model)
    with torch.inference_mode():
        ref = model(images)
        logit, prob = folded(images)
    assert logit.shape == (n,) and prob.shape == (n,)
    torch.testing.assert_close(prob, torch.sigmoid(logit))
    return float((logit.double() - ref.double()).abs().max())


def test_fold_equivalence_tiny(tiny_model):
    model, _ = tiny_model
    assert _check_fold(model, 8) <= 1e-5


def test_folded_weights_equal_explicit_projector(tiny_model):
    # Independent algebra: form P = I − UUᵀ explicitly (the fold never does) and multiply through.
    model, _ = tiny_model
    u = model.nullspace.basis.double()
    p = torch.eye(u.shape[0], dtype=torch.float64) - u @ u.T
    want = model.visual.proj.double() @ p @ model.head[0].weight.double().T
    w = folded_weights(model)
    torch.testing.assert_close(w["proj"].double(), want, rtol=0, atol=1e-6)
    want_out = model.classifier.weight.double() @ model.head[2].weight.double()
    torch.testing.assert_close(w["out_weight"].double(), want_out, rtol=0, atol=1e-6)


def test_fold_changes_with_basis(tiny_model):
    # The projector must really be in the folded weights: another basis gives another proj'.
    model, _ = tiny_model
    before = folded_weights(model)["proj"]
    saved = model.nullspace.basis.clone()
    try:
        q, _ = torch.linalg.qr(torch.randn_like(saved))
        model.nullspace.basis.copy_(q)
        assert (folded_weights(model)["proj"] - before).abs().max() > 1e-3
    finally:
        model.nullspace.basis.copy_(saved)



def test_fold_refuses_a_norm_it_cannot_express(tiny_model):
    # A tower whose final norm is not LayerNorm must be refused, not folded without it.
    import copy

    model, _ = tiny_model
    other = copy.deepcopy(model)
    other.visual.ln_post = torch.nn.RMSNorm(other.visual.ln_post.normalized_shape)
    with pytest.raises(NotImplementedError, match="ln_post.*RMSNorm"):
        fold_model(other)

def _fold_error(folded, images: np.ndarray, ref: np.ndarray) -> float:
    """max |Δlogit| of ``folded`` on ``images`` against the unfolded model's ``ref`` logits."""
    n = len(images)
    with torch.inference_mode():
        logit, prob = folded(torch.from_numpy(images))
    assert logit.shape == (n,) and prob.shape == (n,)
    torch.testing.assert_close(prob, torch.sigmoid(logit))
    return float(np.abs(logit.double().numpy() - np.asarray(ref, np.float64)).max())


@pytest.fixture(scope="module")
def real_export(real_run, tmp_path_factory):
    """``real_export(backbone)``: the one export of a real architecture every check of it reads
    (ViT-L-14: FP32 with external data; ViT-B-32: fused), with the fold checked on the very model
    export_model folded and exported, against the unfolded logits it computed for its parity check.
    Both are observed, not replaced, so each architecture is loaded, folded and run once."""
    import export.fold
    import export.to_onnx

    options = {"ViT-L-14": {}, "ViT-B-32": {"optimize": True}}
    done: dict[str, tuple] = {}

    def get(backbone: str):
        if backbone not in done:
            seen: dict = {}

            def fold_spy(model, _fold=export.fold.fold_model):
                seen["folded"] = _fold(model)
                return seen["folded"]

            def reference_spy(model, images, *args, _ref=export.to_onnx.reference_logits, **kw):
                seen["images"], seen["ref"] = images, _ref(model, images, *args, **kw)
                return seen["ref"]

            out = tmp_path_factory.mktemp(backbone) / "nsnet.onnx"
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(export.fold, "fold_model", fold_spy)
                mp.setattr(export.to_onnx, "reference_logits", reference_spy)
                res = export_model(real_run(backbone), out, parity_n=2, **options[backbone])
            assert len(seen["images"]) == 2
            done[backbone] = (res, _fold_error(seen["folded"], seen["images"], seen["ref"]))
        return done[backbone]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["ViT-B-32", "ViT-L-14"])
def test_fold_equivalence_real_architectures(backbone, real_export):
    _, fold_error = real_export(backbone)
    assert fold_error <= 1e-5


# ---------------------------------------------------------------- ONNX FP32


def test_onnx_fp32_parity_and_io(tiny, tiny_model, tiny_fp32):
    model, _ = tiny_model
    path = tiny_fp32.path
    sess = ort.InferenceSession(str(path), session_options_for("fp32", "cpu"), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == "images" and inp.type == "tensor(float)" and inp.shape[1:] == [3, 224, 224]
    assert isinstance(inp.shape[0], str)  # dynamic batch
    assert [o.name for o in sess.get_outputs()] == ["logit", "prob_fake"]
    for n in (1, 5):  # two batch sizes through one session: the batch axis really is dynamic
        x = random_inputs(n, seed=10 + n)
        logit, prob = sess.run(None, {"images": x})
        assert logit.shape == (n,) and prob.shape == (n,)
        assert np.abs(logit - torch_logits(model, x)).max() <= 1e-4
        np.testing.assert_allclose(prob, 1 / (1 + np.exp(-logit.astype(np.float64))), atol=1e-6)
    onnx.checker.check_model(str(path))


def _macs(shapes):
    return sum(int(np.prod(s)) for s in shapes)


def test_no_separate_projection_in_graph(tiny_model, tiny_fp32, tmp_path):
    """Against plain CLIP's visual tower exported the same way: the only differences are the Q/K/V
    split (same MACs, 2 more MatMuls per block) and proj (width×d) becoming proj' (width×hidden)
    plus the 1-output classifier. An unfolded projector would add d×d (or d×k, k×d) and d×hidden."""
    model, _ = tiny_model
    plain = tmp_path / "plain.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.visual, (torch.zeros(2, 3, 224, 224),), str(plain), input_names=["images"],
                          dynamic_axes={"images": {0: "b"}}, opset_version=17, dynamo=False)
    plain_w, ours = weight_matmuls(plain), weight_matmuls(tiny_fp32.path)
    layers = len(model.visual.transformer.resblocks)
    width, d = model.visual.proj.shape
    hidden = model.head[0].out_features
    assert len(ours) == len(plain_w) + 2 * layers + 1
    assert _macs(ours) == _macs(plain_w) - width * d + width * hidden + hidden


# ---------------------------------------------------------------- fused graph, INT8, FP16


def test_optimize_fuses_attention_layernorm_gelu(tiny, tiny_model, tmp_path):
    model, _ = tiny_model
    res = export_model(tiny, tmp_path / "opt.onnx", optimize=True)
    layers = len(model.visual.transformer.resblocks)
    ops = _ops(res.path)
    assert ops.get("Attention", 0) == layers and "Softmax" not in ops
    assert ops.get("SkipLayerNormalization", 0) >= 2 * layers - 1
    assert ops.get("BiasGelu", 0) + ops.get("Gelu", 0) + ops.get("FastGelu", 0) >= layers
    x = random_inputs(6, seed=21)
    logit = artifact_logits(res.path, x)
    assert np.abs(logit - torch_logits(model, x)).max() <= 1e-4


def _ops(path):
    from export.to_onnx import op_counts

    return op_counts(path)


@pytest.fixture(scope="module")
def tiny_int8(tiny, tmp_path_factory):
    return export_model(tiny, tmp_path_factory.mktemp("int8") / "int8.onnx", int8=True)


def test_int8_is_quantised_and_correlates(tiny_model, tiny_int8):
    model, _ = tiny_model
    res = tiny_int8
    assert read_metadata(res.path)["nsnet.precision"] == "int8"
    ops = _ops(res.path)
    assert ops.get("MatMulInteger", 0) + ops.get("DynamicQuantizeMatMul", 0) + ops.get("QAttention", 0) > 0
    x = random_inputs(32, seed=5)
    logit = artifact_logits(res.path, x)
    ref = torch_logits(model, x)
    assert np.corrcoef(ref, logit)[0, 1] >= 0.99
    assert np.abs(logit - ref).max() > 0  # really quantised, not the FP32 graph relabelled


def test_int8_weights_are_seven_bit_so_avx2_kernels_cannot_saturate(tiny, tmp_path):
    # ORT's u8×s8 kernels on x86 without VNNI add product pairs in int16: |w| ≤ 64 keeps every
    # pair in range (255·64·2 < 32767); full-range weights saturate and scramble the logits.
    from onnx import numpy_helper

    res = export_model(tiny, tmp_path / "int8.onnx", int8=True, parity_n=0)
    model = onnx.load(str(res.path))
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    assert weights
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64


def _value_types(model) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


def test_fp16_graph_keeps_io_and_norms_in_fp32(tiny, tmp_path):
    res = export_model(tiny, tmp_path / "fp16.onnx", fp16=True)
    model = onnx.load(str(res.path))
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [f32]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [f32, f32]
    types = _value_types(model)
    big = [t for t in model.graph.initializer if len(t.dims) == 2]
    assert big and all(t.data_type == f16 for t in big)  # weights really FP16
    guarded = [n for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax")]
    assert guarded
    for n in guarded:
        assert types[n.input[0]] == f32 and types[n.output[0]] == f32, n.name
    assert any(n.op_type == "MatMul" and types.get(n.output[0]) == f16 for n in model.graph.node)


def test_fp16_parity_in_child_process(tiny, tiny_model, tmp_path):
    # Run in a child process: an ONNX Runtime crash is reported here as a failure, not a dead run.
    model, _ = tiny_model
    path = export_onnx(tiny, tmp_path / "fp16.onnx", fp16=True)
    x = random_inputs(21, seed=7)  # 16 + 5: two batches through one child
    backend = ort_run.IsolatedOrtBackend(path)
    try:
        assert backend.metadata["nsnet.precision"] == "fp16" and backend.device == "CPUExecutionProvider"
        assert backend._proc.pid != __import__("os").getpid() and backend._proc.poll() is None
        logit = artifact_logits(path, x, isolated=True)
    finally:
        backend.close()
    assert backend._proc.returncode == 0  # closed cleanly, not killed
    ref = torch_logits(model, x)
    prob = 1 / (1 + np.exp(-logit))
    assert np.abs(prob - 1 / (1 + np.exp(-ref))).max() <= 5e-3
    assert np.mean((prob >= 0.5) == (ref >= 0)) >= 0.999


_POPEN = subprocess.Popen


def _crash_child(monkeypatch, code: str):
    """Make the isolated backend's child run ``code`` (a stand-in for ONNX Runtime dying)."""
    def popen(cmd, **kw):
        return _POPEN([sys.executable, "-c", code], **kw)

    monkeypatch.setattr(ort_run.subprocess, "Popen", popen)


def test_isolated_runner_reports_a_crash(tmp_path, monkeypatch):
    # A child that dies by a signal, at load or in the middle of a batch, must come back as
    # OrtCrashError naming the signal, never hang or take the caller down.
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"\x00")
    _crash_child(monkeypatch, "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    with pytest.raises(ort_run.OrtCrashError, match="SIGSEGV"):
        ort_run.IsolatedOrtBackend(bad)
    # Loads (says hello), then dies on the first batch.
    _crash_child(monkeypatch, textwrap.dedent("""
        import os, signal, sys
        from export.ort_run import _JSON, _receive, _send
        out = os.fdopen(1, "wb", buffering=0)
        _send(out, _JSON, b'{"metadata": {}, "device": "CPUExecutionProvider"}')
        _receive(sys.stdin.buffer)
        sys.stderr.write("about to crash\\n"); sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGSEGV)
    """))
    backend = ort_run.IsolatedOrtBackend(bad)
    with pytest.raises(ort_run.OrtCrashError, match="SIGSEGV.*running a batch of 2.*about to crash"):
        backend.run(random_inputs(2))


def test_isolated_runner_load_error_is_reported_with_its_type(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"garbage")
    with pytest.raises(ort_run.OrtCrashError, match="ModelLoadError.*junk.onnx"):
        ort_run.IsolatedOrtBackend(junk)


def test_session_options_by_precision_and_provider():
    lvl = ort.GraphOptimizationLevel
    assert session_options_for("fp16", "CPUExecutionProvider").graph_optimization_level == lvl.ORT_ENABLE_EXTENDED
    assert session_options_for("fp16", "cpu").graph_optimization_level == lvl.ORT_ENABLE_EXTENDED
    assert session_options_for("fp16", ("CUDAExecutionProvider", {})).graph_optimization_level == lvl.ORT_ENABLE_ALL
    assert session_options_for("fp32", "cpu").graph_optimization_level == lvl.ORT_ENABLE_ALL
    assert session_options_for("int8", "cpu", intra_op_threads=3).intra_op_num_threads == 3
    with pytest.raises(ValueError):
        session_options_for("bf16", "cpu")


# ---------------------------------------------------------------- metadata


def test_metadata_carries_the_run_directorys_own_values(tiny, tiny_fp32):
    # Every expected value is read straight from the run directory's files (nsnet.json, the
    # safetensors header, the weights' bytes), never through the code that writes the metadata.
    from nsnet_sdk.artifact import ModelMeta

    run_json = json.loads((tiny / "nsnet.json").read_text())
    weights = (tiny / "nsnet.safetensors").read_bytes()
    header = json.loads(weights[8:8 + int.from_bytes(weights[:8], "little")])
    md = read_metadata(tiny_fp32.path)
    assert md["nsnet.format"] == "nsnet-onnx/1"
    assert md["nsnet.backbone"] == run_json["backbone"] == "nsnet-tiny"
    assert json.loads(md["nsnet.preprocess"]) == run_json["preprocess"]
    assert float(md["nsnet.threshold"]) == run_json["threshold"]
    assert md["nsnet.precision"] == "fp32"
    assert int(md["nsnet.projector_rank"]) == header["nullspace.basis"]["shape"][1] == run_json["projector"]["rank"]
    assert md["nsnet.source_sha256"] == hashlib.sha256(weights).hexdigest()
    parsed = ModelMeta.parse(md, str(tiny_fp32.path))  # the SDK accepts what we write
    assert parsed.threshold == run_json["threshold"] and parsed.precision == "fp32"
    assert parsed.preprocess.to_dict() == run_json["preprocess"]


def test_external_data_when_large(tiny, tmp_path, monkeypatch):
    import export.to_onnx as to_onnx

    monkeypatch.setattr(to_onnx, "EXTERNAL_DATA_BYTES", 1000)  # force the large-model path on tiny
    path = export_onnx(tiny, tmp_path / "ext.onnx")
    data = tmp_path / "ext.onnx.data"
    assert data.is_file() and data.stat().st_size > path.stat().st_size
    onnx.checker.check_model(str(path))
    assert read_metadata(path)["nsnet.precision"] == "fp32"
    # Re-export over it: the data file is replaced, not appended to.
    size = data.stat().st_size
    export_onnx(tiny, path)
    assert data.stat().st_size == size


@pytest.mark.slow
def test_vit_l14_export_external_data_and_parity(real_export):
    res, _ = real_export("ViT-L-14")
    out = res.path
    assert res.parity.max_abs_logit <= 1e-4
    data = out.with_name("nsnet.onnx.data")
    assert data.is_file() and data.stat().st_size > 1_000_000_000 and out.stat().st_size < 10_000_000
    onnx.checker.check_model(str(out))
    layers = 24
    shapes = weight_matmuls(out)
    # 6 per block (q, k, v, out, fc, proj), proj' (width×hidden), classifier; no d×d (768×768).
    assert len(shapes) == 6 * layers + 2 and (1024, 512) in shapes and (768, 768) not in shapes


# ---------------------------------------------------------------- CLIs


def _cli(name, *args, cwd=None):
    return subprocess.run([*script(name), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_to_onnx_cli_missing_checkpoint(tmp_path):
    out = tmp_path / "x.onnx"
    proc = _cli("to_onnx", "--ckpt", tmp_path / "nope", "--out", out)
    assert proc.returncode == 2
    assert "checkpoint directory not found" in proc.stderr and "nope" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_to_onnx_cli_corrupt_checkpoint(tiny, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "nsnet.json").write_text((tiny / "nsnet.json").read_text())
    (bad / "nsnet.safetensors").write_bytes((tiny / "nsnet.safetensors").read_bytes()[:5000])
    out = tmp_path / "x.onnx"
    proc = _cli("to_onnx", "--ckpt", bad, "--out", out)
    assert proc.returncode == 2 and "cannot load checkpoint" in proc.stderr and str(bad) in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
    with pytest.raises(CheckpointError):
        export_onnx(bad, out)


def test_to_onnx_cli_usage_error(tmp_path):
    proc = _cli("to_onnx", "--out", tmp_path / "x.onnx")
    assert proc.returncode == 2 and "--ckpt" in proc.stderr


def test_to_onnx_cli_prints_one_line_and_writes_the_report_to_json(tiny, tmp_path):
    out, report = tmp_path / "cli.onnx", tmp_path / "export.json"
    proc = _cli("to_onnx", "--ckpt", tiny, "--out", out, "--json", report)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(report.read_text())
    assert rep["metadata"] == read_metadata(out)
    assert rep["parity"]["max_abs_logit"] <= 1e-4
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wrote {out} (")  # the line docs/export.md shows
    assert "precision fp32" in lines[0] and f"parity on {rep['parity']['n']} inputs" in lines[0]


def test_verify_cli_passes_and_fails(tiny, tiny_fp32, tiny_int8, tmp_path):
    from export.verify import INT8_MIN_AGREEMENT, INT8_MIN_CORR

    fp16 = export_onnx(tiny, tmp_path / "fp16.onnx", fp16=True)
    report = tmp_path / "r.json"
    ok = _cli("verify", "--ckpt", tiny, "--onnx", tiny_fp32.path, "--onnx-fp16", fp16,
              "--onnx-int8", tiny_int8.path, "--synthetic", 24, "--json", report)
    rows = {r["name"]: r for r in json.loads(report.read_text())["rows"]}
    assert rows["onnx"]["max_abs_logit"] <= 1e-4 and rows["onnx-fp16"]["max_abs_prob"] <= 5e-3
    assert "onnx" in ok.stdout and "fp16" in ok.stdout and "24 inputs" in ok.stdout
    i8 = rows["onnx-int8"]  # held to its own bound, stated under the table
    assert i8["passes"] == (i8["logit_corr"] >= INT8_MIN_CORR and i8["agreement"] >= INT8_MIN_AGREEMENT)
    assert f"int8 corr ≥ {INT8_MIN_CORR:g}" in ok.stdout.splitlines()[-1]
    assert ok.returncode == (0 if i8["passes"] else 1), ok.stdout + ok.stderr

    # A model of another checkpoint must fail the bound (exit 1) and be flagged.
    other = make_run(tmp_path / "other", "nsnet-tiny", seed=1)  # tiny's seed is 0
    wrong = export_onnx(other, tmp_path / "other.onnx")
    bad = _cli("verify", "--ckpt", tiny, "--onnx", wrong, "--synthetic", 8)
    assert bad.returncode == 1 and "FAIL" in bad.stdout and "source_sha256 differs" in bad.stdout


def test_verify_cli_images_dir(tiny, tiny_fp32, tmp_path):
    import cv2

    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(d / f"{i}.png"), rng.integers(0, 256, (250 + 10 * i, 300, 3), dtype=np.uint8))
    (d / "broken.jpg").write_bytes(b"not an image")
    proc = _cli("verify", "--ckpt", tiny, "--onnx", tiny_fp32.path, "--images", d)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 inputs" in proc.stdout and "broken.jpg" in proc.stderr


def test_verify_streams_inputs_in_bounded_batches(tmp_path, capsys):
    # A folder of any size fits: inputs come 16 at a time (broken files skipped and named), and
    # the synthetic set is the same images whatever the batch size.
    import cv2

    from export.verify import image_dir_batches, synthetic_batches
    from nsnet_sdk.pipeline import DEFAULT, load_image, preprocess

    rng = np.random.default_rng(2)
    for i in range(19):
        cv2.imwrite(str(tmp_path / f"{i:02d}.png"), rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8))
    (tmp_path / "07b.jpg").write_bytes(b"not an image")
    got = list(image_dir_batches(tmp_path, DEFAULT))
    assert [len(b) for b in got] == [16, 3]
    assert "07b.jpg" in capsys.readouterr().err
    first = preprocess(load_image(tmp_path / "00.png"), DEFAULT)
    np.testing.assert_array_equal(got[0][0], first)
    a = np.concatenate(list(synthetic_batches(7, DEFAULT, seed=3, batch=16)))
    b = list(synthetic_batches(7, DEFAULT, seed=3, batch=3))
    assert [len(x) for x in b] == [3, 3, 1]
    np.testing.assert_array_equal(a, np.concatenate(b))


def test_verify_cli_errors(tiny, tiny_fp32, tmp_path):
    missing = _cli("verify", "--ckpt", tmp_path / "nope", "--onnx", tiny_fp32.path, "--synthetic", 2)
    assert missing.returncode == 2 and "nope" in missing.stderr and "Traceback" not in missing.stderr
    no_model = _cli("verify", "--ckpt", tiny, "--onnx", tmp_path / "none.onnx")
    assert no_model.returncode == 2 and "none.onnx" in no_model.stderr
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"garbage")
    bad = _cli("verify", "--ckpt", tiny, "--onnx", junk, "--synthetic", 2)
    assert bad.returncode == 1 and "FAIL" in bad.stdout and "Traceback" not in bad.stderr



def test_verify_runs_every_file_given_as_fp16_in_a_child(tiny_fp32):
    # A file under --onnx-fp16 whose metadata does not say fp16 (here: the FP32 export) still runs
    # isolated: if it is an FP16 graph, an ONNX Runtime crash must be a failed row, not a dead verify.
    from export import verify

    check = verify._onnx_check("onnx-fp16", tiny_fp32.path, "fp16")
    check.open(read_metadata(tiny_fp32.path)["nsnet.source_sha256"])
    try:
        assert isinstance(check.backend, ort_run.IsolatedOrtBackend)
        assert check.precision == "fp32"  # the bound is the file's own precision
    finally:
        check.close()
    plain = verify._onnx_check("onnx", tiny_fp32.path, "fp32")
    plain.open("another sha")
    try:
        assert not isinstance(plain.backend, ort_run.IsolatedOrtBackend) and plain.backend.name == "onnxruntime"
        assert plain.warning and "source_sha256 differs" in plain.warning
    finally:
        plain.close()


def test_parity_bounds_the_probability_detector_reports_not_the_graphs_prob_fake():
    # compare() takes logits only: the probability it bounds is sigmoid(logit), what Detector computes.
    ref = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    near = compare("fp16", ref, ref + 4e-3, 0.5)
    assert near.max_abs_prob == pytest.approx(np.max(np.abs(1 / (1 + np.exp(-ref - 4e-3)) - 1 / (1 + np.exp(-ref)))))
    assert near.max_abs_prob < 5e-3 and near.passes() and not compare("fp32", ref, ref + 4e-3, 0.5).passes()
    flipped = compare("fp16", ref, np.where(ref == 0.0, -1e-3, ref), 0.5)  # one decision flips at 0.5
    assert flipped.agreement == pytest.approx(0.8) and not flipped.passes()
    with pytest.raises(ValueError):
        compare("fp32", ref, ref[:3], 0.5)
    assert compare("int8", ref, ref + 0.3, 0.5).passes()  # export reports INT8; verify bounds it (below)
    assert not compare("bf16", ref, ref, 0.5).passes()  # a label without a bound is no pass


def test_verify_holds_int8_to_its_own_bound():
    from export.verify import INT8_MIN_AGREEMENT, INT8_MIN_CORR, within_bounds

    ref = np.linspace(-3, 3, 100)
    assert within_bounds(compare("int8", ref, ref + 0.02, 0.5))  # small shift: same decisions, corr 1
    # 90 % agreement (9 decisions of 100 flip) with a correlation still above 0.99: past the bound.
    flipped = ref.copy()
    flipped[45:55] = -flipped[45:55]
    p = compare("int8", ref, flipped, 0.5)
    assert p.agreement < INT8_MIN_AGREEMENT and not within_bounds(p)
    noisy = ref + np.random.default_rng(0).normal(0, 0.6, ref.size) * (np.abs(ref) > 2)  # tails only
    q = compare("int8", ref, noisy, 0.5)
    assert q.agreement == 1.0 and q.logit_corr < INT8_MIN_CORR and not within_bounds(q)
    assert not within_bounds(compare("int8", ref, np.zeros_like(ref), 0.5))  # constant output: no corr
    assert within_bounds(compare("fp16", ref, ref, 0.5)) and not within_bounds(compare("fp32", ref, ref + 1, 0.5))

# ---------------------------------------------------------------- TensorRT


def _have_trt() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed"
    from export.to_trt import cuda_device_count

    if cuda_device_count() == 0:
        return "no CUDA device visible to the CUDA runtime (cuda-python)"
    return None


def test_to_trt_cli_clear_error_without_tensorrt(tiny_fp32, tmp_path):
    if _have_trt() is None:
        pytest.skip("TensorRT and CUDA are present: the missing-TensorRT path cannot be exercised")
    proc = _cli("to_trt", "--onnx", tiny_fp32.path, "--out", tmp_path / "x.engine", "--fp16")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.engine").exists()


def test_to_trt_cli_damaged_onnx_is_one_line_error(tmp_path):
    # Read before TensorRT is needed, so this holds with or without it.
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"garbage")
    proc = _cli("to_trt", "--onnx", junk, "--out", tmp_path / "x.engine", "--fp16")
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and "junk.onnx" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x.engine").exists()


def test_only_fp32_engines_clear_tf32():
    # TF32 is TensorRT's default: left on, an engine labelled fp32 would compute in TF32.
    from export.to_trt import clears_tf32

    assert clears_tf32("fp32") and not clears_tf32("fp16")


class _TimingCacheConfig:
    """The two IBuilderConfig calls set_timing_cache makes, with TensorRT's documented results:
    set_timing_cache returns False for a cache made on another device/version unless
    ignore_mismatch is True."""

    def __init__(self, foreign: bool, refuse_fresh: bool = False):
        self.foreign, self.refuse_fresh, self.attached = foreign, refuse_fresh, []

    def create_timing_cache(self, data: bytes):
        return ("cache", bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        ok = ignore_mismatch or not cache[1] or not self.foreign
        ok = ok and not (self.refuse_fresh and not cache[1])
        if ok:
            self.attached.append(cache[1])
        return ok


def test_a_timing_cache_from_another_gpu_is_refused_and_a_fresh_one_started():
    from export.to_trt import TrtBuildError, set_timing_cache

    said = []
    mine = _TimingCacheConfig(foreign=False)
    assert set_timing_cache(mine, b"saved here", said.append) is True and mine.attached == [b"saved here"]
    other = _TimingCacheConfig(foreign=True)
    assert set_timing_cache(other, b"saved on another GPU", said.append) is False
    assert other.attached == [b""] and "fresh" in said[-1]  # rebuilt, never used with ignore_mismatch
    none = _TimingCacheConfig(foreign=False)
    assert set_timing_cache(none, b"", said.append) is False and none.attached == [b""]
    with pytest.raises(TrtBuildError, match="fresh timing cache"):
        set_timing_cache(_TimingCacheConfig(foreign=True, refuse_fresh=True), b"x", said.append)


def test_cuda_is_detected_through_the_cuda_runtime_without_torch():
    # A torch-free TensorRT install must work: the CUDA probe may not import torch.
    code = ("import sys; from export.to_trt import cuda_device_count; n = cuda_device_count(); "
            "print(n, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "False"
    try:
        from nsnet_sdk.backends.tensorrt import import_cudart

        import_cudart()
    except ImportError:  # no cuda-python: the TensorRT path is unavailable, so it counts no device
        assert int(out[0]) == 0
        return
    assert int(out[0]) == torch.cuda.device_count()  # an independent count of the same devices


@pytest.mark.gpu
def test_tensorrt_fp16_engine_parity(tiny, tiny_model, tiny_fp32, tmp_path):
    reason = _have_trt()
    if reason:
        pytest.skip(reason)
    from export.to_trt import build_engine

    model, _ = tiny_model
    cache = tmp_path / "timing.cache"
    engine = build_engine(tiny_fp32.path, tmp_path / "nsnet.engine", fp16=True, min_batch=1, opt_batch=4,
                          max_batch=8, timing_cache=cache)
    side = json.loads((tmp_path / "nsnet.engine.json").read_text())
    assert side["nsnet.precision"] == "fp16" and side["nsnet.trt.max_batch"] == 8
    assert side["nsnet.source_sha256"] == read_metadata(tiny_fp32.path)["nsnet.source_sha256"]
    assert cache.is_file() and cache.stat().st_size > 0
    x = random_inputs(11, seed=4)  # > max_batch: split across two executions
    logit = artifact_logits(engine, x)  # the SDK's TensorRT backend, batch range from the profile
    ref = reference_logits(model, x)
    assert np.abs(1 / (1 + np.exp(-logit)) - 1 / (1 + np.exp(-ref))).max() <= 5e-3


def test_derive_variants_from_fp32_file(tiny_fp32, tmp_path):
    from export.to_onnx import ExportError, derive_onnx

    x = random_inputs(6, seed=9)
    base = artifact_logits(tiny_fp32.path, x)
    fused = derive_onnx(tiny_fp32.path, tmp_path / "opt.onnx", optimize=True)
    assert _ops(fused).get("Attention", 0) == 2 and read_metadata(fused)["nsnet.precision"] == "fp32"
    assert np.abs(artifact_logits(fused, x) - base).max() <= 1e-4
    q = derive_onnx(tiny_fp32.path, tmp_path / "q.onnx", int8=True)
    md = read_metadata(q)
    assert md["nsnet.precision"] == "int8" and _ops(q).get("QAttention", 0) == 2
    assert {k: v for k, v in md.items() if k != "nsnet.precision"} == \
        {k: v for k, v in read_metadata(tiny_fp32.path).items() if k != "nsnet.precision"}
    with pytest.raises(ExportError, match="FP32 export"):
        derive_onnx(q, tmp_path / "again.onnx", optimize=True)


def test_quick_gelu_tower_folds_and_fuses(tiny, tmp_path):
    """OpenAI-pretrained towers use QuickGELU (x·σ(1.702x)); fold, parity and attention fusion hold."""
    from nsnet_sdk.model import read_meta, save_checkpoint
    from nsnet_sdk.model import NSNet
    from training.backbone import load_clip

    clip, _, quick = load_clip("nsnet-tiny", None, quick_gelu=True)
    assert quick
    basis, _ = torch.linalg.qr(torch.randn(64, 9))
    model = NSNet(clip.visual, basis).eval()
    meta = dict(read_meta(tiny), quick_gelu=True)
    run = save_checkpoint(model, tmp_path / "qg", meta)
    reloaded, _ = load_checkpoint(run)
    assert _check_fold(reloaded, 4) <= 1e-5
    res = export_model(run, tmp_path / "qg.onnx", optimize=True)
    assert res.fused.get("Attention", 0) == 2 and res.parity.max_abs_logit <= 1e-4


@pytest.mark.slow
def test_vit_b32_fused_export_parity(real_export):
    # Real head count (12 × 64): every block's attention fuses and parity holds on the fused graph.
    res, _ = real_export("ViT-B-32")
    assert res.fused.get("Attention", 0) == 12 and res.fused.get("SkipLayerNormalization", 0) >= 23
    assert res.parity.max_abs_logit <= 1e-4
