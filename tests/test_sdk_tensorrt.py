"""TensorRT backend. The GPU tests need tensorrt, cuda-python and a CUDA device and skip with the
reason otherwise; batch splitting and the sidecar are checked everywhere."""
from __future__ import annotations

import json

import numpy as np
import pytest

from _sdk_util import contract_metadata, tiny_export, write_engine_pair
from export.parity import FP16_PROB_BOUND
from nsnet_sdk import BackendOptions, Detector, InputOptions
from nsnet_sdk.artifact import ModelMeta, artifact_kind
from nsnet_sdk.backends.tensorrt import read_sidecar


def _gpu_skip_reason() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed (pip install 'nsnet-sdk[gpu]')"
    try:
        from nsnet_sdk.backends.tensorrt import import_cudart
        cudart = import_cudart()
    except ImportError:
        return "cuda-python is not installed"
    err, n = cudart.cudaGetDeviceCount()
    if int(err) != 0 or n < 1:
        return "no CUDA device"
    return None


GPU_REASON = _gpu_skip_reason()
needs_gpu = pytest.mark.skipif(GPU_REASON is not None, reason=f"TensorRT backend: {GPU_REASON}")


def test_engine_paths_select_tensorrt_and_sidecar_metadata_parses(tmp_path):
    for name in ("nsnet.engine", "model.plan"):
        eng = write_engine_pair(tmp_path / name, contract_metadata(threshold=0.3))
        assert artifact_kind(eng) == "tensorrt"
        side = read_sidecar(eng)
        assert side["nsnet.trt.max_batch"] == "32" and side["nsnet.precision"] == "fp16"
        meta = ModelMeta.parse(side, str(eng))
        assert meta.threshold == 0.3 and meta.precision == "fp16"
    (tmp_path / "bad.engine").write_bytes(b"x")
    (tmp_path / "bad.engine.json").write_text("[1, 2]")
    from nsnet_sdk import ModelLoadError
    with pytest.raises(ModelLoadError, match="not a JSON object"):
        read_sidecar(tmp_path / "bad.engine")


@pytest.mark.gpu
@needs_gpu
def test_tensorrt_engine_matches_onnx_runtime(tmp_path):
    from export.to_trt import build_engine

    tiny = tiny_export()
    eng = build_engine(tiny["onnx"], tmp_path / "nsnet.engine", fp16=True, min_batch=2,
                       opt_batch=4, max_batch=4)
    assert json.loads((tmp_path / "nsnet.engine.json").read_text())["nsnet.trt.max_batch"] == 4
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (int(rng.integers(32, 300)), 200, 3), np.uint8) for _ in range(11)]
    ref = Detector(tiny["onnx"], options=InputOptions(workers=0)).predict(imgs)
    with Detector(eng, options=InputOptions(workers=2)) as det:
        assert det.backend.name == "tensorrt" and det.backend.max_batch == 4
        got = det.predict(imgs, batch_size=11)      # split into 4+4+3
        one = det.predict(imgs[0])                   # padded up to the profile minimum of 2
    np.testing.assert_allclose([p.prob_fake for p in got], [p.prob_fake for p in ref], atol=FP16_PROB_BOUND)
    # Batch 1 padded to 2 against batch 4: TensorRT may pick other kernels (other FP16 rounding)
    # per batch shape, so the same image is held to the FP16 parity bound, not to equality.
    assert one.prob_fake == pytest.approx(got[0].prob_fake, abs=FP16_PROB_BOUND)


# -- the backend's host logic on stand-ins for tensorrt and cuda-python (everywhere) ----------------

