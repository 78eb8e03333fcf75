"""A local Ray for the scale-out tests: 2 CPUs, a small object store, no dashboard, its own temp dir."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]


def local_ray() -> Iterator:
    """Yield the `ray` module with a local instance running; shut it down afterwards (a generator
    for a module-scoped fixture). Skips when the [ray] extra is not installed."""
    ray = pytest.importorskip("ray", reason="needs the [ray] extra (pip install 'nsnet-sdk[ray]')")
    tmp = tempfile.mkdtemp(prefix="nsray-", dir="/tmp")  # short: Ray's socket paths are limited
    # Workers import nsnet_sdk from this checkout even when it is not installed.
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False,
             log_to_driver=False, _temp_dir=tmp, runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
