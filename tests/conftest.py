"""Session-wide fixtures: artifacts that take seconds to minutes to build (random-weight run
directories, their ONNX exports) are built once per test run and shared by every module that reads
them. They are read-only: a test that changes one copies it first."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

_BACKGROUND = pytest.StashKey[list]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the slow, CPU-light work a selected test waits on (a module's
    ``start_background_work(selected test names)``, e.g. pip's resolver waiting on the package
    index) before the first test runs, so the wait overlaps the tests before it. Under
    pytest-xdist each test does its own: a worker does not know which tests it will get."""
    if hasattr(session.config, "workerinput"):
        return
    by_module: dict = {}
    for item in session.items:
        module = getattr(item, "module", None)
        if module is not None and hasattr(module, "start_background_work"):
            by_module.setdefault(module, set()).add(getattr(item, "originalname", item.name))
    for module, names in by_module.items():
        module.start_background_work(names)
    session.config.stash[_BACKGROUND] = list(by_module)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop what `pytest_collection_finish` started and no test collected."""
    for module in session.config.stash.get(_BACKGROUND, []):
        module.stop_background_work()


@pytest.fixture(scope="session")
def tiny_artifacts() -> dict[str, Path]:
    """The nsnet-tiny run directory and its FP32 export: {"run", "onnx", "root"}
    (`_sdk_util.tiny_export`, which helpers outside fixtures call too; built once per process)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from _sdk_util import tiny_export

    return tiny_export()


@pytest.fixture(scope="session")
def real_run(tmp_path_factory) -> Callable[[str], Path]:
    """``real_run(backbone)``: a run directory of a real open_clip architecture (ViT-B-32: ~10 s,
    ViT-L-14: ~40 s on 2 cores) with random weights and projector rank 16, built on first use and
    shared by the export and training tests."""
    from _export_util import make_run

    runs: dict[str, Path] = {}

    def get(backbone: str) -> Path:
        if backbone not in runs:
            runs[backbone] = make_run(tmp_path_factory.mktemp(backbone) / "run", backbone, "--rank", "16")
        return runs[backbone]

    return get


@pytest.fixture(scope="session")
def hundred_thousand_report(tmp_path_factory) -> dict:
    """100,000 scored rows of one model with verdicts, and their review page (no thumbnails), built
    once for the report and label tests that drive it in Chromium: {"probs", "rows", "page"}."""
    import numpy as np

    from nsnet_sdk.report import build_report, normalise_row

    probs = np.random.default_rng(2).random(100_000)
    rows = [normalise_row({"source": f"/data/review/image_{i:06d}.jpg", "prob_fake": float(p),
                           "model_sha256": "ab" * 32,
                           "verdict": "ai-generated" if p > 0.9 else "real" if p < 0.2 else "uncertain"})
            for i, p in enumerate(probs)]
    page = build_report(rows, tmp_path_factory.mktemp("big-report") / "big.html", top=0)
    return {"probs": probs, "rows": rows, "page": page}


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on loopback for one test module, its endpoint and credentials in the
    standard AWS environment; started before `ray_local`, so Ray's workers inherit them."""
    from _s3_util import s3_server

    yield from s3_server()


@pytest.fixture(scope="module")
def ray_local(s3):
    """A local Ray for one test module (after `s3`)."""
    pytest.importorskip("pyarrow")
    from _ray_util import local_ray

    yield from local_ray()
