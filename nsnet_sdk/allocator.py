"""glibc's allocator where the SDK owns the process: keep freed decode frames in the heap (the
``nsnet`` CLI, decode workers) and give freed heap back after large uploads (the service). Nothing
happens where the C library is not glibc."""
from __future__ import annotations

import functools
from typing import Any

__all__ = ["keep_freed_frames", "large_frames", "return_freed_memory"]

_LARGE_FRAMES = [False]  # set by keep_freed_frames(large_frames=True)


@functools.lru_cache(maxsize=1)
def _glibc() -> Any:
    """The C library, loaded once (``find_library`` runs ``ldconfig``); None where it is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None  # glibc's own


def keep_freed_frames(large_frames: bool = False) -> None:
    """Let glibc reuse freed decode buffers instead of mmap/munmap-ing each one: a fresh process
    otherwise pays the page faults of every decoded frame again (measured in a worker: 3.6 → 2.3 ms
    CPU per 512×512 JPEG). Only in processes the SDK owns (the ``nsnet`` CLI, decode workers).

    glibc caps the mmap threshold at 32 MB, so larger frames (a 4000×3000 decode is 36 MB) are
    still mapped and faulted in afresh on every image; OpenCV's Python ``imdecode`` cannot decode
    into a preallocated array, so the buffer cannot be reused either. ``large_frames`` (batch
    work: ``nsnet detect``) takes them from the heap too (M_MMAP_MAX=0; so do the decode worker
    processes this process starts afterwards, `large_frames`):
    measured 120 → 85 ms CPU per 4000×3000 JPEG on a 2-vCPU Xeon. Not for a long-lived service: up
    to M_TRIM_THRESHOLD of freed heap stays with the process, and fragmentation can keep more."""
    libc = _glibc()
    if libc is None:
        return
    libc.mallopt(-3, 32 << 20)   # M_MMAP_THRESHOLD: heap-allocate blocks below 32 MB
    libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD: keep up to 128 MB of freed heap
    if large_frames:
        libc.mallopt(-4, 0)  # M_MMAP_MAX: no mmap-ed blocks at all, whatever their size
        _LARGE_FRAMES[0] = True


def large_frames() -> bool:
    """Whether this process takes even frames over 32 MB from the heap (what its decode workers
    are told to do as well)."""
    return _LARGE_FRAMES[0]


def return_freed_memory() -> None:
    """Give the heap that large bodies and their copies left free back to the system
    (glibc's ``malloc_trim``): without it a burst of large uploads leaves the replica at its peak
    size, as freed blocks below the mmap threshold stay in the arenas."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
