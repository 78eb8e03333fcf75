"""Provenance signals: C2PA (signed here with a certificate chain made on the fly), IPTC digital
source type in XMP (JPEG, PNG, WebP, TIFF), generator metadata, and their route into
`Prediction.provenance` and `nsnet detect --provenance`."""
from __future__ import annotations

import csv
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from benchmarks.provenance_samples import (AI_URI, jpeg_bytes, jpeg_with_app1, make_chain, png_bytes, png_chunk,
                              png_with, sign_jpeg, xmp_packet)
from nsnet_sdk.provenance import ProvenanceReader, read_provenance, scan_metadata

REPO = Path(__file__).resolve().parents[1]
CAPTURE_URI = "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"


# -- XMP / generator metadata without c2pa ---------------------------------------------------------

@pytest.mark.parametrize("attribute", [True, False])
def test_jpeg_xmp_digital_source_type_declares_ai(attribute):
    data = jpeg_with_app1(b"http://ns.adobe.com/xap/1.0/\x00" + xmp_packet(AI_URI, attribute))
    rec = read_provenance(data)
    assert rec["digital_source_type"] == AI_URI
    assert rec["summary"] == "ai-declared"
    assert rec["c2pa"] is None


def test_xmp_resource_form_and_a_hostile_packet():
    packet = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/">' + b"a" * (1 << 20) + b" DigitalSourceType"
              + b" " * 5000 + b'<Iptc4xmpExt:DigitalSourceType rdf:resource="' + AI_URI.encode() + b'"/></x:xmpmeta>')
    # 1 MiB of word characters and a dangling property first: a backtracking pattern would take
    # hours here; the bounded patterns scan it once and find the resource form after it.
    rec = read_provenance(jpeg_with_app1(b"http://ns.adobe.com/xap/1.0/\x00" + packet[:65000]))
    assert rec["summary"] == "unknown"  # an APP1 segment holds < 64 KiB: the value is cut off
    png = png_with(png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + packet))
    assert read_provenance(png)["summary"] == "unknown"  # beyond MAX_TEXT (1 MiB): not looked at
    small = packet.replace(b"a" * (1 << 20), b"a" * 1000)
    rec = read_provenance(png_with(png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + small)))
    assert rec["digital_source_type"] == AI_URI


def test_xmp_declaring_a_capture_alone_stays_unknown():
    # Unsigned XMP is anyone's claim; only a validated manifest may say "not AI".
    rec = read_provenance(jpeg_with_app1(b"http://ns.adobe.com/xap/1.0/\x00" + xmp_packet(CAPTURE_URI)))
    assert rec["digital_source_type"] == CAPTURE_URI
    assert rec["summary"] == "unknown"


@pytest.mark.parametrize("compressed", [False, True])
def test_png_itxt_xmp(compressed):
    xmp = xmp_packet(AI_URI, attribute=False)
    body = b"XML:com.adobe.xmp\x00" + (b"\x01\x00" if compressed else b"\x00\x00") + b"\x00\x00" + (
        zlib.compress(xmp) if compressed else xmp)
    rec = read_provenance(png_with(png_chunk(b"iTXt", body)))
    assert rec["digital_source_type"] == AI_URI and rec["summary"] == "ai-declared"


@pytest.mark.parametrize("key,ctype,expect", [
    ("parameters", b"tEXt", "Stable Diffusion web UI"),
    ("prompt", b"zTXt", "ComfyUI"),
    ("workflow", b"tEXt", "ComfyUI"),
])
def test_png_text_chunks_of_diffusion_front_ends_name_the_generator(key, ctype, expect):
    text = b'{"3": {"class_type": "KSampler"}}' if key != "parameters" else b"a cat\nSteps: 20, Sampler: Euler a"
    body = key.encode() + b"\x00" + ((b"\x00" + zlib.compress(text)) if ctype == b"zTXt" else text)
    rec = read_provenance(png_with(png_chunk(ctype, body)))
    assert rec["generator"] is not None and expect in rec["generator"]
    assert rec["summary"] == "ai-declared"


def test_unrelated_png_text_is_not_a_signal():
    rec = read_provenance(png_with(png_chunk(b"tEXt", b"Comment\x00holiday snapshot")))
    assert rec == {**rec, "summary": "unknown", "generator": None, "signals": []}


