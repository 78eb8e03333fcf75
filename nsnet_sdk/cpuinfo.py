"""What this CPU is: its feature flags and model name, read once from /proc/cpuinfo. The engine
choice (`backends.openvino`) and the patch kernel's measured choice (`pipeline.patches`) both ask
here."""
from __future__ import annotations

import functools
import platform
from pathlib import Path

__all__ = ["cpu_features", "cpu_model"]


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:  # not Linux
        return ""


def _field(cpuinfo: str, *keys: str) -> str | None:
    for line in cpuinfo.splitlines():
        if line.split(":", 1)[0].strip() in keys:
            return line.split(":", 1)[1].strip()
    return None


def cpu_features(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags (``flags`` line of /proc/cpuinfo, or of ``cpuinfo`` text); empty
    where unreadable (non-Linux), which makes every choice fall back to its baseline."""
    flags = _field(_cpuinfo() if cpuinfo is None else cpuinfo, "flags", "Features")
    return frozenset(flags.split()) if flags else frozenset()


def cpu_model() -> str:
    """The CPU's model name (e.g. ``Intel(R) Xeon(R) Processor``), else the platform's word for it."""
    return _field(_cpuinfo(), "model name") or platform.processor() or platform.machine()
