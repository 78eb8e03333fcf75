"""Detector API, metadata handling and the batch pipeline, on a small stand-in ONNX model with the
exact NS-Net I/O and metadata contract (tests/_sdk_util.py). Real-model parity: test_sdk_parity.py."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from _sdk_util import (build_stand_in_onnx, contract_metadata, stand_in_logit, textured,
                       write_engine_pair)
from nsnet_sdk import (BackendOptions, BackendUnavailableError, Detector, ImageDecodeError, InputOptions,
                       ModelLoadError, Prediction, PreprocessMismatchError)
from nsnet_sdk.artifact import read_onnx_metadata
from nsnet_sdk.pipeline import DEFAULT, PatchConfig, preprocess


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_stand_in_onnx(tmp_path_factory.mktemp("standin") / "nsnet.onnx")


@pytest.fixture(scope="module")
def det(model) -> Detector:
    return Detector(model, options=InputOptions(workers=2))


def pictures(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [textured(int(rng.integers(40, 300)), int(rng.integers(40, 300)), seed=seed + i)
            for i in range(n)]


def torch_cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def test_scores_are_the_model_output_on_the_preprocessed_mosaic(det):
    imgs = pictures(11)
    preds = det.predict(imgs, batch_size=4)
    expected = stand_in_logit(np.stack([preprocess(im) for im in imgs]))
    assert [p.source for p in preds] == [f"<array #{i}>" for i in range(11)]
    logits = np.array([p.logit for p in preds])
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose([p.prob_fake for p in preds], sigmoid(logits), rtol=1e-12)
    assert [p.is_fake for p in preds] == [p.prob_fake >= 0.5 for p in preds]
    assert all(p.error is None and p.ok for p in preds)
    assert np.ptp(logits) > 0.1, "stand-in should separate different pictures"


def test_single_input_returns_one_prediction_and_collections_a_list(det):
    img = pictures(1)[0]
    one = det.predict(img)
    assert isinstance(one, Prediction) and one.source == "<array #0>"
    stack = np.stack([img, img])  # a 4-D array is a stack of images
    two = det.predict(stack)
    assert isinstance(two, list) and len(two) == 2 and two[0].logit == pytest.approx(one.logit)
    gen = det.predict(iter([img]))
    assert isinstance(gen, list) and gen[0].logit == pytest.approx(one.logit)
    assert det.predict([]) == []


@pytest.mark.parametrize("workers,batch_size", [(0, 1), (0, 7), (3, 1), (3, 5), (2, 64)])
def test_results_do_not_depend_on_workers_or_batch_size(det, workers, batch_size):
    imgs = pictures(13, seed=3)
    base = [p.logit for p in det.predict(imgs, workers=0, batch_size=13)]
    got = det.predict(imgs, workers=workers, batch_size=batch_size)
    np.testing.assert_allclose([p.logit for p in got], base, rtol=1e-6, atol=1e-6)


def test_threshold_comes_from_the_model_and_can_be_overridden(tmp_path):
    path = build_stand_in_onnx(tmp_path / "m.onnx", metadata=contract_metadata(threshold=0.25))
    d = Detector(path, options=InputOptions(workers=0))
    assert d.threshold == 0.25
    imgs = pictures(8, seed=5)
    preds = d.predict(imgs)
    assert [p.is_fake for p in preds] == [p.prob_fake >= 0.25 for p in preds]
    d2 = Detector(path, threshold=0.999, options=InputOptions(workers=0))
    assert d2.threshold == 0.999
    assert [p.is_fake for p in d2.predict(imgs)] == [p.prob_fake >= 0.999 for p in preds]
    for bad in (-0.1, 1.5, float("nan"), "x"):
        with pytest.raises(ValueError):
            Detector(path, threshold=bad)


def test_preprocess_override_must_agree_unless_forced(model):
    same = PatchConfig.from_dict(DEFAULT.to_dict())
    assert Detector(model, preprocess=same, options=InputOptions(workers=0)).config == DEFAULT
    assert Detector(model, preprocess=DEFAULT.to_dict(), options=InputOptions(workers=0)).config == DEFAULT
    other = PatchConfig(patch=16, grid=14)  # same 224 input side, different selection
    with pytest.raises(PreprocessMismatchError, match="contradicts"):
        Detector(model, preprocess=other)
    forced = Detector(model, preprocess=other, force=True, options=InputOptions(workers=0))
    assert forced.config == other
    img = pictures(1, seed=9)[0]
    assert forced.predict(img).logit == pytest.approx(
        float(stand_in_logit(preprocess(img, other)[None])[0]), abs=1e-5)


def test_unusable_models_raise_model_load_error(tmp_path, model):
    with pytest.raises(ModelLoadError, match="not found"):
        Detector(tmp_path / "missing.onnx")
    (tmp_path / "weights.pt").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="unknown model type"):
        Detector(tmp_path / "weights.pt")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(ModelLoadError, match="nsnet.json"):
        Detector(tmp_path / "emptydir")
    (tmp_path / "garbage.onnx").write_bytes(b"\xff" * 100)
    with pytest.raises(ModelLoadError):
        Detector(tmp_path / "garbage.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelLoadError):
        Detector(tmp_path / "empty.onnx")
    bare = build_stand_in_onnx(tmp_path / "bare.onnx", metadata={})
    with pytest.raises(ModelLoadError, match="nsnet.preprocess"):
        Detector(bare)
    bad_thr = build_stand_in_onnx(tmp_path / "thr.onnx", metadata=contract_metadata(threshold=3.0))
    with pytest.raises(ModelLoadError, match="threshold"):
        Detector(bad_thr)
    engine = tmp_path / "nsnet.engine"
    engine.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="sidecar"):
        Detector(engine)


def test_engine_without_tensorrt_is_refused_with_install_hint(tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here; covered by test_sdk_tensorrt.py")
    except ImportError:
        pass
    engine = write_engine_pair(tmp_path / "nsnet.engine", contract_metadata())
    with pytest.raises(BackendUnavailableError, match="tensorrt"):
        Detector(engine)


def test_onnx_metadata_reader_agrees_with_onnx(model):
    import onnx

    m = onnx.load(str(model))
    assert read_onnx_metadata(model) == {p.key: p.value for p in m.metadata_props}
    assert read_onnx_metadata(model) == contract_metadata()


def test_on_error_defaults_raise_for_one_input_record_for_many(det, tmp_path):
    bad = tmp_path / "nope.jpg"
    with pytest.raises(ImageDecodeError, match="nope.jpg"):
        det.predict(bad)
    rec = det.predict(bad, on_error="record")
    assert rec.source == str(bad) and rec.prob_fake is None and rec.is_fake is None
    assert rec.logit is None and rec.error.startswith("ImageDecodeError: ") and not rec.ok
    good = pictures(2)
    preds = det.predict([good[0], bad, good[1]])
    assert [p.ok for p in preds] == [True, False, True]
    with pytest.raises(ImageDecodeError):
        det.predict([good[0], bad, good[1]], on_error="raise")
    it = det.predict_iter([good[0], bad], on_error="raise")
    assert next(it).ok
    with pytest.raises(ImageDecodeError):
        next(it)
    with pytest.raises(ValueError, match="on_error"):
        det.predict(good, on_error="ignore")
    with pytest.raises(ValueError, match="batch_size"):
        det.predict(good, batch_size=0)


def test_unsupported_objects_are_recorded_not_crashing(det):
    preds = det.predict([42, None, object(), pictures(1)[0]])
    assert [p.ok for p in preds] == [False, False, False, True]
    assert preds[0].source == "<int #0>" and "UnsupportedInputError" in preds[0].error


def test_untyped_failures_become_typed_errors_naming_the_input(det):
    # Path() accepts these, but the OS calls raise ValueError / UnicodeEncodeError, not OSError
    bad = ["with\x00nul.png", "lone\ud800surrogate.png"]
    preds = det.predict([*bad, pictures(1)[0]])
    assert [p.ok for p in preds] == [False, False, True]
    for src, p in zip(bad, preds):
        assert p.source == src and p.error.startswith(f"ImageDecodeError: {src}: "), p.error
    with pytest.raises(ImageDecodeError, match="embedded null byte") as e:
        det.predict(bad[0])
    assert e.value.source == bad[0] and isinstance(e.value.__cause__, ValueError)


def _lagged_images(n: int, log: list[int]):
    for i in range(n):
        log.append(i)
        img = np.empty((48, 40, 3), np.uint8)
        img[:] = np.array([i % 251, (7 * i) % 256, (13 * i) % 256], np.uint8)
        img[::3, ::5] = 255 - img[::3, ::5]
        yield img


def test_predict_iter_keeps_order_and_reads_input_only_a_bounded_way_ahead(det):
    n, bs, workers = 3000, 16, 2
    pulled: list[int] = []
    reference = {i: det.predict(img).logit
                 for i, img in enumerate(_lagged_images(n, [])) if i % 397 == 0}
    max_ahead = 0
    count = 0
    for i, pred in enumerate(det.predict_iter(_lagged_images(n, pulled), batch_size=bs,
                                              workers=workers)):
        assert pred.source == f"<array #{i}>" and pred.ok
        if i in reference:
            assert pred.logit == pytest.approx(reference[i], abs=1e-5)
        max_ahead = max(max_ahead, len(pulled) - i)
        count += 1
    assert count == n
    # the batch being scored plus the prefetched ones, never the whole input
    assert max_ahead <= 3 * bs


@pytest.mark.parametrize("workers", [0, 2])
def test_a_failing_input_iterable_raises_only_after_every_input_it_gave_is_scored(det, workers):
    def source():
        yield from _lagged_images(10, [])
        raise RuntimeError("the input listing failed")

    got = []
    with pytest.raises(RuntimeError, match="listing failed"):
        for pred in det.predict_iter(source(), batch_size=4, workers=workers):
            got.append(pred)
    assert [p.source for p in got] == [f"<array #{i}>" for i in range(10)] and all(p.ok for p in got)


def test_inline_pipeline_reads_no_batch_ahead(det):
    """workers=0 gains nothing from decoding ahead: the input is pulled one batch at a time."""
    pulled: list[int] = []
    bs, max_ahead = 4, 0
    for i, pred in enumerate(det.predict_iter(_lagged_images(30, pulled), batch_size=bs, workers=0)):
        assert pred.source == f"<array #{i}>" and pred.ok
        max_ahead = max(max_ahead, len(pulled) - i)
    assert i == 29 and max_ahead == bs


def _batch_buffers(det, monkeypatch, n: int) -> list:
    """The objects owning the memory of every batch handed to the backend over ``n`` inputs, by
    identity. Held (so a freed buffer's address cannot come back as a "reused" one); more than 8
    ends the run at once, so a pipeline allocating per batch fails without holding them all."""
    owners: list = []
    run = det.backend.run

    def recording_run(images):
        base = images
        while isinstance(base, np.ndarray) and base.base is not None:
            base = base.base
        if not any(base is o for o in owners):
            owners.append(base)
            assert len(owners) <= 8, "a new batch buffer for every batch"
        return run(images)

    monkeypatch.setattr(det.backend, "run", recording_run)
    try:
        assert sum(1 for _ in det.predict_iter(_lagged_images(n, []), batch_size=8, workers=2)) == n
    finally:
        monkeypatch.undo()
    return owners


def test_predict_iter_memory_stays_flat_over_thousands_of_inputs(det, monkeypatch):
    """Structural, not a memory figure: every batch is decoded into one of a few buffers allocated
    once, so 3,000 inputs use the same buffers as 200 (input read-ahead is bounded by the test above)."""
    small, large = _batch_buffers(det, monkeypatch, 200), _batch_buffers(det, monkeypatch, 3000)
    assert 1 <= len(large) <= 4, f"{len(large)} distinct batch buffers for 375 batches"  # 1 + read-ahead
    assert len(small) == len(large)


def test_import_nsnet_sdk_never_imports_torch_or_tensorrt(model):
    code = textwrap.dedent(f"""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "tensorrt", "training", "export"):
                    raise ImportError("blocked for the test: " + name)
        sys.meta_path.insert(0, Block())
        import numpy as np
        import nsnet_sdk
        from nsnet_sdk import Detector, InputOptions, Prediction, errors
        d = Detector({str(model)!r}, options=InputOptions(workers=2))
        p = d.predict(np.full((64, 64, 3), 100, np.uint8))
        assert p.ok, p
        bad = [m for m in sys.modules if m.split(".")[0] in ("torch", "tensorrt")]
        assert not bad, bad
        print("OK")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stderr[-2000:]


