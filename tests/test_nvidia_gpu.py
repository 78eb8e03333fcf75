"""Checks that need a CUDA device (the first-GPU-run checklist of docs/nvidia.md, walked by
`make gpu-check`); each skips with its reason elsewhere."""
from __future__ import annotations

import threading

import numpy as np
import pytest


def _cuda_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    return None if torch.cuda.is_available() else "no CUDA device visible to torch"


CUDA_REASON = _cuda_reason()
needs_cuda = pytest.mark.skipif(CUDA_REASON is not None, reason=f"CUDA: {CUDA_REASON}")


@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_capture_survives_another_thread_allocating_and_synchronising():
    # What the input pipeline's pool threads do while the backend captures its first graph for a
    # batch size. In torch's default "global" capture mode this invalidates the capture.
    import torch

    from _sdk_util import tiny_export
    from nsnet_sdk.backends.torch import TorchBackend

    tiny = tiny_export()
    backend = TorchBackend(tiny["run"], device="cuda", cuda_graphs=True)
    plain = TorchBackend(tiny["run"], device="cuda")
    stop = threading.Event()
    errors: list[BaseException] = []

    def pool_thread():
        side = torch.cuda.Stream()
        try:
            with torch.cuda.stream(side):
                while not stop.is_set():
                    x = torch.empty(1 << 20, device="cuda").uniform_()  # allocates
                    torch.fft.rfft(x)  # cuFFT plans and workspaces
                    side.synchronize()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    worker = threading.Thread(target=pool_thread)
    worker.start()
    try:
        x = np.random.default_rng(0).standard_normal((3, 3, 224, 224)).astype(np.float32)
        for _ in range(3):  # first call captures, later ones replay
            got = backend.run(x)
    finally:
        stop.set()
        worker.join()
    assert errors == []
    np.testing.assert_allclose(got, plain.run(x), atol=1e-4)


def _trt_reason() -> str | None:
    if CUDA_REASON:
        return CUDA_REASON
    try:
        import tensorrt  # noqa: F401
        from nsnet_sdk.backends.tensorrt import import_cudart
        import_cudart()
    except ImportError as e:
        return f"TensorRT backend: {e}"
    return None


TRT_REASON = _trt_reason()
needs_trt = pytest.mark.skipif(TRT_REASON is not None, reason=f"TensorRT: {TRT_REASON}")


@pytest.mark.gpu
@needs_trt
def test_an_fp16_engine_has_fp16_layers_and_its_sidecar_says_so(tmp_path):
    # TensorRT 11 ignores precision flags and STRONGLY_TYPED: FP16 must come from the graph.
    import json

    import tensorrt as trt

    from _sdk_util import tiny_export
    from export.to_trt import build_engine

    eng = build_engine(tiny_export()["onnx"], tmp_path / "nsnet.engine", fp16=True, min_batch=1,
                       opt_batch=2, max_batch=4)
    side = json.loads((tmp_path / "nsnet.engine.json").read_text())
    assert side["nsnet.precision"] == "fp16" and side["nsnet.trt.version"] == trt.__version__
    assert side["nsnet.trt.strongly_typed"] is True
    counts = dict(kv.split("=") for kv in side["nsnet.trt.layer_types"].split(","))
    assert int(counts.get("Half", 0)) > 0, side["nsnet.trt.layer_types"]
    assert eng.is_file()


@pytest.mark.gpu
@needs_trt
def test_tensorrt_waits_on_the_device_for_the_stream_the_input_was_written_on(tmp_path):
    # The producer writes on its own stream and does not synchronise; the input says which stream
    # (CUDA array interface v3), and the engine's non-blocking stream must wait for it.
    import torch

    from _sdk_util import tiny_export
    from export.to_trt import build_engine
    from nsnet_sdk import Detector, InputOptions

    eng = build_engine(tiny_export()["onnx"], tmp_path / "nsnet.engine", fp16=True, min_batch=1,
                       opt_batch=4, max_batch=4)
    x = np.random.default_rng(2).standard_normal((4, 3, 224, 224)).astype(np.float32)
    with Detector(eng, options=InputOptions(workers=0)) as det:
        host = det.backend.run(x)
        side = torch.cuda.Stream()
        src = torch.from_numpy(x).pin_memory()
        for _ in range(3):
            with torch.cuda.stream(side):
                dev = torch.empty_like(src, device="cuda")
                torch.cuda._sleep(50_000_000)  # keeps the copy below pending for a while
                dev.copy_(src, non_blocking=True)

            class OnSide:  # the tensor, announcing the stream it was written on
                __cuda_array_interface__ = {**dev.__cuda_array_interface__, "version": 3,
                                            "stream": side.cuda_stream}

            np.testing.assert_allclose(det.backend.run(OnSide()), host, atol=1e-5)
