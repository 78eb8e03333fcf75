"""The review report: results read as `nsnet detect` writes them (JSONL, CSV, missing columns),
the page's content, its size at 100,000 rows, and the page as headless Chromium renders it
(row counts, paging, sorting, filtering, images loaded, no console errors)."""
from __future__ import annotations

import base64
import os
import re

import numpy as np
import pytest

pytest.importorskip("onnx")

from _browser import browser  # noqa: E402,F401  (the fixture)
from _sdk_util import build_stand_in_onnx, textured, write_png  # noqa: E402

from nsnet_sdk.cli import main  # noqa: E402
from nsnet_sdk.report import build_report, normalise_row, read_results  # noqa: E402


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A folder of 14 images (one AI-declared by PNG metadata), one broken file, a hostile name,
    and `nsnet detect` results for it as JSONL (with --provenance) and CSV (without)."""
    from benchmarks.provenance_samples import png_chunk, png_with

    root = tmp_path_factory.mktemp("rep")
    imgs = root / "imgs"
    imgs.mkdir()
    for i in range(13):
        write_png(imgs / f"img{i:02d}.png", textured(180 + 13 * i, 240, seed=i))
    write_png(imgs / "tab\there \\ back.png", textured(150, 150, seed=99))  # escaped in result files
    (imgs / "gen.png").write_bytes(png_with(png_chunk(b"tEXt", b"parameters\x00a cat")))
    (imgs / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    # A path holding "</script>" and markup: a folder named "evil<" and a file "script><img ...>.jpg".
    (imgs / "evil<").mkdir()
    (imgs / "evil<" / "script><img src=x onerror=alert(1)>.jpg").write_bytes(b"junk")
    model = build_stand_in_onnx(root / "m.onnx")
    jsonl, csv_path = root / "r.jsonl", root / "r.csv"
    assert main(["detect", str(imgs), "-r", "-m", str(model), "-q", "--json", str(jsonl), "--provenance"]) == 0
    assert main(["detect", str(imgs), "-r", "-m", str(model), "-q", "--csv", str(csv_path)]) == 0
    return {"root": root, "model": model, "jsonl": jsonl, "csv": csv_path, "n": 17}


def test_reads_detect_jsonl_and_csv_alike(results):
    j, pj = read_results([results["jsonl"]])
    c, pc = read_results([results["csv"]])
    assert pj == pc == [] and len(j) == len(c) == results["n"]
    key = lambda r: (r["source"], r["verdict"], None if r["prob_fake"] is None else round(r["prob_fake"], 9))  # noqa: E731
    assert sorted(map(key, j)) == sorted(map(key, c))
    assert sum(r["verdict"] == "error" for r in j) == 2
    assert any("</script><img" in r["source"] for r in j)
    assert any(r["source"].endswith("tab\there \\ back.png") for r in j)  # unescaped: the real path
    page = build_report(j, results["root"] / "all.html", top=50).read_text()
    assert page.count('<div class="card">') == results["n"] - 2 + 1 and "image not available" not in page
    gen = next(r for r in j if r["source"].endswith("gen.png"))
    assert gen["provenance"] == "ai-declared" and "Stable Diffusion" in gen["generator"]


def test_missing_columns_are_tolerated_and_broken_files_named(tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_text('{"source": "a.jpg", "prob_fake": 0.9}\n'
                 '{"source": "b.jpg", "prob_fake": 0.5, "verdict": "uncertain", "warnings": ["tiny"]}\n'
                 '{"source": "c.jpg", "prob_fake": "nan"}\n{"source": "d.jpg", "prob_fake": 0.2, "is_fake": false}\n')
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"source": "e.jpg", "prob_fake": 0.1}\n{broken\n')
    rows, problems = read_results([f, broken, tmp_path / "missing.jsonl"])
    # no is_fake and no verdict: scored but not called fake; it never becomes "ai-generated"
    assert [r["verdict"] for r in rows] == ["real", "uncertain", "error", "real"]
    assert rows[1]["warnings"] == "tiny" and rows[2]["error"] == "no score in the results row"
    assert len(problems) == 2 and "broken.jsonl:2" in problems[0] and "missing.jsonl" in problems[1]
    assert normalise_row({"source": "x", "prob_fake": "0.7", "is_fake": "True"})["verdict"] == "ai-generated"


def test_reads_nsnet_batch_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from nsnet_sdk.results import escape_text

    odd = os.fsdecode(b"c\xffname.jpg")  # a non-UTF-8 name, escaped in the file as nsnet batch does
    table = pa.table({"path": ["a.jpg", "b.jpg", escape_text(odd)], "prob_fake": [0.9, None, 0.1],
                      "logit": [2.2, None, -2.2], "is_fake": [True, None, False],
                      "error": [None, "ImageDecodeError: b.jpg: truncated", None], "model_sha256": ["0" * 64] * 3})
    (tmp_path / "out").mkdir()
    pq.write_table(table.slice(0, 2), tmp_path / "out" / "part-0.parquet")
    pq.write_table(table.slice(2), tmp_path / "out" / "part-1.parquet")
    pq.write_table(table, tmp_path / "one.parquet")
    for src in (tmp_path / "one.parquet", tmp_path / "out"):
        rows, problems = read_results([src])
        assert problems == []
        assert sorted((r["source"], r["verdict"]) for r in rows) == [
            ("a.jpg", "ai-generated"), ("b.jpg", "error"), (odd, "real")]
    # The page shows the name as the result files write it, and carries the model's sha256.
    page = build_report(rows, tmp_path / "p.html").read_text(encoding="utf-8")
    assert "c\\xffname.jpg" in page and f"model sha256 {'0' * 64}" in page


def test_any_row_values_normalise_and_render(tmp_path):
    from hypothesis import given, settings, strategies as st

    values = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=30),
                          lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                          max_leaves=6)
    keys = st.sampled_from(["source", "prob_fake", "is_fake", "error", "verdict", "warnings", "provenance",
                            "c2pa", "generator", "logit"])

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.dictionaries(keys, values, max_size=10), max_size=5))
    def run(raws):
        rows = [normalise_row(r) for r in raws]
        for r in rows:
            assert r["verdict"] in ("ai-generated", "uncertain", "real", "error")
            assert r["prob_fake"] is None or 0 <= r["prob_fake"] <= 1 or r["verdict"] == "error"
        build_report(rows, tmp_path / "h.html", top=2)

    run()


def test_report_content(results, tmp_path):
    rows, _ = read_results([results["jsonl"]])
    out = build_report(rows, tmp_path / "r.html", top=5)
    page = out.read_text()
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("ai-generated", "uncertain", "real", "error")}
    for v, n in counts.items():
        assert f'<div class="count v-{v}"><b>{n:,}</b>{v}</div>' in page
    hist = [int(m) for m in re.findall(r"<title>[0-9.]+–[0-9.]+: (\d+) ", page)]
    assert sum(hist) == len(rows) - counts["error"]
    suspicious, rest = page.split('<section id="declared">')
    declared = rest.split('<section id="errors">')[0]
    assert suspicious.count('<div class="card">') == 5
    # The five cards are the five highest scores, in order.
    top = sorted((r for r in rows if r["prob_fake"] is not None), key=lambda r: -r["prob_fake"])[:5]
    shown = re.findall(r'<div>prob_fake ([0-9.]+)</div>', suspicious)
    assert shown == [f"{r['prob_fake']:.4f}" for r in top]
    # Whatever its score, the file whose metadata declares a generator has its own card and badge.
    assert declared.count('<div class="card">') == 1 and "imgs/gen.png" in declared
    assert "provenance: ai-declared" in declared and "Files that declare their origin (1)" in declared
    # Self-contained: images are data URIs, nothing is fetched.
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "<script src" not in page and "<link" not in page
    assert "</script><img" not in page  # the hostile name is escaped wherever it appears
    # Thumbnails are bounded.
    for uri in re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page):
        import cv2

        img = cv2.imdecode(np.frombuffer(base64.b64decode(uri), np.uint8), cv2.IMREAD_COLOR)
        assert max(img.shape[:2]) <= 256


def test_overlays_are_the_explanation_boxes(results, tmp_path):
    from nsnet_sdk import Detector, InputOptions

    rows, _ = read_results([results["jsonl"]])
    with Detector(results["model"], options=InputOptions(workers=0)) as det:
        page = build_report(rows, tmp_path / "r.html", detector=det, top=1).read_text()
        page = page.split('<section id="declared">')[0]  # the one suspicious card
        best = max((r for r in rows if r["prob_fake"] is not None), key=lambda r: r["prob_fake"])
        ex = det.explain(best["source"])
    # An image larger than the mosaic repeats no patch: each box at the full overlay opacity.
    rects = re.findall(r'<rect x="(\d+)" y="(\d+)" width="(\d+)" height="(\d+)" fill="#[0-9a-f]{6}" '
                       r'fill-opacity="0.450" stroke="#[0-9a-f]{6}" stroke-width="1" vector-effect="non-scaling-stroke">'
                       r'<title>([-+0-9.]+)</title>', page)
    assert [(int(x), int(y), int(x) + int(w), int(y) + int(h)) for x, y, w, h, _ in rects] == list(map(tuple, ex.boxes))
    assert [float(c) for *_, c in rects] == pytest.approx(ex.contributions, abs=6e-4)
    assert f'viewBox="0 0 {ex.size[0]} {ex.size[1]}"' in page


def test_hundred_thousand_rows_stay_small(tmp_path):
    rng = np.random.default_rng(0)
    rows = [normalise_row({"source": f"/data/review/batch-{i // 1000:03d}/image_{i:06d}.jpg",
                           "prob_fake": float(p), "is_fake": bool(p > 0.5),
                           "error": "ImageDecodeError: truncated" if i % 97 == 0 else None})
            for i, p in enumerate(rng.random(100_000))]
    out = build_report(rows, tmp_path / "big.html")
    assert out.stat().st_size < 50e6
    n_err = sum(r["verdict"] == "error" for r in rows)
    page = out.read_text()
    assert page.count('<li><b>/data/review') == 500 and f"and {n_err - 500:,} more" in page


def test_cli_report(results, tmp_path):
    out = tmp_path / "r.html"
    assert main(["report", str(results["jsonl"]), str(results["csv"]), "--out", str(out), "--top", "3"]) == 0
    page = out.read_text()
    assert f'<b>{2 * results["n"]:,}</b>total' in page
    assert main(["report", str(tmp_path / "nothing.jsonl"), "--out", str(tmp_path / "x.html")]) == 1


# -- in a real browser (tests/_browser.py) ------------------------------------------------------------------------------

ROWS = "document.querySelectorAll('#rows tbody tr')"


def test_report_renders_in_chromium(results, browser, tmp_path):
    from nsnet_sdk import Detector, InputOptions

    rows, _ = read_results([results["jsonl"]])
    with Detector(results["model"], options=InputOptions(workers=0)) as det:
        out = build_report(rows, tmp_path / "r.html", detector=det, top=6)
    browser.open(out)
    n = results["n"]
    assert browser.js(f"{ROWS}.length") == n
    assert browser.js("document.getElementById('status').textContent") == f"rows 1–{n} of {n}, page 1 of 1"
    imgs = browser.js("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
    assert len(imgs) == 6 + 1 and all(c and w > 0 for c, w in imgs)  # + the declared file's card
    assert browser.js("document.querySelectorAll('#suspicious .card svg rect').length") == 6 * 49
    # Default order: prob_fake descending, errors last.
    probs = browser.js(f"Array.from({ROWS}).map(tr => tr.children[1].textContent)")
    scored = [float(p) for p in probs if p]
    assert scored == sorted(scored, reverse=True) and probs[-2:] == ["", ""]
    # Sorting by source (click), filtering by text and by verdict.
    browser.js("document.querySelector('th[data-col=\"0\"]').click()")
    names = browser.js(f"Array.from({ROWS}).map(tr => tr.children[0].textContent)")
    assert names == sorted(names)
    browser.js("const f = document.getElementById('filter'); f.value = 'gen.png'; f.dispatchEvent(new Event('input'))")
    assert browser.js(f"{ROWS}.length") == 1
    assert browser.js(f"{ROWS}[0].children[3].textContent") == "ai-declared"
    browser.js("const f2 = document.getElementById('filter'); f2.value = ''; f2.dispatchEvent(new Event('input'));"
               "const s = document.getElementById('verdict'); s.value = 'error'; s.dispatchEvent(new Event('change'))")
    assert browser.js(f"{ROWS}.length") == 2
    # The hostile file name is text, not markup.
    assert browser.js("document.querySelectorAll('img[src=x]').length") == 0
    assert any("</script>" in t for t in browser.js(f"Array.from({ROWS}).map(tr => tr.children[0].textContent)"))
    assert browser.errors == []


def test_hundred_thousand_rows_in_chromium(browser, hundred_thousand_report):
    rows = hundred_thousand_report["rows"]  # the session's page (tests/conftest.py), shared with test_report_labels
    browser.open(hundred_thousand_report["page"])
    assert browser.js(f"{ROWS}.length") == 100
    assert browser.js("document.getElementById('status').textContent") == "rows 1–100 of 100000, page 1 of 1000"
    browser.js("document.getElementById('next').click()")
    assert browser.js("document.getElementById('status').textContent").startswith("rows 101–200 of 100000")
    first = browser.js(f"+{ROWS}[0].children[1].textContent")
    assert first == pytest.approx(sorted((r["prob_fake"] for r in rows), reverse=True)[100], abs=1e-4)
    browser.js("const s = document.getElementById('verdict'); s.value = 'uncertain'; s.dispatchEvent(new Event('change'))")
    n_unc = sum(r["verdict"] == "uncertain" for r in rows)
    assert browser.js("document.getElementById('status').textContent").endswith(
        f"of {n_unc} (filtered from 100000), page 1 of {-(-n_unc // 100)}")
    assert browser.errors == []
