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
