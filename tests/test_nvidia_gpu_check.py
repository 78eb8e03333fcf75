"""`benchmarks.gpu_check` cannot pass by accident: a step that was asked for and could not run
fails the whole run, with Python's own error printed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[1]


def _run_blocking(modules: list[str], args: list[str], out: Path) -> subprocess.CompletedProcess:
    # A module set to None in sys.modules raises ImportError on import: what a box without it sees.
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
            + "from benchmarks.gpu_check import main\nsys.exit(main(sys.argv[1:]))\n")
    return subprocess.run([sys.executable, "-c", code, "--device", "cpu", "--out", str(out), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_library_that_cannot_be_imported_fails_the_run_with_its_own_error(tmp_path):
    r = _run_blocking(["torch"], ["--no-tests"], tmp_path)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "import torch failed: ModuleNotFoundError: import of torch halted; None in sys.modules" in r.stderr
    import json

    steps = {s["step"]: s for s in json.loads((tmp_path / "gpu_check_cpu.json").read_text())["steps"]}
    assert steps["import torch"]["status"] == "failed"
    assert steps["rows: torch"]["status"] == "failed" and "torch" in steps["rows: torch"]["detail"]
    assert steps["rows: tensorrt"]["status"] == "skipped"  # cannot apply on the CPU: not a failure


def test_tests_asked_for_without_pytest_fail_the_run(tmp_path):
    # The defect this replaces: "pytest is not installed" was reported and the run exited 0.
    r = _run_blocking(["pytest", "torch"], [], tmp_path)
    assert r.returncode == 1
    assert "import pytest failed: ModuleNotFoundError: import of pytest halted" in r.stderr
    import json

    steps = {s["step"]: s for s in json.loads((tmp_path / "gpu_check_cpu.json").read_text())["steps"]}
    assert steps["tests"]["status"] == "failed"


def test_checklist_items_follow_their_tests_and_a_skip_on_cuda_is_a_failure(tmp_path):
    first, second = (test for _, test in gpu_check.CHECKLIST[:2])
    results = {first: ("passed", ""), second: ("skipped", "CUDA: no CUDA device visible to torch")}
    on_cpu = gpu_check.checklist_steps(results, "cpu", tests_asked=True)
    assert [s["status"] for s in on_cpu[:2]] == ["ran", "skipped"]
    assert all(s["status"] == "failed" for s in on_cpu[2:])  # not collected: cannot count as run
    on_cuda = gpu_check.checklist_steps(results, "cuda", tests_asked=True)
    assert [s["status"] for s in on_cuda[:2]] == ["ran", "failed"]
    assert gpu_check.exit_code(on_cuda[:1]) == 0 and gpu_check.exit_code(on_cuda[:2]) == 1
    assert {s["status"] for s in gpu_check.checklist_steps({}, "cuda", tests_asked=False)} == {"skipped"}


def test_every_checklist_test_exists_and_is_gpu_marked():
    # The checklist names tests by id: a renamed test would otherwise read as "not collected".
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-m", "gpu",
                        *sorted({t.split("::")[0] for _, t in gpu_check.CHECKLIST})],
                       capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    collected = set(r.stdout.split())
    assert {t for _, t in gpu_check.CHECKLIST} <= collected, r.stdout[-2000:]


def test_junit_outcomes_reads_pytest_s_report(tmp_path):
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "def test_ok():\n    pass\n"
        "@pytest.mark.skip(reason='no CUDA')\ndef test_skip():\n    pass\n"
        "def test_bad():\n    assert False\n")
    xml = tmp_path / "r.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                    "test_x.py"], cwd=tmp_path, capture_output=True, timeout=300)
    got = gpu_check.junit_outcomes(xml)
    assert {k: v[0] for k, v in got.items()} == {"test_x.py::test_ok": "passed",
                                                 "test_x.py::test_skip": "skipped",
                                                 "test_x.py::test_bad": "failed"}
    assert "no CUDA" in got["test_x.py::test_skip"][1]
