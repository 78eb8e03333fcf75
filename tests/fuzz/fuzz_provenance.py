"""atheris harness: arbitrary bytes → `read_provenance` (the bounded metadata walk and its reading).

A finding is any exception (the reader records every bad file, it never raises), a record that is
not JSON, larger than `MAX_RECORD` characters or with more than `MAX_SIGNALS` + 1 signal lines, a
run over libFuzzer's ``-timeout``, or memory over ``-rss_limit_mb``. C2PA validation
(c2pa-python, a separate native library with its own fuzzing) is off: this harness covers the
walk nsnet-sdk owns. Run it as described in tests/fuzz/README.md.
"""
from __future__ import annotations

import json
import sys

import atheris

with atheris.instrument_imports(include=["nsnet_sdk"]):
    from nsnet_sdk.provenance import MAX_SIGNALS, SUMMARIES, read_provenance

MAX_RECORD = 64 << 10  # characters of one record as JSON: signals, values and names are all capped


def one_input(data: bytes) -> None:
    rec = read_provenance(data, use_c2pa=False)
    text = json.dumps(rec)
    if rec["summary"] not in SUMMARIES or len(text) > MAX_RECORD or len(rec["signals"]) > MAX_SIGNALS + 1:
        raise AssertionError(f"record out of bounds: {text[:500]}")


def main(argv: list[str]) -> None:
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