def test_failed_prediction_names_the_error_class_and_survives_json():
    f = Prediction.failed("b.jpg", ImageDecodeError("b.jpg: no such file"))
    assert f.error == "ImageDecodeError: b.jpg: no such file" and f.prob_fake is None and not f.ok
    p = Prediction("a.jpg", 0.75, True, 1.0986, warnings=("truncated",))
    assert json.loads(json.dumps(p.to_dict()))["warnings"] == ["truncated"]


class _FakeBackend:
    """Returns fixed logits: stands in for a model that misbehaves on some inputs."""

    name, device, metadata = "fake", "cpu", {}

    def __init__(self, logits=None, exc=None):
        self.logits, self.exc = logits, exc

    def run(self, images):
        if self.exc is not None:
            raise self.exc
        return np.asarray(self.logits[: len(images)], np.float32)

    def close(self):
        pass


def test_non_finite_logit_is_an_error_row_and_backend_failure_raises(model):
    from nsnet_sdk import InferenceError

    d = Detector(model, options=InputOptions(workers=0))
    d.backend = _FakeBackend(logits=[np.nan, 2.0, np.inf])
    preds = d.predict(pictures(3))
    assert [p.ok for p in preds] == [False, True, False]
    assert preds[0].error.startswith("InferenceError: ") and preds[1].prob_fake == pytest.approx(
        1 / (1 + np.exp(-2.0)))
    d.backend = _FakeBackend(exc=InferenceError("model exploded"))
    with pytest.raises(InferenceError, match="exploded"):
        d.predict(pictures(2))