def test_exif_software_naming_a_generator():
    from PIL import Image

    img = Image.fromarray(np.zeros((40, 40, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0131] = "Midjourney v6"
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    rec = read_provenance(buf.getvalue())
    assert rec["generator"] == "Midjourney v6" and rec["summary"] == "ai-declared"
    exif[0x0131] = "GIMP 2.10"
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    assert read_provenance(buf.getvalue())["summary"] == "unknown"


def test_webp_xmp_chunk():
    from PIL import Image, features

    if not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(buf, "WEBP", xmp=xmp_packet(AI_URI))
    data = buf.getvalue()
    assert b"XMP " in data  # the container really holds the chunk under test
    assert read_provenance(data)["digital_source_type"] == AI_URI


def test_tiff_xmp_tag(tmp_path):
    from PIL import Image, TiffImagePlugin

    info = TiffImagePlugin.ImageFileDirectory_v2()
    info[700] = xmp_packet(AI_URI)
    info.tagtype[700] = 1  # BYTE
    path = tmp_path / "x.tif"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(path, tiffinfo=info)
    rec = read_provenance(path)
    assert rec["digital_source_type"] == AI_URI and rec["summary"] == "ai-declared"


def test_plain_image_is_unknown_never_real():
    for data in (jpeg_bytes(), png_bytes()):
        rec = read_provenance(data)
        assert rec["summary"] == "unknown" and rec["signals"] == [] and rec["error"] is None


def test_unreadable_input_is_recorded_not_raised(tmp_path):
    rec = read_provenance(tmp_path / "missing.jpg")
    assert rec["summary"] == "unknown" and "no such file" in rec["error"]
    rec = read_provenance(np.zeros((4, 4, 3), np.uint8))
    assert "file path or its bytes" in rec["error"]


def test_a_fifo_is_refused_unopened(tmp_path):
    """Provenance reads through the pipeline's one reader: opening a FIFO would block forever."""
    import threading

    os.mkfifo(tmp_path / "wait.jpg")
    out: list[dict] = []
    t = threading.Thread(target=lambda: out.append(read_provenance(tmp_path / "wait.jpg")), daemon=True)
    t.start()
    t.join(timeout=30)
    assert out and "FIFO" in out[0]["error"] and out[0]["summary"] == "unknown"


_WHITESPACE_RUN = """
import sys
from benchmarks.provenance_samples import png_chunk, png_with
from nsnet_sdk.provenance import read_provenance
for head in (b"<Iptc4xmpExt:DigitalSourceType>", b"DigitalSourceType", b"xmp:CreatorTool"):
    for tail in (b"", b"x", b"<", b'="'):
        packet = b"<x:xmpmeta>" + head + b" " * (1 << 20) + tail
        rec = read_provenance(png_with(png_chunk(b"iTXt", b"XML:com.adobe.xmp" + bytes(5) + packet)))
        assert rec["digital_source_type"] is None and rec["error"] is None, rec
print("OK")
"""


def test_xmp_value_patterns_do_not_backtrack_on_whitespace():
    """A value element followed by a long whitespace run backtracked ~N^2 (8,000 spaces: a minute;
    1 MiB: days). 1 MiB of whitespace after each form reads in one pass now (milliseconds); the
    child's generous timeout only turns a regression into a failure instead of a hung run."""
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-c", _WHITESPACE_RUN], cwd=root, capture_output=True, text=True,
                       timeout=240, env={**os.environ, "PYTHONPATH": str(root)})
    assert r.returncode == 0 and r.stdout.strip() == "OK", r.stderr[-2000:]


def test_a_flood_of_text_chunks_gives_a_small_record():
    """2.5 M PNG text chunks made one 177 MB JSONL row: signals and texts are bounded."""
    flood = png_chunk(b"tEXt", b"parameters\x00steps: 20") * 50_000
    rec = read_provenance(png_with(flood))
    assert rec["summary"] == "ai-declared" and rec["generator"]
    assert len(json.dumps(rec)) < 10_000 and len(rec["signals"]) <= 17


def test_compressed_text_flood_stops_at_the_per_file_inflate_bound():
    """Many zTXt chunks of ~1 MiB each: decompression stops at the per-file total, noted."""
    chunk = png_chunk(b"zTXt", b"prompt\x00\x00" + zlib.compress(b"a" * (1 << 20), 9))
    rec = read_provenance(png_with(chunk * 40))
    assert rec["generator"] is not None
    assert any("MiB of compressed text inflated" in s or "more signals" in s for s in rec["signals"])
    from nsnet_sdk.pipeline.metadata import MAX_INFLATE, scan_metadata

    meta = scan_metadata(png_with(chunk * 40))
    assert sum(len(t) for _, _, t in meta.texts) <= MAX_INFLATE
    assert any("compressed text inflated" in n for n in meta.notes)


def test_decompression_bomb_in_png_text_is_bounded():
    bomb = zlib.compress(b"a" * (64 << 20), 9)  # 64 MiB of text in ~64 KiB
    rec = read_provenance(png_with(png_chunk(b"zTXt", b"prompt\x00\x00" + bomb)))
    assert rec["generator"] is not None
    assert f"({1 << 20} chars)" in " ".join(rec["signals"])  # decompression stopped at MAX_TEXT


def test_corrupted_metadata_never_raises():
    from hypothesis import given, settings, strategies as st

    seed = png_with(png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp_packet(AI_URI)),
                     png_chunk(b"tEXt", b"parameters\x00x"))
    jpg = jpeg_with_app1(b"Exif\x00\x00" + b"II*\x00\x08\x00\x00\x00" + b"\x01\x00" + struct.pack(
        "<HHI4s", 0x0131, 2, 10**6, b"\xff\xff\xff\x7f"))

    @settings(max_examples=150, deadline=None)
    @given(st.sampled_from([seed, jpg]), st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=8),
           st.integers(0, 2000))
    def run(base, flips, cut):
        b = bytearray(base)
        for pos, val in flips:
            b[pos % len(b)] = val
        rec = read_provenance(bytes(b[: len(b) - cut]))
        assert rec["summary"] in ("ai-declared", "non-ai-declared", "unknown")
        json.dumps(rec)

    run()


