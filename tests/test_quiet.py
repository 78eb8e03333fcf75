"""Other libraries' console output stays off the terminal and goes to `logging` instead: records
on the root logger (onnxruntime.quantization) and text native code writes to fd 2."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, env=env)


def test_root_logger_records_go_to_our_logger_and_install_no_handler():
    r = _run("""
        import logging
        from nsnet_sdk.quiet import root_records_to
        got = []
        ours = logging.getLogger("ours")
        ours.addHandler(type("H", (logging.Handler,), {"emit": lambda self, rec: got.append(rec)})())
        ours.setLevel(logging.DEBUG)
        with root_records_to(ours):
            logging.warning("Please consider to run pre-processing before quantization.")
            logging.getLogger("lib.child").warning("a named logger is left alone")
        assert [(g.levelno, g.getMessage()) for g in got] == [
            (logging.DEBUG, "WARNING: Please consider to run pre-processing before quantization.")], got
        assert logging.getLogger().handlers == [], logging.getLogger().handlers
        print("ok")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
    assert "pre-processing" not in r.stderr
    assert "a named logger is left alone" in r.stderr  # only root's own records are rerouted


def test_int8_quantization_prints_nothing_on_the_terminal(tmp_path):
    pytest.importorskip("onnxruntime.quantization")
    pytest.importorskip("onnx")
    from _sdk_util import build_stand_in_onnx

    src = build_stand_in_onnx(tmp_path / "m.onnx", size=64)
    r = _run(f"""
        import logging, sys
        from pathlib import Path
        from export.to_onnx import quantize_int8
        logging.getLogger("export.to_onnx").setLevel(logging.DEBUG)
        seen = []
        logging.getLogger("export.to_onnx").addHandler(
            type("H", (logging.Handler,), {{"emit": lambda self, rec: seen.append(rec.getMessage())}})())
        quantize_int8(Path({str(src)!r}), Path({str(tmp_path / "q.onnx")!r}))
        print(any("pre-process" in m for m in seen))
    """)
    assert r.returncode == 0, r.stderr
    assert "WARNING:root" not in r.stderr and "pre-process" not in r.stderr, r.stderr
    assert (tmp_path / "q.onnx").is_file()
    assert r.stdout.strip() == "True"  # the advice was given, and kept in our logger


def test_native_stderr_is_logged_not_printed_while_python_stderr_still_prints():
    r = _run("""
        import logging, os, sys
        from nsnet_sdk.quiet import native_stderr_to_logging
        got = []
        log = logging.getLogger("nsnet_sdk.native")
        log.setLevel(logging.DEBUG)
        log.addHandler(type("H", (logging.Handler,), {"emit": lambda self, rec: got.append(rec.getMessage())})())
        with native_stderr_to_logging():
            os.write(2, b"libpng error: PNG input buffer is incomplete\\n")
            print("python message", file=sys.stderr)
        os.write(2, b"after\\n")
        print(got)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "python message\nafter\n"
    assert r.stdout.strip() == "['libpng error: PNG input buffer is incomplete']"