def test_a_model_refused_after_loading_has_its_backend_closed(model, monkeypatch):
    import nsnet_sdk.detector as detector_module

    opened = []
    real_load = detector_module.load_backend

    def spy(*args, **kwargs):
        opened.append(real_load(*args, **kwargs))
        closed = []
        opened[-1].close, opened[-1].closed = (lambda: closed.append(True)), closed
        return opened[-1]

    monkeypatch.setattr(detector_module, "load_backend", spy)
    with pytest.raises(PreprocessMismatchError):
        Detector(model, preprocess=PatchConfig(patch=16, grid=14))
    if not torch_cuda_available():  # the GPU pipeline on cuda is refused once the model is loaded
        with pytest.raises(BackendUnavailableError, match="pipeline='gpu'"):
            Detector(model, options=InputOptions(pipeline="gpu"))
        assert [b.closed for b in opened] == [[True], [True]]
    # Refused before anything is loaded: a bad threshold, an option the engine would ignore.
    n = len(opened)
    with pytest.raises(ValueError, match="threshold"):
        Detector(model, threshold=2.0)
    with pytest.raises(ValueError, match="cuda_graphs"):
        Detector(model, backend=BackendOptions(cuda_graphs=True))
    assert len(opened) == n
    Detector(model, options=InputOptions(workers=0))
    assert opened[-1].closed == []