class _FakeCudart:
    """cuda-python's runtime API as the backend calls it; "device" memory is host memory, copies
    are memmoves, and every call returns cuda-python's (err, value...) tuples."""

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice = "h2d", "d2h", "d2d"

    def __init__(self, fail_malloc_after: int | None = None):
        self.copies: list[tuple[str, int, int, int]] = []  # (kind, dst, src, nbytes) in call order
        self.memsets: list[tuple[int, int, int]] = []
        self.mem: dict[int, object] = {}
        self.freed: list[int] = []
        self.devices: list[int] = []
        self.stream_flags: list[int] = []
        self.stream_calls: list[tuple] = []  # event records / stream waits in call order
        self.fail_malloc_after = fail_malloc_after

    def _alloc(self, n):
        import ctypes
        if self.fail_malloc_after is not None and len(self.mem) >= self.fail_malloc_after:
            return 2, 0  # cudaErrorMemoryAllocation
        buf = ctypes.create_string_buffer(n)
        self.mem[ctypes.addressof(buf)] = buf
        return 0, ctypes.addressof(buf)

    cudaMalloc = cudaMallocHost = _alloc

    def cudaFree(self, ptr):
        self.freed.append(ptr)
        return (0,)

    cudaFreeHost = cudaFree

    def cudaSetDevice(self, i):
        self.devices.append(i)
        return (0,)

    cudaStreamNonBlocking, cudaEventDisableTiming = 1, 2  # cuda-bindings' values

    def cudaStreamCreateWithFlags(self, flags):
        self.stream_flags.append(flags)
        return 0, 7

    def cudaStreamDestroy(self, s):
        return (0,)

    def cudaEventCreateWithFlags(self, flags):
        return 0, 99

    def cudaEventDestroy(self, e):
        return (0,)

    def cudaEventRecord(self, event, stream):
        self.stream_calls.append(("record", event, stream))
        return (0,)

    def cudaStreamWaitEvent(self, stream, event, flags):
        self.stream_calls.append(("wait", stream, event))
        return (0,)

    def cudaStreamSynchronize(self, s):
        self.stream_calls.append(("sync", s))
        return (0,)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        import ctypes
        self.copies.append((kind, dst, src, n))
        ctypes.memmove(dst, src, n)
        return (0,)

    def cudaMemsetAsync(self, ptr, value, n, stream):
        import ctypes
        self.memsets.append((ptr, value, n))
        ctypes.memset(ptr, value, n)
        return (0,)


def _fake_tensorrt(min_batch: int, max_batch: int, size: int, logit_dims: tuple = ()):
    """The TensorRT 10 names the backend uses; the "engine" computes the stand-in model."""
    import ctypes
    import types

    from _sdk_util import stand_in_logit

    trt = types.ModuleType("tensorrt")
    trt.float32 = "float32"
    trt.nptype = lambda dt: {"float32": np.float32}[dt]
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Context:
        def __init__(self):
            self.shape, self.addr, self.batches, self.images_at = None, {}, [], []

        def set_input_shape(self, name, shape):
            self.shape = tuple(shape)
            return min_batch <= shape[0] <= max_batch

        def get_tensor_shape(self, name):
            return (self.shape[0], *(logit_dims if name == "logit" else ())) if name != "images" \
                else self.shape

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr
            return name in Engine.names  # TensorRT's answer: False for a name it does not know

        def execute_async_v3(self, stream):
            assert set(self.addr) == {"images", "logit", "prob_fake"}, self.addr
            n = int(np.prod(self.shape))
            x = np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.addr["images"]))
            logit = stand_in_logit(x.reshape(self.shape)).astype(np.float32)
            ctypes.memmove(self.addr["logit"], logit.ctypes.data, logit.nbytes)
            self.batches.append(self.shape[0])
            self.images_at.append(self.addr["images"])
            return True

    class Engine:
        num_io_tensors = 3
        names = ["images", "logit", "prob_fake"]

        def __init__(self):
            self.contexts = []

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return "in" if name == "images" else "out"

        def get_tensor_dtype(self, name):
            return "float32"

        def get_tensor_profile_shape(self, name, profile):
            return [(min_batch, 3, size, size), (max_batch, 3, size, size), (max_batch, 3, size, size)]

        def create_execution_context(self):
            self.contexts.append(Context())
            return self.contexts[-1]

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, blob):
            return Engine() if blob.startswith(b"fake engine") else None

    trt.Logger, trt.Runtime = Logger, Runtime
    return trt


