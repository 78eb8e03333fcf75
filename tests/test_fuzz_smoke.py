"""A short fuzzing run inside the normal test run: the atheris harness over bytes → load_image →
patch mosaic (and the Pillow input path) must finish a few thousand executions with no finding
(10 s per input here, not the long run's 5 s: the test machine may be busy with other runs).

libFuzzer's ``-rss_limit_mb`` compares the limit with ``getrusage(RUSAGE_SELF).ru_maxrss``, checked
once a second, and Linux carries a process's peak RSS across ``execve`` — a child started directly
by pytest reports pytest's own peak (6.4 GB late in a full run) as its memory, and fails whenever
the run lasts over a second. The fuzzer therefore starts from a small launcher process, whose
children begin their accounting afresh, so the limit measures the harness alone."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent / "fuzz"
ROOT = FUZZ.parent.parent
# Runs argv[1:] as its child: the child's peak-RSS accounting starts from this small process, not pytest.
FRESH_ACCOUNTING = [sys.executable, "-c", "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"]


def test_fuzz_smoke_run_finds_nothing(tmp_path):
    pytest.importorskip("atheris", reason="atheris (libFuzzer for Python) is not installed")
    corpus = tmp_path / "corpus"
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, str(FUZZ / "make_corpus.py"), str(corpus)], check=True, env=env,
                   cwd=ROOT, capture_output=True, timeout=60)
    assert len(list(corpus.iterdir())) >= 40
    proc = subprocess.run(
        [*FRESH_ACCOUNTING, sys.executable, str(FUZZ / "fuzz_decode.py"), str(corpus), "-runs=3000", "-seed=1",
         "-rss_limit_mb=1024", "-timeout=10", "-max_len=65536", f"-artifact_prefix={tmp_path}/"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    findings = [p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-", "leak-"))]
    assert proc.returncode == 0 and not findings, f"{findings}\n{log[-3000:]}"
    assert "Done 3000 runs" in log
