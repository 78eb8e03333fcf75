"""The review report against what a results file may name: markup that would end the embedded
JSON, a FIFO, files outside --base, names made of arbitrary bytes (detect → report, calibrate);
and the page's header naming the model, threshold and weights."""
from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("onnx")

from _browser import browser  # noqa: E402,F401  (the fixture)
from _sdk_util import build_stand_in_onnx, contract_metadata, textured, write_png  # noqa: E402

from nsnet_sdk.cli import main  # noqa: E402
from nsnet_sdk.report import build_report, normalise_row  # noqa: E402
from nsnet_sdk.artifact import model_sha256  # noqa: E402
from nsnet_sdk.results import escape_text  # noqa: E402


def _data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)
    return json.loads(m.group(1))


def test_embedded_json_cannot_change_the_parser_state(tmp_path, browser):  # noqa: F811
    hostile = ["a<!--<script>b.png", "c</script><script>alert(1)</script>.png", "<!--", "<script", "x</SCRIPT y"]
    rows = [normalise_row({"source": s, "prob_fake": 0.5 + i / 20, "warnings": [s]}) for i, s in enumerate(hostile)]
    page = build_report(rows, tmp_path / "r.html", top=0).read_text()
    data = page.split('<script type="application/json" id="data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data  # every "<" is \u003c: no "<!--", "<script" or "</script" in the element
    assert sorted(r[0] for r in json.loads(data)["rows"]) == sorted(hostile)
    browser.open(tmp_path / "r.html")
    shown = browser.js("Array.from(document.querySelectorAll('#rows tbody tr')).map(tr => tr.children[0].textContent)")
    assert sorted(shown) == sorted(hostile) and browser.errors == []


def test_a_fifo_named_in_results_does_not_hang_the_report(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    res = tmp_path / "r.jsonl"
    res.write_text(json.dumps({"source": str(fifo), "prob_fake": 0.9, "is_fake": True}) + "\n")
    # A child process: on a regression it blocks in open(), and the timeout ends it.
    proc = subprocess.run([sys.executable, "-m", "nsnet_sdk.cli", "report", str(res), "--out", str(tmp_path / "r.html")],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "r.html").read_text()
    assert "not a regular file (a FIFO); refused without opening it" in page
    assert _data(page)["rows"][0][6] is None  # no sha256 for a file never read


def test_base_keeps_the_report_inside_one_folder(tmp_path):
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir(), outside.mkdir()
    write_png(inside / "a.png", textured(64, 64, seed=1))
    write_png(outside / "b.png", textured(64, 64, seed=2))
    rows = [normalise_row({"source": str(inside / "a.png"), "prob_fake": 0.9}),
            normalise_row({"source": str(inside / ".." / "out" / "b.png"), "prob_fake": 0.8}),
            normalise_row({"source": str(outside / "missing.png"), "prob_fake": 0.7})]
    page = build_report(rows, tmp_path / "r.html", top=3, base=inside).read_text()
    assert page.count("<img ") == 1 and page.count("outside --base: not read") == 2
    assert "no such file" not in page  # whether a path outside exists is not told
    shas = [r[6] for r in _data(page)["rows"]]
    assert shas[0] is not None and shas[1:] == [None, None]
    # Without --base the results file is trusted: the same rows show both images.
    page = build_report(rows, tmp_path / "r2.html", top=3).read_text()
    assert page.count("<img ") == 2


def test_header_names_model_threshold_band_and_random_weights(tmp_path, capsys):
    meta = contract_metadata() | {"nsnet.model_card": json.dumps({"pretrained": "none"}),
                                  "nsnet.verdict_band": json.dumps({"t_real": 0.3, "t_fake": 0.8, "fpr": 0.01,
                                                                    "fnr": 0.05, "source": "test"})}
    model = build_stand_in_onnx(tmp_path / "m.onnx", metadata=meta)
    write_png(tmp_path / "a.png", textured(80, 80, seed=3))
    res = tmp_path / "r.jsonl"
    assert main(["detect", str(tmp_path / "a.png"), "-m", str(model), "-q", "--json", str(res)]) == 0
    sha = model_sha256(model)
    assert json.loads(res.read_text())["model_sha256"] == sha
    capsys.readouterr()
    assert main(["info", str(model)]) == 0
    assert re.search(rf"^model_sha256\s+{sha}$", capsys.readouterr().out, re.M)  # what the rows carry
    assert main(["report", str(res), "--out", str(tmp_path / "r.html"), "-m", str(model)]) == 0
    header = (tmp_path / "r.html").read_text().split("</header>")[0]
    assert f"model sha256 {sha}" in header
    assert "band: real below 0.3, ai-generated at or above 0.8" in header
    assert "random weights" in header
    assert main(["report", str(res), "--out", str(tmp_path / "r2.html")]) == 0
    header = (tmp_path / "r2.html").read_text().split("</header>")[0]
    assert f"model sha256 {sha}" in header and "threshold 0.5" in header and "give --model" in header


def test_overlay_leaves_tiny_images_visible(tmp_path):
    from nsnet_sdk import Detector, InputOptions

    model = build_stand_in_onnx(tmp_path / "m.onnx")
    for side in (10, 64):
        write_png(tmp_path / f"s{side}.png", textured(side, side, seed=side))
    rows = [normalise_row({"source": str(tmp_path / f"s{s}.png"), "prob_fake": 0.9}) for s in (10, 64)]
    with Detector(model, options=InputOptions(workers=0)) as det:
        page = build_report(rows, tmp_path / "r.html", detector=det, top=2).read_text()
    for card in page.split('<div class="card">')[1:3]:
        boxes = re.findall(r'<rect x="(\d+)" y="(\d+)" width="(\d+)" height="(\d+)"[^>]*fill-opacity="([0-9.]+)"'
                           r'[^>]*vector-effect="non-scaling-stroke"', card)
        assert len(boxes) == 49
        # Where boxes repeat (an image smaller than the mosaic), their stacked opacity stays <= 0.45.
        stack = max(sum(b[:4] == c[:4] for c in boxes) for b in boxes)
        assert stack > 1 and 1 - (1 - float(boxes[0][4])) ** stack <= 0.451
        assert 'class="small"' in card  # shown pixelated, not blurred



def test_any_byte_names_go_through_detect_report_and_calibrate(tmp_path, capsys):
    import cv2
    from hypothesis import HealthCheck, given, settings, strategies as st

    model = build_stand_in_onnx(tmp_path / "m.onnx")
    name_bytes = st.binary(min_size=1, max_size=24).map(lambda b: b.replace(b"/", b"_").replace(b"\x00", b"_"))
    # A leading dot is a hidden name, which folder scans skip by design (--hidden includes them).
    names = st.lists(name_bytes.filter(lambda b: not b.startswith(b".")), min_size=2, max_size=4, unique=True)
    runs = iter(range(10**6))

    @settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(names)
    def run(raw_names):
        root = tmp_path / f"run{next(runs)}"
        for sub in ("real", "fake"):
            (root / sub).mkdir(parents=True)
        paths = []
        for i, raw in enumerate(raw_names):
            p = os.path.join(os.fsencode(root / ("real" if i % 2 == 0 else "fake")), raw + b".png")
            # cv2.imwrite crashes on a name that is not UTF-8: encode, then write through the OS
            ok, buf = cv2.imencode(".png", textured(48, 48 + i, seed=i))
            with open(p, "wb") as f:
                f.write(buf.tobytes())
            paths.append(os.fsdecode(p))
        res = root / "r.jsonl"
        assert main(["detect", str(root), "-r", "-m", str(model), "-q", "--json", str(res)]) == 0
        out = root / "r.html"
        assert main(["report", str(res), "--out", str(out), "--top", "4"]) == 0
        page = out.read_text(encoding="utf-8")
        data = _data(page)
        assert sorted(r[0] for r in data["rows"]) == sorted(map(escape_text, paths))
        for p in paths:  # every card shows the name as the result files write it
            assert html.escape(escape_text(os.path.basename(p))) in page
        # calibrate over the same folders: runs to the end whatever the names
        rc = main(["calibrate", "-m", str(model), "--real", str(root / "real"), "--fake", str(root / "fake")])
        assert rc == 0
        capsys.readouterr()

    run()


def test_long_warnings_stay_a_few_lines(tmp_path, browser):  # noqa: F811
    long = "; ".join(f"warning number {i} about this image, with enough words to wrap" for i in range(30))
    rows = [normalise_row({"source": "a.png", "prob_fake": 0.7, "warnings": long}),
            normalise_row({"source": "b.png", "prob_fake": 0.6})]
    out = build_report(rows, tmp_path / "r.html", top=0)
    browser.open(out)
    heights = browser.js("Array.from(document.querySelectorAll('#rows tbody tr')).map(tr => tr.getBoundingClientRect().height)")
    assert heights[0] <= 3 * heights[1]  # not the ~15 lines the full text takes
    assert browser.js("document.querySelector('#rows tbody tr div.clip').title") == long
