"""A short fuzzing run inside the normal test run: the atheris harness over bytes → load_image →
patch mosaic (and the Pillow input path) must finish a few thousand executions with no finding
(10 s per input here, not the long run's 5 s: the test machine may be busy with other runs)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent / "fuzz"
ROOT = FUZZ.parent.parent


def test_fuzz_smoke_run_finds_nothing(tmp_path):
    pytest.importorskip("atheris", reason="atheris (libFuzzer for Python) is not installed")
    corpus = tmp_path / "corpus"
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, str(FUZZ / "make_corpus.py"), str(corpus)], check=True, env=env,
                   cwd=ROOT, capture_output=True, timeout=60)
    assert len(list(corpus.iterdir())) >= 40
    proc = subprocess.run(
        [sys.executable, str(FUZZ / "fuzz_decode.py"), str(corpus), "-runs=3000", "-seed=1",
         "-rss_limit_mb=1024", "-timeout=10", "-max_len=65536", f"-artifact_prefix={tmp_path}/"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    findings = [p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-", "leak-"))]
    assert proc.returncode == 0 and not findings, f"{findings}\n{log[-3000:]}"
    assert "Done 3000 runs" in log
