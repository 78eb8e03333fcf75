"""The per-CUDA-major extras resolve, with pip's own resolver, to packages of one CUDA major each.

Needs the package index (a dry run: metadata only, nothing installed); skipped with the reason
where pypi.org cannot be reached. The TensorRT libraries are left out of the resolution and checked
by name: their PyPI entry is a stub whose metadata step downloads the real wheel from
pypi.nvidia.com, which a machine reaching only PyPI cannot do.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = {"gpu-cu12": 12, "gpu-cu13": 13}
# Version-numbered independently of CUDA (cuFFT 12.x ships with CUDA 13): major from the suffix.
_VERSION_IS_CUDA = {"cuda-bindings", "cuda-python", "cuda-toolkit", "nvidia-cuda-runtime",
                    "nvidia-cuda-nvrtc", "nvidia-nvjpeg", "nvidia-nvjitlink", "nvidia-cublas"}


def cuda_major(name: str, version: str) -> int | None:
    """The CUDA major a distribution is built for, from its name (``-cuNN``) or, for CUDA's own
    packages, its version; None for packages that do not depend on one (numpy, cuda-pathfinder)."""
    name = re.sub(r"[-_.]+", "-", name.lower())
    m = re.search(r"-cu(\d+)(-|$)", name)
    if m:
        return int(m.group(1))
    if name in _VERSION_IS_CUDA:
        return int(version.split(".")[0])
    if name.startswith("nvidia-"):
        return 13  # from CUDA 13 on NVIDIA's CUDA wheels carry no -cuNN suffix
    return None


def _index_reason() -> str | None:
    try:
        urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=10).close()
    except OSError as e:
        return f"pypi.org is not reachable ({e}): the resolver needs the index"
    return None


class _Resolution:
    """pip's resolver run on each GPU extra in child processes, started early: it waits on the
    package index, not on the CPU, so the session starts it (`start_resolution`, called from
    tests/conftest.py when the test below is selected) and the test collects the answer."""

    def __init__(self) -> None:
        self.reason = _index_reason()
        self.procs: dict[str, tuple[subprocess.Popen, list[str], object, object]] = {}
        if self.reason:
            return
        extras = _extras()
        for extra in EXTRAS:
            requirements = [r for r in extras[extra] if "-libs" not in r.split(">")[0]]
            cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
                   "--disable-pip-version-check", "--report", "-", *requirements]
            # Files, not pipes: a pipe nobody reads until the test runs would stall pip when full.
            out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
            # At the lowest priority until the test waits on it: pip's CPU work (TLS, metadata,
            # the resolver) would otherwise take a core from the tests running meanwhile, which
            # slows their two-thread torch work more than the overlap gains.
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, preexec_fn=lambda: os.nice(19))
            self.procs[extra] = (proc, requirements, out, err)

    def result(self) -> dict[str, dict[str, dict]]:
        """{extra: {normalised name: metadata}} of what pip would install for each extra."""
        resolved = {}
        for proc, *_ in self.procs.values():
            try:  # the test waits on it now: back to normal priority where the user may raise it
                os.setpriority(os.PRIO_PROCESS, proc.pid, 0)
            except OSError:
                pass
        for extra, (proc, requirements, out, err) in self.procs.items():
            rc = proc.wait(timeout=600)
            out.seek(0), err.seek(0)
            assert rc == 0, f"pip could not resolve {requirements}:\n{err.read()[-3000:]}"
            report = json.loads(out.read())
            resolved[extra] = {re.sub(r"[-_.]+", "-", i["metadata"]["name"].lower()): i["metadata"]
                               for i in report["install"]}
        return resolved

    def close(self) -> None:
        for proc, _, out, err in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            out.close(), err.close()


_resolution: _Resolution | None = None


def start_resolution() -> None:
    """Start resolving the GPU extras in the background (once per process)."""
    global _resolution
    if _resolution is None:
        _resolution = _Resolution()


def stop_resolution() -> None:
    """End the resolver processes if still running (the session ends without the test)."""
    if _resolution is not None:
        _resolution.close()


def start_background_work(selected: set[str]) -> None:
    """tests/conftest.py, when collection is done: start the resolver if its test will run."""
    if "test_each_gpu_extra_resolves_to_one_cuda_major" in selected and sys.platform.startswith("linux"):
        start_resolution()


stop_background_work = stop_resolution


def _extras() -> dict[str, list[str]]:
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return doc["project"]["optional-dependencies"]


def test_cuda_major_reads_names_and_versions():
    assert cuda_major("tensorrt_cu12_bindings", "10.16.1.11") == 12
    assert cuda_major("nvidia-nvimgcodec-cu13", "0.9.0") == 13
    assert cuda_major("nvidia-nvjpeg", "13.0.1") == 13 and cuda_major("nvidia-cufft", "12.0.0") == 13
    assert cuda_major("cuda-bindings", "12.9.10") == 12 and cuda_major("numpy", "2.4") is None


def test_the_gpu_alias_is_one_of_the_per_major_extras():
    extras = _extras()
    assert extras["gpu"] == ["nsnet-sdk[gpu-cu13]"]
    for extra, major in EXTRAS.items():
        libs = [r for r in extras[extra] if r.startswith(f"tensorrt-cu{major}-libs")]
        bindings = [r for r in extras[extra] if r.startswith(f"tensorrt-cu{major}-bindings")]
        # The libraries are not resolved here (see the module docstring): same range as the bindings.
        assert len(libs) == len(bindings) == 1
        assert libs[0].split("-libs", 1)[1] == bindings[0].split("-bindings", 1)[1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CUDA wheels are Linux wheels")
def test_each_gpu_extra_resolves_to_one_cuda_major():
    start_resolution()  # a no-op when the session started it
    if _resolution.reason:
        pytest.skip(_resolution.reason)
    try:
        resolved = _resolution.result()
    finally:
        stop_resolution()
    for extra, major in EXTRAS.items():
        got = resolved[extra]
        majors = {n: cuda_major(n, m["version"]) for n, m in got.items()}
        other = {f"{n} {got[n]['version']}": v for n, v in majors.items() if v not in (None, major)}
        assert other == {}, f"[{extra}] pulls packages of another CUDA major"
        # Every CUDA-specific piece is there, of this major.
        for needed in ("onnxruntime-gpu", f"tensorrt-cu{major}-bindings", "cuda-bindings",
                       f"nvidia-nvimgcodec-cu{major}", f"nvidia-cudnn-cu{major}"):
            assert needed in got, f"[{extra}] lacks {needed}"
        assert any(n.startswith("nvidia-nvjpeg") and v == major for n, v in majors.items()), \
            f"[{extra}] has no nvJPEG of CUDA {major}: nvImageCodec would decode JPEG on the CPU"
        runtime = [n for n, v in majors.items() if n.startswith("nvidia-cuda-runtime")]
        assert len(runtime) == 1 and majors[runtime[0]] == major  # what onnxruntime-gpu[cuda] asked for
        # ONNX Runtime's TensorRT provider links libnvinfer.so.10: TensorRT 10.x.
        assert got[f"tensorrt-cu{major}-bindings"]["version"].startswith("10.")