def test_a_logit_of_the_wrong_shape_is_an_inference_error(model):
    from nsnet_sdk import InferenceError
    from nsnet_sdk.backends.onnxruntime import OrtBackend

    class TwoPerImage:  # a session whose 'logit' breaks the [B] contract
        def run(self, names, feeds):
            return [np.zeros(2 * len(feeds["images"]), np.float32)]

    backend = OrtBackend(model)
    backend.session = TwoPerImage()
    with pytest.raises(InferenceError, match="batch of 3"):
        backend.run(np.zeros((3, 3, 224, 224), np.float32))


def test_provider_choice(model):
    from nsnet_sdk.backends.onnxruntime import choose_providers, tensorrt_provider_options

    avail = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(None, avail) == avail
    # The TensorRT EP is never picked by default: without an engine cache it rebuilds at every start.
    assert choose_providers(None, ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]) \
        == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(None, ["CPUExecutionProvider", "TensorrtExecutionProvider"]) == ["CPUExecutionProvider"]
    # Asked for by name, it gets an engine cache beside the model and a batch profile of `images`.
    trt = ["TensorrtExecutionProvider", "CPUExecutionProvider"]
    (name, opts), cpu = choose_providers(trt, trt, Path("/models/m.onnx"), 112)
    assert name == "TensorrtExecutionProvider" and cpu == "CPUExecutionProvider"
    assert opts == tensorrt_provider_options("/models/m.onnx", 112)
    assert opts["trt_engine_cache_enable"] and opts["trt_engine_cache_path"] == "/models/m.onnx.trt_cache"
    assert (opts["trt_profile_min_shapes"], opts["trt_profile_max_shapes"]) == \
        ("images:1x3x112x112", "images:128x3x112x112")
    given = ("TensorrtExecutionProvider", {"trt_fp16_enable": True})
    assert choose_providers([given], trt) == [given]  # the caller's own options are kept as given
    assert choose_providers(["CPUExecutionProvider"], avail) == ["CPUExecutionProvider"]
    with pytest.raises(ModelLoadError, match="not available"):
        choose_providers(["TensorrtExecutionProvider"], avail)
    with pytest.raises(ModelLoadError, match="not available"):
        Detector(model, backend=BackendOptions(providers=["NoSuchExecutionProvider"]))
    assert Detector(model, backend=BackendOptions(providers=["CPUExecutionProvider"], intra_op_threads=1), options=InputOptions(workers=0)).backend.device == "CPUExecutionProvider"


