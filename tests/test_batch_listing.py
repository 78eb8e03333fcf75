"""Listings stream: an ``s3://`` prefix is read a page at a time, and `nsnet batch` scores the first
inputs of a long listing before the listing has ended, so a listing of millions of lines is never
held whole in the driver; a job whose listing broke off resumes where it stopped."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from _s3_util import put_objects
from _sdk_util import build_stand_in_onnx, textured, write_png
from nsnet_sdk import batch_inputs
from nsnet_sdk.batch import SMALL_JOB, run_batch
from nsnet_sdk.results import unescape_text

BUCKET = "nsnet-listing"
KEYS = 2500  # three pages of S3's 1,000 keys


def test_an_s3_prefix_is_listed_as_it_is_used(s3):
    """A key added after the first name was given, at the end of the key order, is listed: the
    later pages were read later (a listing read whole before the first name would miss it)."""
    pytest.importorskip("pyarrow")
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    from nsnet_sdk.uris import list_prefix

    put_objects(BUCKET, {"p/a-first.png": b"x"})
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for i in range(KEYS):  # straight into the server's store: thousands of uploads take a minute
        backend.put_object(BUCKET, f"p/k{i:05d}.{'png' if i % 2 else 'json'}", b"x")
    names = list_prefix(f"s3://{BUCKET}/p/")
    assert next(names) == f"s3://{BUCKET}/p/a-first.png"
    put_objects(BUCKET, {"p/zz-added-later.png": b"x"})
    rest = list(names)
    assert rest[-1] == f"s3://{BUCKET}/p/zz-added-later.png"
    assert len(rest) == KEYS // 2 + 1 and rest == sorted(rest)


def test_a_long_listing_is_scored_while_it_is_read_and_resumes_after_it_broke(tmp_path, monkeypatch):
    """The listing (a prefix of SMALL_JOB + 300 inputs) breaks off after its first part: rows were
    handed out before it did, the job ends with the listing's error, and ``resume`` scores the rest
    exactly once."""
    model = build_stand_in_onnx(tmp_path / "m.onnx")
    picture = write_png(tmp_path / "pic.png", textured(40, 48, 1))
    # file:// URIs: every tenth one a picture (a link of one file), the rest missing files
    keys = []
    for i in range(SMALL_JOB + 300):
        name = tmp_path / f"p{i:05d}.png"
        if i % 10 == 0:
            os.link(picture, name)
        keys.append(f"file://{name}")
    taken: list[int] = []
    seen_before_end: list[int] = []

    def listing(uri: str, broken: bool):
        yield from keys[:SMALL_JOB + 200]
        seen_before_end.append(sum(taken))  # rows handed out while the listing was still going
        if broken:
            raise OSError(f"{uri}: cannot list: connection reset")
        yield from keys[SMALL_JOB + 200:]

    out = tmp_path / "out"
    monkeypatch.setattr(batch_inputs, "list_prefix", lambda uri: listing(uri, True))
    with pytest.raises(OSError, match="connection reset"):
        run_batch(["s3://bucket/prefix/"], model, out, use_ray=False, batch_size=16,
                  on_rows=lambda rows: taken.append(len(rows)))
    assert seen_before_end and seen_before_end[0] > 0
    monkeypatch.setattr(batch_inputs, "list_prefix", lambda uri: listing(uri, False))
    summary = run_batch(["s3://bucket/prefix/"], model, out, use_ray=False, batch_size=16, resume=True)
    assert summary.skipped == sum(taken) and summary.inputs == len(keys)

    import pyarrow.parquet as pq

    rows = [r for f in sorted(out.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    paths = [unescape_text(r["path"]) for r in rows]
    assert len(paths) == len(set(paths)) == len(keys) and set(paths) == set(keys)
    for r in rows:
        assert (r["error"] is None) == Path(unescape_text(r["path"])[len("file://"):]).exists(), r