@pytest.fixture()
def fake_gpu(monkeypatch):
    import sys
    import types

    def install(cudart=None, min_batch=2, max_batch=4, size=224, logit_dims=()):
        cudart = cudart or _FakeCudart()
        bindings = types.ModuleType("cuda.bindings")
        bindings.runtime = cudart
        cuda = types.ModuleType("cuda")
        cuda.bindings = bindings
        for name, mod in (("cuda", cuda), ("cuda.bindings", bindings),
                          ("cuda.bindings.runtime", cudart),
                          ("tensorrt", _fake_tensorrt(min_batch, max_batch, size, logit_dims))):
            monkeypatch.setitem(sys.modules, name, mod)
        return cudart
    return install


def _engine(tmp_path):
    eng = write_engine_pair(tmp_path / "nsnet.engine", contract_metadata())
    eng.write_bytes(b"fake engine")
    return eng


def test_engine_pipeline_splits_pads_and_matches_onnx_on_stand_ins(tmp_path, fake_gpu):
    from _sdk_util import build_stand_in_onnx

    cudart = fake_gpu()
    imgs = [np.random.default_rng(i).integers(0, 256, (40 + 9 * i, 70, 3), np.uint8) for i in range(11)]
    ref = Detector(build_stand_in_onnx(tmp_path / "m.onnx"), options=InputOptions(workers=0)).predict(imgs)
    det = Detector(_engine(tmp_path), backend=BackendOptions(device="cuda:1"), options=InputOptions(workers=2))
    assert det.backend.name == "tensorrt" and det.backend.device == "cuda:1"
    got = det.predict(imgs, batch_size=11)
    one = det.predict(imgs[0])
    ctx = det.backend.context
    assert ctx.batches == [4, 4, 3, 2]  # split at the profile max; one image padded to its min
    assert set(cudart.devices) == {1}
    np.testing.assert_allclose([p.logit for p in got], [p.logit for p in ref], atol=1e-4)
    assert one.logit == pytest.approx(got[0].logit, abs=1e-6)
    det.close()
    assert sorted(cudart.freed) == sorted(cudart.mem) and det.backend.context is None
    det.close()  # idempotent
    from nsnet_sdk import InferenceError
    with pytest.raises(InferenceError, match="closed"):
        det.predict(imgs[:2])
    with pytest.raises(InferenceError, match="closed"):
        det.backend.run(np.zeros((1, 3, 224, 224), np.float32))


def test_engine_load_failures_are_model_load_errors_and_free_what_was_allocated(tmp_path, fake_gpu):
    from nsnet_sdk import ModelLoadError

    eng = _engine(tmp_path)
    cudart = fake_gpu(_FakeCudart(fail_malloc_after=2))
    with pytest.raises(ModelLoadError, match="cudaMalloc"):
        Detector(eng)
    assert len(cudart.mem) == 2 and sorted(cudart.freed) == sorted(cudart.mem)
    fake_gpu(logit_dims=(2,))  # 'logit' [B,2]: would overrun a [B] buffer
    with pytest.raises(ModelLoadError, match=r"'logit' has shape \(4, 2\)"):
        Detector(eng)
    fake_gpu()
    eng.write_bytes(b"stale engine")
    with pytest.raises(ModelLoadError, match="deserialise"):
        Detector(eng)
    for bad in ("cpu", "cuda:x", -1, True):
        with pytest.raises(ValueError, match="GPU index"):
            Detector(_engine(tmp_path), backend=BackendOptions(device=bad))


