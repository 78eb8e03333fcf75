"""Short fuzzing runs inside the normal test run: the atheris harnesses over bytes → load_image →
patch mosaic (and the Pillow input path), and bytes → read_provenance, must each finish a fixed
number of executions from a fixed seed corpus and seed with no finding.

Deterministic under load: libFuzzer's ``-rss_limit_mb`` reads the process's peak RSS
(``getrusage``'s ``ru_maxrss``), which Linux carries over ``execve`` from the process that started
it — a child spawned straight from a test run holding 6 GB reported 6.4 GB against a 1 GB limit
before executing a single input. The harness is therefore started through a shell that forks it
(a fresh peak), and the per-input timeout is generous: a hang is minutes, a busy machine seconds.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent / "fuzz"
ROOT = FUZZ.parent.parent


def _env() -> dict[str, str]:
    return {**os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}


def _fuzz(harness: str, corpus: Path, tmp_path: Path, runs: int, *extra: str) -> None:
    args = [sys.executable, str(FUZZ / harness), str(corpus), f"-runs={runs}", "-seed=1",
            "-rss_limit_mb=1024", "-timeout=60", "-max_len=65536", f"-artifact_prefix={tmp_path}/", *extra]
    # `sh -c '"$@"; exit $?'` forks the harness (the command is not the shell's last word), so its
    # ru_maxrss starts from the shell's few MB rather than from this test process's peak.
    proc = subprocess.run(["/bin/sh", "-c", '"$@"; exit $?', "sh", *args], env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    findings = [p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-", "leak-"))]
    assert proc.returncode == 0 and not findings, f"{findings}\n{log[-3000:]}"
    assert f"Done {runs} runs" in log


def _corpus(tmp_path: Path, *flags: str) -> Path:
    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, str(FUZZ / "make_corpus.py"), *flags, str(corpus)], check=True,
                   env=_env(), cwd=ROOT, capture_output=True, timeout=120)
    return corpus


def test_fuzz_smoke_run_finds_nothing(tmp_path):
    pytest.importorskip("atheris", reason="atheris (libFuzzer for Python) is not installed")
    corpus = _corpus(tmp_path)
    assert len(list(corpus.iterdir())) >= 40
    _fuzz("fuzz_decode.py", corpus, tmp_path, 3000)


def test_provenance_fuzz_smoke_run_finds_nothing(tmp_path):
    pytest.importorskip("atheris", reason="atheris (libFuzzer for Python) is not installed")
    corpus = _corpus(tmp_path, "--provenance")
    assert len(list(corpus.iterdir())) >= 10
    _fuzz("fuzz_provenance.py", corpus, tmp_path, 5000)


def test_the_fuzz_child_does_not_inherit_the_parent_peak_memory(tmp_path):
    """The cause of the flaky smoke run, pinned: a child started directly reports this process's
    peak RSS as its own; one forked by the shell trampoline starts from a few MB. Holding an
    extra 300 MB here makes the difference unmistakable whatever else the test run holds."""
    ballast = bytearray(300 << 20)
    ballast[:: 4096] = b"\x01" * len(ballast[:: 4096])  # touched: resident
    code = "import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    direct = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
    forked = int(subprocess.run(["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-c", code],
                                capture_output=True, text=True).stdout)
    del ballast
    assert direct >= 300 << 10 > forked  # kB
