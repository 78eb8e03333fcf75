"""Inputs the fuzzer found, kept as regression tests. Each is decoded in a fresh process, so a
crash inside a native decoder fails the test instead of killing the test run."""
from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

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