def test_engine_batches_from_several_threads_take_turns(tmp_path, fake_gpu):
    """One context and one set of pinned/device buffers: concurrent batches must not mix."""
    import threading
    import time

    from _sdk_util import build_stand_in_onnx

    fake_gpu()
    import tensorrt
    ctx_cls = type(tensorrt.Runtime(None).deserialize_cuda_engine(b"fake engine")
                   .create_execution_context())
    real_execute = ctx_cls.execute_async_v3

    def slow_execute(self, stream):
        time.sleep(0.002)  # let another thread reach its host-to-device copy meanwhile
        return real_execute(self, stream)

    ctx_cls.execute_async_v3 = slow_execute
    rng = np.random.default_rng(0)
    groups = [[rng.integers(0, 256, (64, 64, 3), np.uint8) for _ in range(3)] for _ in range(4)]
    ref = Detector(build_stand_in_onnx(tmp_path / "m.onnx"), options=InputOptions(workers=0))
    want = [[p.logit for p in ref.predict(g)] for g in groups]
    det = Detector(_engine(tmp_path), options=InputOptions(workers=0))
    got: list = [None] * len(groups)

    def score(i):
        got[i] = [p.logit for p in det.predict(groups[i] * 3, batch_size=3)]

    threads = [threading.Thread(target=score, args=(i,)) for i in range(len(groups))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(len(groups)):
        np.testing.assert_allclose(got[i], want[i] * 3, atol=1e-4)


def test_batch_range_comes_from_the_engine_profile_not_the_sidecar(tmp_path, fake_gpu):
    # The sidecar says max_batch 32; the engine's own optimisation profile (2..3) is what TensorRT
    # accepts. Batches are split and padded by the profile, in order, through the real run path.
    from _sdk_util import stand_in_logit

    fake_gpu(min_batch=2, max_batch=3)
    eng = _engine(tmp_path)
    assert read_sidecar(eng)["nsnet.trt.max_batch"] == "32"
    backend = Detector(eng, options=InputOptions(workers=0)).backend
    assert (backend.min_batch, backend.max_batch) == (2, 3)
    x = np.random.default_rng(3).standard_normal((7, 3, 224, 224)).astype(np.float32)
    np.testing.assert_allclose(backend.run(x), stand_in_logit(x), atol=1e-4)
    np.testing.assert_allclose(backend.run(x[:1]), stand_in_logit(x[:1]), atol=1e-4)
    assert backend.context.batches == [3, 3, 2, 2]  # 3+3+1→padded to 2, then 1→padded to 2
    backend.close()


def test_an_engine_refusing_a_batch_shape_is_an_inference_error(tmp_path, fake_gpu, monkeypatch):
    # set_input_shape's result is checked: a refused shape must not run on stale bindings.
    from nsnet_sdk import InferenceError

    fake_gpu(min_batch=1, max_batch=4)
    backend = Detector(_engine(tmp_path), options=InputOptions(workers=0)).backend
    ctx = backend.context
    monkeypatch.setattr(type(ctx), "set_input_shape", lambda self, name, shape: False)
    with pytest.raises(InferenceError, match="refused batch shape 2"):
        backend.run(np.zeros((2, 3, 224, 224), np.float32))
    assert ctx.batches == []
    backend.close()


def test_verify_holds_an_engine_to_its_sidecar_precision(tmp_path, fake_gpu):
    # verify runs an engine through the SDK's TensorRT backend and takes the bound from the
    # precision the backend read from the sidecar: an FP32 engine gets the FP32 logit bound.
    from _sdk_util import stand_in_logit
    from export import verify

    fake_gpu(min_batch=1, max_batch=4)
    eng = _engine(tmp_path)
    side = eng.with_name(eng.name + ".json")
    side.write_text(json.dumps(dict(json.loads(side.read_text()), **{"nsnet.precision": "fp32"})))
    x = np.random.default_rng(1).standard_normal((6, 3, 224, 224)).astype(np.float32)
    ref = stand_in_logit(x).astype(np.float64)
    rows = {}
    for name, offset in (("exact", 0.0), ("off", 1e-3)):  # 1e-3: within FP16's prob bound, past FP32's
        check = verify._Check("tensorrt", eng, isolated=False, precision=None)
        check.open(sha="unused")
        assert check.backend.name == "tensorrt"
        for i in range(0, len(x), 4):
            check.run(x[i:i + 4])
        check.close()
        rows[name] = check.row(ref + offset, threshold=0.5)
    assert rows["exact"]["precision"] == "fp32" and rows["exact"]["passes"] is True
    assert rows["off"]["precision"] == "fp32" and rows["off"]["passes"] is False



# -- device input by pointer, and the lent pinned buffer (stand-ins for the CUDA runtime) ----------

class _StandInCudaArray:
    """A CUDA array as torch or cupy describe it (``__cuda_array_interface__``), whose "device"
    memory is host memory, as the stand-in runtime's is; ``device_index`` mimics torch's
    ``tensor.device``."""

    def __init__(self, x: np.ndarray, device_index: int | None = None, typestr: str = "<f4"):
        self.host = np.ascontiguousarray(x)
        self.__cuda_array_interface__ = {"shape": self.host.shape, "typestr": typestr,
                                         "data": (self.host.ctypes.data, False), "strides": None,
                                         "version": 3}
        if device_index is not None:
            import types
            self.device = types.SimpleNamespace(type="cuda", index=device_index)


def test_a_cuda_input_is_bound_by_its_pointer_split_by_offsets_and_never_copied_from_host(
        tmp_path, fake_gpu):
    from _sdk_util import stand_in_logit

    cudart = fake_gpu(min_batch=2, max_batch=3)
    backend = Detector(_engine(tmp_path), options=InputOptions(workers=0)).backend
    assert backend.accepts_device_input is True
    x = np.random.default_rng(5).standard_normal((8, 3, 224, 224)).astype(np.float32)
    dev = _StandInCudaArray(x)
    ptr, row = dev.host.ctypes.data, x[0].nbytes
    cudart.copies.clear()
    np.testing.assert_allclose(backend.run(dev), stand_in_logit(x), atol=1e-4)
    ctx = backend.context
    assert ctx.batches == [3, 3, 2]  # the profile max is 3: 3+3+2, each read where it lies
    assert ctx.images_at == [ptr, ptr + 3 * row, ptr + 6 * row]
    assert [c[0] for c in cudart.copies] == ["d2h"] * 3  # only the logits come back; no input copy
    assert cudart.memsets == []

    # 7 rows: the last chunk of 1 is below the profile minimum of 2, so it goes device-to-device
    # into the backend's buffer with one zeroed row of padding.
    cudart.copies.clear()
    ctx.images_at.clear()
    np.testing.assert_allclose(backend.run(_StandInCudaArray(x[:7])), stand_in_logit(x[:7]), atol=1e-4)
    ptr7 = ctx.images_at[0]
    assert ctx.images_at == [ptr7, ptr7 + 3 * row, backend._d_in]
    assert [c[:4] for c in cudart.copies if c[0] != "d2h"] == [("d2d", backend._d_in, ptr7 + 6 * row, row)]
    assert not any(c[0] == "h2d" for c in cudart.copies)
    assert cudart.memsets == [(backend._d_in + row, 0, row)]
    backend.close()


def test_cuda_inputs_the_engine_cannot_take_are_inference_errors(tmp_path, fake_gpu):
    from nsnet_sdk import InferenceError

    fake_gpu(min_batch=1, max_batch=4)
    backend = Detector(_engine(tmp_path), backend=BackendOptions(device="cuda:1"), options=InputOptions(workers=0)).backend
    ok = np.zeros((2, 3, 224, 224), np.float32)
    with pytest.raises(InferenceError, match=r"shape \(2, 3, 112, 112\)"):
        backend.run(_StandInCudaArray(np.zeros((2, 3, 112, 112), np.float32)))
    with pytest.raises(InferenceError, match="float32"):
        backend.run(_StandInCudaArray(ok, typestr="<f2"))
    with pytest.raises(InferenceError, match="on cuda:0, the backend runs on cuda:1"):
        backend.run(_StandInCudaArray(ok, device_index=0))
    assert backend.context.batches == []
    assert len(backend.run(_StandInCudaArray(ok, device_index=1))) == 2
    backend.close()


def test_a_batch_written_into_lent_pinned_memory_goes_to_the_device_without_a_host_copy(
        tmp_path, fake_gpu):
    import gc

    from _sdk_util import stand_in_logit

    cudart = fake_gpu(min_batch=2, max_batch=4)
    backend = Detector(_engine(tmp_path), options=InputOptions(workers=0)).backend
    x = np.random.default_rng(7).standard_normal((5, 3, 224, 224)).astype(np.float32)
    buf = backend.input_buffer(5)
    base, row, n_allocs = buf.ctypes.data, x[0].nbytes, len(cudart.mem)
    assert base in cudart.mem and base not in (backend._h_in_ptr, backend._d_in)  # its own allocation
    buf[:] = x
    # From here on any host write into the staging buffer fails: run() may only read the lent one.
    backend._h_in = backend._h_in.view()
    backend._h_in.flags.writeable = False
    cudart.copies.clear()
    np.testing.assert_allclose(backend.run(buf), stand_in_logit(x), atol=1e-4)
    assert backend.context.batches == [4, 2]  # the max of 4, then 1 row padded to the min of 2
    assert [c for c in cudart.copies if c[0] == "h2d"] == [("h2d", backend._d_in, base, 4 * row),
                                                           ("h2d", backend._d_in, base + 4 * row, row)]
    assert cudart.memsets == [(backend._d_in + row, 0, row)]  # the padding, zeroed on the device
    with pytest.raises(ValueError, match="read-only"):
        backend.run(x.copy())  # any other host array is staged: the guard above is real
    del buf
    gc.collect()
    again = backend.input_buffer(3)  # the dropped buffer is reused, not allocated anew
    assert again.ctypes.data == base and len(cudart.mem) == n_allocs
    backend.close()
    # `again` is still lent: close frees everything else and leaves it to its last view.
    assert sorted(cudart.freed) == sorted(p for p in cudart.mem if p != base)
    assert backend.input_buffer(1) is None
    del again
    gc.collect()
    assert sorted(cudart.freed) == sorted(cudart.mem)


def test_the_detector_decodes_into_the_engine_s_pinned_memory(tmp_path, fake_gpu):
    from _sdk_util import build_stand_in_onnx

    cudart = fake_gpu(min_batch=1, max_batch=8)
    imgs = [np.random.default_rng(i).integers(0, 256, (50 + 7 * i, 80, 3), np.uint8) for i in range(6)]
    ref = Detector(build_stand_in_onnx(tmp_path / "m.onnx"), options=InputOptions(workers=0)).predict(imgs)
    for workers in (0, 2):
        det = Detector(_engine(tmp_path), options=InputOptions(workers=workers))
        det.backend._h_in.flags.writeable = False  # the staging copy would fail: it must not happen
        cudart.copies.clear()
        got = det.predict(imgs, batch_size=3)
        np.testing.assert_allclose([p.logit for p in got], [p.logit for p in ref], atol=1e-4)
        h2d = [c for c in cudart.copies if c[0] == "h2d"]
        assert len(h2d) == 2 and all(c[2] != det.backend._h_in_ptr for c in h2d)
        det.close()


def test_the_gpu_pipeline_hands_its_tensor_only_to_backends_that_take_device_input(tmp_path, fake_gpu):
    pytest.importorskip("torch")
    from _sdk_util import build_stand_in_onnx
    from nsnet_sdk.pipeline.gpu import resolve_pipeline
    from nsnet_sdk.pipeline import DEFAULT

    fake_gpu()
    trt_backend = Detector(_engine(tmp_path), options=InputOptions(workers=0)).backend
    ort_cpu = Detector(build_stand_in_onnx(tmp_path / "m.onnx"), backend=BackendOptions(providers=["CPUExecutionProvider"]), options=InputOptions(workers=0)).backend
    assert ort_cpu.accepts_device_input is False  # a CPU session cannot read device memory
    assert resolve_pipeline("gpu", device="cpu", backend=trt_backend, config=DEFAULT).to_host is False
    assert resolve_pipeline("gpu", device="cpu", backend=ort_cpu, config=DEFAULT).to_host is True
    trt_backend.close()


@pytest.mark.gpu
@needs_gpu
def test_a_torch_cuda_tensor_runs_in_place_and_matches_the_host_path(tmp_path):
    torch = pytest.importorskip("torch")
    from export.to_trt import build_engine

    tiny = tiny_export()
    eng = build_engine(tiny["onnx"], tmp_path / "nsnet.engine", fp16=True, min_batch=2,
                       opt_batch=4, max_batch=4)
    with Detector(eng, options=InputOptions(workers=0)) as det:
        x = np.random.default_rng(0).standard_normal((7, 3, 224, 224)).astype(np.float32)
        host = det.backend.run(x)
        dev = torch.from_numpy(x).to(det.backend.device)
        torch.cuda.current_stream(dev.device).synchronize()
        np.testing.assert_allclose(det.backend.run(dev), host, atol=1e-5)


def test_a_slice_of_a_lent_buffer_keeps_it_from_being_lent_again_or_freed(tmp_path, fake_gpu):
    # The stand-in runtime's "pinned" allocation is plain host memory (ctypes); what is tested is
    # the backend's ownership logic over it: numpy collapses view bases, so a slice does not
    # reference the array it was cut from, and the buffer must live as long as any view of it.
    import gc

    cudart = fake_gpu(min_batch=1, max_batch=4)
    backend = Detector(_engine(tmp_path), options=InputOptions(workers=0)).backend
    buf = backend.input_buffer(4)
    base = buf.ctypes.data
    part = buf[1:3]
    del buf
    gc.collect()
    other = backend.input_buffer(4)  # must not be the memory `part` still points into
    assert other.ctypes.data != base
    part[:] = 1.0
    assert float(part.sum()) == part.size and base not in cudart.freed
    del part
    gc.collect()
    again = backend.input_buffer(2)  # the last view is gone: back in the pool, reused
    assert again.ctypes.data == base
    row = again[0]
    del again
    backend.close()
    assert base not in cudart.freed and other.ctypes.data not in cudart.freed
    row[:] = 2.0  # still ours after close: freed only when its last view goes
    del row, other
    gc.collect()
    assert base in cudart.freed and sorted(cudart.freed) == sorted(cudart.mem)


def test_the_engine_stream_is_non_blocking_and_waits_for_the_input_s_stream_on_the_device(
        tmp_path, fake_gpu):
    from _sdk_util import stand_in_logit

    cudart = fake_gpu(min_batch=1, max_batch=4)
    backend = Detector(_engine(tmp_path), options=InputOptions(workers=0)).backend
    # A blocking stream would serialise with every other thread's legacy-default-stream work.
    assert cudart.stream_flags == [cudart.cudaStreamNonBlocking]
    x = np.random.default_rng(3).standard_normal((6, 3, 224, 224)).astype(np.float32)
    arr = _StandInCudaArray(x)
    cudart.stream_calls.clear()
    np.testing.assert_allclose(backend.run(arr), stand_in_logit(x), atol=1e-4)
    assert cudart.stream_calls == [("sync", 7), ("sync", 7)]  # no stream named: nothing to wait on
    arr.__cuda_array_interface__["stream"] = 0x5EED  # CUDA array interface v3: written on this stream
    cudart.stream_calls.clear()
    np.testing.assert_allclose(backend.run(arr), stand_in_logit(x), atol=1e-4)
    per_chunk = [("record", 99, 0x5EED), ("wait", 7, 99), ("sync", 7)]
    assert cudart.stream_calls == per_chunk * 2  # 4 + 2 rows, each after a device-side wait
    backend.close()


def test_a_tensor_address_tensorrt_refuses_is_an_inference_error(tmp_path, fake_gpu, monkeypatch):
    from nsnet_sdk import InferenceError

    fake_gpu(min_batch=1, max_batch=4)
    backend = Detector(_engine(tmp_path), options=InputOptions(workers=0)).backend
    monkeypatch.setattr(backend.context, "set_tensor_address", lambda name, ptr: name != "logit")
    with pytest.raises(InferenceError, match="refused the address of 'logit'"):
        backend.run(np.zeros((2, 3, 224, 224), np.float32))
    assert backend.context.batches == []  # never executed with a stale output address
    backend.close()


def test_the_backend_uses_the_detector_s_validated_metadata_without_reading_it_again(
        tmp_path, fake_gpu, monkeypatch):
    import nsnet_sdk.backends.tensorrt as trt_backend

    fake_gpu(min_batch=1, max_batch=4)

    def second_read(path):
        raise AssertionError(f"sidecar of {path} read a second time")

    monkeypatch.setattr(trt_backend, "read_sidecar", second_read)
    det = Detector(_engine(tmp_path), options=InputOptions(workers=0))
    assert det.backend.metadata == dict(det.meta.raw)
    det.close()
