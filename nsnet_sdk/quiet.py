"""Keeping other libraries' console output off our users' terminals: OpenCV's own log, text that
native code (libpng, libtiff, ONNX Runtime) prints straight to file descriptor 2, and records
that libraries log on the root logger; all of it goes to `logging` (logger ``nsnet_sdk.native``,
DEBUG) instead, where a caller who wants it can still find it."""
from __future__ import annotations

import logging
import os
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

NATIVE_LOGGER = "nsnet_sdk.native"


def quiet_libraries(verbose: bool = False) -> None:
    """Turn OpenCV's native log off (its ``[ WARN:0@…]`` / ``[ERROR:0@…]`` lines are about inputs
    that get their own result row); with ``verbose`` leave it as it is."""
    if verbose:
        return
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def _pump(fd: int, logger: logging.Logger) -> None:
    with open(fd, "rb", closefd=True) as pipe:
        for line in pipe:
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                logger.debug("%s", text)


@contextmanager
def native_stderr_to_logging(enabled: bool = True,
                             logger: logging.Logger | None = None) -> Iterator[None]:
    """While active, what native code writes to file descriptor 2 (e.g. ``libpng error: PNG input
    buffer is incomplete``) is logged on ``logger`` at DEBUG, line by line, instead of reaching
    the terminal; Python's ``sys.stderr`` (progress bar, messages, warnings, tracebacks) still
    does. Does nothing when ``sys.stderr`` is not file descriptor 2 (e.g. captured by a test)."""
    try:
        redirect = enabled and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        redirect = False
    if not redirect:
        yield
        return
    logger = logger or logging.getLogger(NATIVE_LOGGER)
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    python_stderr = sys.stderr
    sys.stderr = open(saved, "w", buffering=1, encoding=python_stderr.encoding,
                      errors=python_stderr.errors, closefd=False)
    pump = threading.Thread(target=_pump, args=(read_end, logger), name="nsnet-native-stderr",
                            daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr = python_stderr
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump sees end of file
        os.close(saved)
        pump.join(timeout=2)


class _RootRecordsTo(logging.Filter):
    def __init__(self, target: logging.Logger) -> None:
        super().__init__()
        self.target = target

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "root":
            return True
        self.target.debug("%s: %s", record.levelname, record.getMessage())
        return False


@contextmanager
def root_records_to(logger: logging.Logger) -> Iterator[None]:
    """While active, records logged straight on the root logger (a library's
    ``logging.warning(...)``, e.g. onnxruntime.quantization's advice to pre-process) go to
    ``logger`` at DEBUG, and `logging` does not install its default stderr handler for them."""
    root = logging.getLogger()
    # With no handler on root, logging.warning() would call basicConfig() and leave a stderr
    # handler behind for good; a stand-in that does what logging does without handlers (print
    # WARNING and above through logging.lastResort) keeps other loggers' records as they were.
    guard = _LastResort() if not root.handlers else None
    flt = _RootRecordsTo(logger)
    if guard is not None:
        root.addHandler(guard)
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)
        if guard is not None:
            root.removeHandler(guard)


class _LastResort(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        last = logging.lastResort
        if last is not None and record.levelno >= last.level:
            last.handle(record)
