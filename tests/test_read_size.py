"""The bounded reader reads what the stat promised, and a file that is longer than its stat said
(it grew after the stat; procfs files say 0 bytes) is still read whole, or refused past the limit."""
from __future__ import annotations

import os

import pytest

from nsnet_sdk.errors import ImageTooLargeError
from nsnet_sdk.pipeline.read import read_image_file

PROC = "/proc/self/status"  # a regular file whose stat says 0 bytes, with content


@pytest.mark.skipif(not os.path.isfile(PROC) or os.stat(PROC).st_size != 0, reason="needs Linux procfs")
def test_a_file_longer_than_its_stat_is_read_whole_or_refused_past_the_limit():
    data = read_image_file(PROC, 1 << 20, "status")
    assert data.startswith(b"Name:") and b"\nPid:" in data and data.endswith(b"\n")
    with pytest.raises(ImageTooLargeError, match="grew past the limit of 16 bytes"):
        read_image_file(PROC, 16, "status")


def test_a_file_is_read_exactly(tmp_path):
    for size in (0, 1, 4095, 4096, 70_000):
        p = tmp_path / f"f{size}"
        p.write_bytes(os.urandom(size))
        assert read_image_file(p, 1 << 20, "f") == p.read_bytes()
