"""Guard and bounded read: the one place in the package that opens an input path.

A path is stat-ed first and anything but a regular file (FIFO, device, socket, directory) is refused
without being opened, so no input can block a worker; a regular file is read up to a byte limit
derived from the pixel limit, so no input can exhaust memory before its header is even checked.
Every consumer (the Detector's executors, provenance, the report's thumbnails, explain, training)
reads input files through `read_image_file`.
"""
from __future__ import annotations

import os
import stat

from ..errors import ImageDecodeError, ImageTooLargeError

__all__ = ["read_image_file", "file_byte_limit", "read_input_bytes"]


def read_image_file(path: str | os.PathLike, limit: int, label: str) -> bytes:
    """The bytes of a regular file, at most ``limit``; never blocks on a FIFO or device."""
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise ImageDecodeError(f"{label}: is a directory, not an image file", label)
        if not stat.S_ISREG(st.st_mode):
            raise ImageDecodeError(f"{label}: not a regular file ({_file_kind(st.st_mode)}); refused "
                                   "without opening it", label)
        if st.st_size > limit:
            raise ImageTooLargeError(f"{label}: file is {st.st_size:,} bytes, over the limit of "
                                     f"{limit:,} (raise max_pixels to accept it)", label)
        # O_NONBLOCK: if the path is swapped for a FIFO after the stat, open still returns at once.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
                     | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb", buffering=0) as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ImageDecodeError(f"{label}: not a regular file; refused", label)
            # Read what the stat promised plus one byte: asking for ``limit + 1`` made Python
            # allocate (mmap) and free that much per file and page-fault the data in fresh.
            data = f.read(st.st_size + 1)
            if data is not None and len(data) > st.st_size:  # it grew after the stat: still capped
                data += f.read(limit + 1 - len(data)) or b""
        if data is None or len(data) > limit:
            raise ImageTooLargeError(f"{label}: file grew past the limit of {limit:,} bytes while read", label)
        return data
    except FileNotFoundError:
        raise ImageDecodeError(f"{label}: no such file", label) from None
    except IsADirectoryError:
        raise ImageDecodeError(f"{label}: is a directory, not an image file", label) from None
    except OSError as e:
        raise ImageDecodeError(f"{label}: cannot read: {e.strerror or e}", label) from None
    except ValueError as e:  # a NUL byte or an unencodable name: the OS never saw the path
        raise ImageDecodeError(f"{label}: cannot read: {e}", label) from e


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a plain file"


def file_byte_limit(max_pixels: int) -> int:
    """Largest file `load_image` reads for ``max_pixels``: a compressed image cannot much exceed
    raw 16-bit RGB at the pixel limit, so anything larger is refused unread."""
    return 6 * max_pixels + (64 << 20)


def read_input_bytes(src, max_pixels: int, label: str) -> bytes:
    """``src`` as encoded bytes: a path read through `read_image_file` with the limit for
    ``max_pixels``, bytes-like objects as they are."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src)
    return read_image_file(src, file_byte_limit(max_pixels), label)
