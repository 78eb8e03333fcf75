"""The result cache: it never answers for another model, options or file (property test against a
dict), several processes write one file at once, a corrupt file is reported and rebuilt, and
in-run deduplication gives every input the row of its first identical file."""
from __future__ import annotations

import multiprocessing
import os
import sqlite3

import pytest
from hypothesis import given, settings, strategies as st

from nsnet_sdk.cache import ResultCache, first_of_each, options_key

SHAS = st.sampled_from(["a" * 64, "b" * 64, "c" * 64])
MODELS = st.sampled_from(["1" * 64, "2" * 64])
OPTIONS = st.sampled_from([{"threshold": 0.5}, {"threshold": 0.6}, {"threshold": 0.5, "provenance": True}])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), SHAS, MODELS, OPTIONS, st.floats(0, 1)), max_size=25))
def test_a_cache_answers_only_for_its_own_model_options_and_file(tmp_path_factory, ops):
    path = tmp_path_factory.mktemp("c") / "cache.sqlite"
    truth: dict[tuple, float] = {}
    caches: dict[tuple, ResultCache] = {}
    try:
        for is_put, sha, model, opts, prob in ops:
            key = (model, options_key(opts))
            cache = caches.get(key) or caches.setdefault(key, ResultCache(path, model_sha256=model, options=opts))
            if is_put:
                cache.put(sha, {"source": os.fsdecode(b"x\xff.png"), "prob_fake": prob, "cached": False})
                truth[(sha, *key)] = prob
            else:
                row = cache.get(sha)
                want = truth.get((sha, *key))
                assert (row is None) == (want is None)
                if row is not None:
                    assert row["prob_fake"] == want and row["cached"] is True
                    assert row["source"] == os.fsdecode(b"x\xff.png")
    finally:
        for c in caches.values():
            c.close()


def _writer(path: str, worker: int, n: int) -> None:
    with ResultCache(path, model_sha256="1" * 64, options={"t": 1}) as cache:
        for i in range(n):
            cache.put(f"{worker:02d}{i:062d}", {"prob_fake": i / n, "worker": worker})
            assert cache.get(f"{worker:02d}{i:062d}")["worker"] == worker


def test_several_processes_write_one_cache(tmp_path):
    path = str(tmp_path / "cache.sqlite")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 150)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 4
    with ResultCache(path, model_sha256="1" * 64, options={"t": 1}) as cache:
        assert cache.problems == []
        for w in range(4):
            for i in range(150):
                assert cache.get(f"{w:02d}{i:062d}")["prob_fake"] == i / 150
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("damage", ["garbage", "other schema", "bad row"])
def test_a_corrupt_cache_is_reported_and_never_trusted(tmp_path, damage):
    path = tmp_path / "cache.sqlite"
    with ResultCache(path, model_sha256="1" * 64, options={}) as cache:
        cache.put("a" * 64, {"prob_fake": 0.9})
    if damage == "garbage":
        data = bytearray(path.read_bytes())
        data[:100] = os.urandom(100)  # the SQLite header
        path.write_bytes(bytes(data))
    elif damage == "other schema":
        db = sqlite3.connect(path)
        db.execute("UPDATE meta SET value = 'something else' WHERE key = 'schema'")
        db.commit(), db.close()
    else:
        db = sqlite3.connect(path)
        db.execute("UPDATE results SET row = '[1, 2'")
        db.commit(), db.close()
    with ResultCache(path, model_sha256="1" * 64, options={}) as cache:
        assert cache.get("a" * 64) is None  # not the damaged row
        assert len(cache.problems) == 1 and str(path) in cache.problems[0]
        cache.put("a" * 64, {"prob_fake": 0.1})
        assert cache.get("a" * 64)["prob_fake"] == 0.1  # rebuilt and usable
    if damage != "bad row":
        assert len(list(tmp_path.glob("cache.sqlite.corrupt-*"))) == 1  # kept aside for a look


def test_first_of_each_gives_every_input_its_first_identical_files_row():
    shas = ["a", "b", "a", None, "c", "b", None, "a"]
    todo, source = first_of_each(shas)
    assert todo == [0, 1, 3, 4, 6]
    assert source == [0, 1, 0, 3, 4, 1, 6, 0]
    assert all(shas[source[i]] == shas[i] for i in range(len(shas)))