# -- C2PA -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    pytest.importorskip("c2pa", reason="c2pa-python (extra [provenance]) not installed")
    pytest.importorskip("cryptography", reason="the test certificates need the cryptography package")
    tmp = tmp_path_factory.mktemp("c2pa")
    chain, key, ca = make_chain(tmp)
    return {"ai": sign_jpeg(jpeg_bytes(), chain, key), "capture": sign_jpeg(jpeg_bytes(1), chain, key, CAPTURE_URI),
            "ca": ca, "other_ca": make_chain(tmp, "Other Org")[2],
            "trailing": sign_jpeg(jpeg_bytes(2), chain, key, AI_URI + " and some trailing text"),
            "made_up": sign_jpeg(jpeg_bytes(3), chain, key, "http://example.com/handPaintedByRobots")}


def test_c2pa_ai_manifest_is_valid_but_untrusted_without_anchors(signed):
    rec = read_provenance(signed["ai"])
    c = rec["c2pa"]
    assert c["state"] == "valid-untrusted"
    assert c["signer"] == "Test Org Signer" and c["claim_generator"] == "nsnet-test"
    assert c["digital_source_type"] == AI_URI
    assert rec["summary"] == "ai-declared"


def test_c2pa_trusted_when_its_ca_is_an_anchor(signed):
    assert read_provenance(signed["ai"], trust_anchors=str(signed["ca"]))["c2pa"]["state"] == "trusted"
    reader = ProvenanceReader(trust_anchors=signed["ca"].read_text())
    assert reader.read(signed["ai"])["c2pa"]["state"] == "trusted"
    # Another CA as the only anchor: the signature still validates, the signer is not trusted.
    assert ProvenanceReader(trust_anchors=str(signed["other_ca"])).read(signed["ai"])["c2pa"]["state"] == "valid-untrusted"


def test_tampered_c2pa_image_reads_invalid(signed):
    data = bytearray(signed["ai"])
    data[-200] ^= 0xFF  # inside the entropy-coded image data the manifest's hash covers
    rec = read_provenance(bytes(data), trust_anchors=str(signed["ca"]))
    assert rec["c2pa"]["state"] == "invalid"
    assert any("dataHash.mismatch" in code for code in rec["c2pa"]["codes"])


def test_c2pa_capture_manifest_is_a_non_ai_declaration(signed):
    rec = read_provenance(signed["capture"])
    assert rec["c2pa"]["digital_source_type"] == CAPTURE_URI
    assert rec["summary"] == "non-ai-declared"


@pytest.mark.parametrize("kind", ["trailing", "made_up"])
def test_c2pa_source_type_outside_the_vocabulary_declares_nothing(signed, kind):
    """A self-signed manifest naming a value that is no IPTC term (an AI URI plus trailing text, a
    made-up URI) is no declaration of a non-AI source."""
    rec = read_provenance(signed[kind])
    assert rec["c2pa"]["state"] == "valid-untrusted" and rec["c2pa"]["digital_source_type"]
    assert rec["summary"] == "unknown"


