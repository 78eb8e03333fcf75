"""Inputs the fuzzer found, kept as regression tests. Each is decoded in a fresh process, so a
crash inside a native decoder fails the test instead of killing the test run."""
from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# An APNG whose fdAT fails its CRC, an IDAT follows the fdAT and a junk chunk name follows: OpenCV
# 5.0's APNG reader dies with SIGSEGV on it (found by tests/fuzz after ~800k executions).
APNG_SEGFAULT = bytes.fromhex(
    "89504e470d0a1a0a0000000d494844520000001000000010080200000090916836000000086163544c00000003"
    "00000000ceedbac00000001049444154789c63601805a36014c00000031000013f2c2bec0000001a6663544c00"
    "00000100000010000000100000000000000000000000010000c900e3a00000001d6664415400000002789c63ac"
    "a8a86020053091a47a54c3a88621a501007ffc68886e31e65f0000001049444154789c63601805a36014c00000"
    "0300000a000000000000000100002496304900002349454e44ae426082")


def with_fixed_crcs(png: bytes) -> bytes:
    """The same chunks with every CRC recomputed: only the structure can refuse it then."""
    out, pos = bytearray(png[:8]), 8
    while pos + 12 <= len(png):
        length = struct.unpack(">I", png[pos : pos + 4])[0]
        if pos + 12 + length > len(png):
            break
        body = png[pos + 4 : pos + 8 + length]
        out += png[pos : pos + 8 + length] + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
        pos += 12 + length
    return bytes(out + png[pos:])


_RUN = r"""
import sys
from nsnet_sdk.pipeline import load_image
try:
    load_image(bytes.fromhex(sys.argv[1]))
    print("DECODED")
except Exception as e:
    print(type(e).__name__, e)
"""


def decode_in_subprocess(data: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _RUN, data.hex()], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def test_malformed_apng_is_refused_before_opencv_sees_it():
    for data in (APNG_SEGFAULT, with_fixed_crcs(APNG_SEGFAULT)):
        r = decode_in_subprocess(data)
        assert r.returncode == 0, f"decoder crashed (exit {r.returncode}): {r.stderr[-500:]}"
        assert r.stdout.startswith("ImageDecodeError"), r.stdout


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


_IHDR = _chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0))
_IDAT = _chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + bytes(range(48)) for _ in range(16))))


def _fctl(seq: int, w: int = 16, h: int = 16, x: int = 0, y: int = 0) -> bytes:
    return _chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, w, h, x, y, 1, 10, 0, 0))


def _fdat(seq: int) -> bytes:
    return _chunk(b"fdAT", struct.pack(">I", seq) + zlib.compress(b"\x00" * (16 * 49)))


def _apng(*chunks: bytes, frames: int = 3, end: bool = True) -> bytes:
    actl = _chunk(b"acTL", struct.pack(">II", frames, 0))
    return b"\x89PNG\r\n\x1a\n" + _IHDR + actl + b"".join(chunks) + (_chunk(b"IEND", b"") if end else b"")


# 152 bytes: signature, IHDR, acTL (3 frames), IDAT, fcTL, then any unknown ancillary chunk with a
# good CRC. OpenCV 5.1's APNG reader dies with SIGSEGV on it (checked by the first test below).
APNG_UNKNOWN_CHUNK = _apng(_IDAT, _fctl(0), _chunk(b"zzzz", b"hello"), end=False)

# The APNG specification's ordering rules, one violation each; every one is refused by structure.
APNG_MISORDERED = {
    "unknown chunk among frames": APNG_UNKNOWN_CHUNK,
    "unknown chunk after a complete frame": _apng(_IDAT, _fctl(0), _fdat(1), _chunk(b"aaaa", b"x"), frames=2),
    "sequence number gap": _apng(_fctl(0), _IDAT, _fctl(2), _fdat(3), frames=2),
    "sequence number repeated": _apng(_fctl(0), _IDAT, _fctl(1), _fdat(1), frames=2),
    "first sequence number not 0": _apng(_fctl(1), _IDAT, frames=1),
    "fewer frames than acTL declares": _apng(_fctl(0), _IDAT, _fctl(1), _fdat(2), frames=3),
    "fdAT before the image data": _apng(_fctl(0), _fdat(1), _IDAT, frames=1),
    "fdAT without its fcTL": _apng(_IDAT, _fdat(0), frames=1),
    "frame without fdAT": _apng(_fctl(0), _IDAT, _fctl(1), _fctl(2), _fdat(3), frames=3),
    "first frame not the canvas": _apng(_fctl(0, 8, 8), _IDAT, frames=1),
    "zero frames declared": _apng(_IDAT, frames=0),
    "IDAT after frame data": _apng(_fctl(0), _IDAT, _fctl(1), _fdat(2), _IDAT, frames=2),
}


def test_the_unknown_chunk_apng_really_crashes_opencv():
    """The regression file is the real thing: OpenCV alone dies on it (in a child process)."""
    run = "import sys, numpy, cv2; cv2.imdecode(numpy.frombuffer(bytes.fromhex(sys.argv[1]), numpy.uint8), 1)"
    r = subprocess.run([sys.executable, "-c", run, APNG_UNKNOWN_CHUNK.hex()], capture_output=True, timeout=60)
    if r.returncode == 0:
        pytest.skip("this OpenCV build survives the file; the structural refusal is still tested")
    assert r.returncode < 0  # killed by a signal, not a Python error


@pytest.mark.parametrize("case", sorted(APNG_MISORDERED))
def test_apng_breaking_the_chunk_order_rules_is_refused_before_opencv(case):
    r = decode_in_subprocess(APNG_MISORDERED[case])
    assert r.returncode == 0, f"decoder crashed (exit {r.returncode}): {r.stderr[-500:]}"
    assert r.stdout.startswith("ImageDecodeError") and "PNG" in r.stdout, r.stdout


def test_a_well_ordered_apng_still_decodes():
    """Both legal layouts: the image data as frame 0, and as a default image outside the animation,
    with text after the frames."""
    for data in (_apng(_fctl(0), _IDAT, _fctl(1), _fdat(2), _fdat(3), frames=2),
                 _apng(_IDAT, _fctl(0), _fdat(1), _chunk(b"tEXt", b"k\x00v"), frames=1)):
        r = decode_in_subprocess(data)
        assert r.returncode == 0 and r.stdout.startswith("DECODED"), (r.returncode, r.stdout, r.stderr[-300:])


# P1 header whose "comment" is 97 '#' characters and no number: the PNM token pattern backtracked
# over every way of splitting the run into comments (exponential; the fuzzer's 10 s timeout).
PNM_COMMENT_RUN = b"P1\n3 " + b"#" * 97 + b"iprp\x93\x8d\x93pp\x00\x00"


def test_pnm_header_with_a_long_comment_run_is_parsed_in_linear_time():
    r = decode_in_subprocess(PNM_COMMENT_RUN)  # the child's 60 s timeout catches a regression
    assert r.returncode == 0 and r.stdout.startswith("ImageDecodeError"), (r.returncode, r.stdout)


def test_avif_item_location_counts_cannot_hang_the_walk():
    """An iloc box of 3,000 items, each declaring 65,535 extents of zero-byte fields (24 KB): ~2e8
    steps for a walk bounded only by the counts (the fuzzer's 10 s timeout; minutes here)."""
    import _decode_util as u

    r = decode_in_subprocess(u.avif_grid(64, 64, iloc_counts=(3000, 65535)))
    assert r.returncode == 0 and r.stdout.startswith("ImageDecodeError"), (r.returncode, r.stdout)
    assert "iloc" in r.stdout