def test_an_fp16_model_never_runs_on_the_cpu_with_a_gpu_providers_options(tmp_path, monkeypatch):
    # onnxruntime-gpu on a machine whose CUDA does not work lists CUDAExecutionProvider, yet runs the
    # session on the CPU provider. The options must then be the CPU's for FP16 (EXTENDED): the GPU's
    # (ALL) crash onnxruntime's CPU provider on FP16 graphs.
    import onnxruntime as ort

    model = build_stand_in_onnx(tmp_path / "m.onnx", metadata={**contract_metadata(), "nsnet.precision": "fp16"})
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.warns(UserWarning, match="CUDAExecutionProvider"):
        backend = Detector(model, options=InputOptions(workers=0)).backend
    assert backend.device == "CPUExecutionProvider"
    level = backend.session.get_session_options().graph_optimization_level
    assert level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    x = np.zeros((2, 3, 224, 224), np.float32)
    np.testing.assert_allclose(backend.run(x), stand_in_logit(x), atol=1e-4)


def test_onnxruntime_older_than_the_enable_fallback_release_is_refused():
    # 1.20-1.22 ignore enable_fallback=0: a failed GPU session is retried on CPU with GPU options.
    from nsnet_sdk.backends.onnxruntime import require_ort_version

    for old in ("1.22.1", "1.17.0", "0.9"):
        with pytest.raises(BackendUnavailableError, match=">= 1.23"):
            require_ort_version(old, "m.onnx")
    for ok in ("1.23.0", "1.32.0", "1.24.0.dev20251101", "2.0.0"):
        require_ort_version(ok, "m.onnx")


