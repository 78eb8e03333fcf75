"""The machine and libraries a benchmark figure came from, recorded beside every report: figures
name their machine (CPUs differ: an AVX2 EPYC and an AMX Xeon rank the kernels differently)."""
from __future__ import annotations

import os
import platform
from importlib import metadata as importlib_metadata
from typing import Any

from nsnet_sdk.cpuinfo import cpu_model

LIBRARIES = ("numpy", "opencv-python-headless", "onnxruntime", "onnxruntime-gpu", "onnx", "torch",
             "open_clip_torch", "tensorrt", "cuda-python", "openvino", "nncf")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a figure depends on (and Python's)."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            pass
    return out


def machine() -> dict[str, Any]:
    """CPU model, core count, memory and GPU of this machine."""
    info: dict[str, Any] = {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count()}
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    gpu = cuda_device_name()
    if gpu:
        info["gpu"] = gpu
    return info


def cuda_device_name() -> str | None:
    """The CUDA device torch sees, or None (no torch, no CUDA)."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