def test_c2pa_manifest_found_without_the_library(signed, monkeypatch):
    assert scan_metadata(signed["ai"]).has_c2pa and not scan_metadata(jpeg_bytes()).has_c2pa
    monkeypatch.setitem(sys.modules, "c2pa", None)  # as on a box without the [provenance] extra
    rec = read_provenance(signed["ai"])
    assert rec["c2pa"] is None and rec["summary"] == "unknown"
    assert any("not validated" in s for s in rec["signals"])


def test_bad_trust_anchors_are_refused_up_front(tmp_path):
    (tmp_path / "x.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match="no PEM certificate"):
        ProvenanceReader(trust_anchors=str(tmp_path / "x.pem"))


# -- Detector and CLI -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(tmp_path_factory):
    pytest.importorskip("onnx")
    from _sdk_util import build_stand_in_onnx

    return build_stand_in_onnx(tmp_path_factory.mktemp("m") / "m.onnx")


def test_detector_fills_provenance_only_when_asked(model, tmp_path):
    from nsnet_sdk import Detector, InputOptions

    ai = tmp_path / "ai.png"
    ai.write_bytes(png_with(png_chunk(b"tEXt", b"parameters\x00a cat")))
    plain = tmp_path / "plain.jpg"
    plain.write_bytes(jpeg_bytes())
    with Detector(model, options=InputOptions(workers=0)) as det:
        assert det.predict(str(ai)).provenance is None
    with Detector(model, options=InputOptions(workers=2, batch_size=2, provenance=True)) as det:
        preds = det.predict([str(ai), str(plain), str(tmp_path / "missing.jpg"), str(ai)])
    assert [p.provenance["summary"] for p in preds] == ["ai-declared", "unknown", "unknown", "ai-declared"]
    assert preds[0].prob_fake is not None and preds[2].error is not None
    # The score is the same with and without provenance: reported beside it, never mixed in.
    with Detector(model, options=InputOptions(workers=0)) as det:
        assert det.predict(str(ai)).logit == preds[0].logit


def test_cli_detect_provenance_columns(model, tmp_path):
    from nsnet_sdk.cli import main

    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "ai.png").write_bytes(png_with(png_chunk(b"tEXt", b"parameters\x00a cat")))
    (tmp_path / "imgs" / "plain.jpg").write_bytes(jpeg_bytes())
    out_csv, out_json = tmp_path / "r.csv", tmp_path / "r.jsonl"
    assert main(["detect", str(tmp_path / "imgs"), "-m", str(model), "--provenance", "-q",
                 "--csv", str(out_csv), "--json", str(out_json)]) == 0
    rows = {Path(r["source"]).name: r for r in csv.DictReader(out_csv.open())}
    assert rows["ai.png"]["provenance"] == "ai-declared" and "Stable Diffusion" in rows["ai.png"]["generator"]
    assert rows["plain.jpg"]["provenance"] == "unknown" and rows["plain.jpg"]["generator"] == ""
    jrows = {Path(r["source"]).name: r for r in map(json.loads, out_json.read_text().splitlines())}
    assert isinstance(jrows["ai.png"]["provenance_signals"], list) and jrows["ai.png"]["provenance_signals"]
    # Without the flag the columns are absent.
    assert main(["detect", str(tmp_path / "imgs"), "-m", str(model), "-q", "--csv", str(out_csv),
                 "--overwrite"]) == 0
    assert "provenance" not in next(csv.DictReader(out_csv.open()))
    # Trust anchors: only with --provenance, and a file without a certificate is a usage error.
    (tmp_path / "bad.pem").write_text("nothing")
    for extra in (["--trust-anchors", str(tmp_path / "bad.pem")],
                  ["--provenance", "--trust-anchors", str(tmp_path / "bad.pem")],
                  ["--provenance", "--trust-anchors", str(tmp_path / "missing.pem")]):
        with pytest.raises(SystemExit) as e:
            main(["detect", str(tmp_path / "imgs"), "-m", str(model), "-q", "--csv", str(tmp_path / "x.csv"), *extra])
        assert e.value.code == 2
    assert not (tmp_path / "x.csv").exists() or (tmp_path / "x.csv").read_text() == ""


def test_import_nsnet_sdk_loads_no_c2pa_torch_or_matplotlib():
    code = ("import nsnet_sdk, nsnet_sdk.provenance, nsnet_sdk.explain, nsnet_sdk.cli, sys; "
            "nsnet_sdk.cli.build_parser(); "
            "print([m for m in ('torch', 'c2pa', 'matplotlib', 'tensorrt', 'ray') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, check=True)
    assert out.stdout.strip() == "[]"