def test_cuda_inputs_are_described_or_refused_before_binding(model):
    # A CUDA array is bound by pointer (no host round trip); one that cannot be bound as `images`
    # is a typed error, and a CPU session refuses device memory rather than reading it as host memory.
    from nsnet_sdk import InferenceError
    from nsnet_sdk.backends import device_array

    class CudaArray:  # what torch/cupy expose: the CUDA array interface, version 3
        def __init__(self, shape, typestr="<f4", strides=None):
            self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (0xDEAD00, False),
                                             "strides": strides, "version": 3}

    assert device_array(np.zeros((1, 3, 4, 4), np.float32)) is None
    assert device_array(CudaArray((2, 3, 224, 224))) == (0xDEAD00, (2, 3, 224, 224))
    assert device_array(CudaArray((2, 3, 4, 4), strides=(192, 64, 16, 4))) == (0xDEAD00, (2, 3, 4, 4))
    with pytest.raises(InferenceError, match="float32"):
        device_array(CudaArray((2, 3, 4, 4), typestr="<f2"))
    with pytest.raises(InferenceError, match="float32"):
        device_array(CudaArray((3, 4, 4)))
    with pytest.raises(InferenceError, match="C-contiguous"):
        device_array(CudaArray((2, 3, 4, 4), strides=(4, 32, 8, 2)))
    backend = Detector(model, backend=BackendOptions(providers=["CPUExecutionProvider"]), options=InputOptions(workers=0)).backend
    with pytest.raises(InferenceError, match="needs a GPU provider"):
        backend.run(CudaArray((2, 3, 224, 224)))


def test_without_onnx_runtime_import_works_and_use_says_which_extra_to_install(model):
    # Neither nsnet-sdk[cpu] nor [gpu]: `import nsnet_sdk` must still work; a Detector on an .onnx
    # file and patch selection each raise BackendUnavailableError naming the extras.
    code = textwrap.dedent(f"""
        import sys
        sys.modules["onnxruntime"] = None  # what an install without either extra looks like
        import numpy as np
        import nsnet_sdk
        from nsnet_sdk import BackendUnavailableError, Detector
        from nsnet_sdk.pipeline import patch_mosaic
        for call in (lambda: Detector({str(model)!r}), lambda: patch_mosaic(np.zeros((64, 64, 3), np.uint8))):
            try:
                call()
            except BackendUnavailableError as e:
                print("refused:", "nsnet-sdk[cpu]" in str(e) and "nsnet-sdk[gpu]" in str(e))
    """)
    import os

    # NSNET_KERNEL=reference: the ONNX Runtime entropy kernel even where a compiled one exists.
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, NSNET_KERNEL="reference"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["refused: True", "refused: True"]



def test_is_fake_follows_the_verdict_band_and_the_threshold_without_one(tmp_path):
    band = {"t_real": 0.3, "t_fake": 0.6, "fpr": 0.05, "fnr": 0.1, "source": "test"}
    banded = build_stand_in_onnx(tmp_path / "b.onnx", metadata=dict(
        contract_metadata(threshold=0.5), **{"nsnet.verdict_band": json.dumps(band)}))
    images = [textured(64 + 9 * i, 80 + 7 * i, seed=i) for i in range(24)]
    with Detector(banded, options=InputOptions(workers=0)) as det:
        preds = det.predict(images)
    verdicts = {p.verdict for p in preds}
    assert "uncertain" in verdicts and len(verdicts) >= 2, "pick images whose scores straddle the band"
    for p in preds:  # one decision rule: the band's verdict, not the single threshold
        want = {"ai-generated": True, "real": False, "uncertain": None}[p.verdict]
        assert p.is_fake is want, p
    with Detector(build_stand_in_onnx(tmp_path / "p.onnx"), threshold=0.45,
                  options=InputOptions(workers=0)) as det:
        plain = det.predict(images)
    assert all(p.verdict is None and p.is_fake == (p.prob_fake >= 0.45) for p in plain)
    assert {p.is_fake for p in plain} == {True, False}
