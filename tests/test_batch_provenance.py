"""`nsnet batch --provenance`: the provenance columns of `nsnet detect --provenance`, row for row,
for local paths, ``file://`` and ``s3://`` URIs (read once, from the bytes that were scored), in
process and on Ray actors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from _s3_util import put_objects
from _sdk_util import build_stand_in_onnx
from benchmarks.provenance_samples import (AI_URI, jpeg_bytes, make_chain, png_bytes, png_chunk,
                                           png_with, sign_jpeg, xmp_packet)
from nsnet_sdk import Detector, InputOptions
from nsnet_sdk.batch import run_batch
from nsnet_sdk.cli import main
from nsnet_sdk.provenance import PROVENANCE_COLUMNS, provenance_columns
from nsnet_sdk.results import result_row, unescape_text

BUCKET = "nsnet-provenance"
COMPARED = ("error", "prob_fake", "is_fake", "warnings", "verdict") + PROVENANCE_COLUMNS


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    """(folder, model): pictures declaring their origin in each way provenance reads, and some that
    cannot be scored."""
    tmp = tmp_path_factory.mktemp("prov")
    src = tmp / "in"
    src.mkdir()
    (src / "sd-parameters.png").write_bytes(png_with(png_chunk(b"tEXt", b"parameters\x00a cat, Steps: 20")))
    (src / "xmp-ai.png").write_bytes(png_with(
        png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp_packet(AI_URI)), base=png_bytes(3)))
    (src / "comfy.png").write_bytes(png_with(png_chunk(b"tEXt", b"workflow\x00{\"nodes\": []}"),
                                             png_chunk(b"tEXt", b"Comment\x00tab\there"), base=png_bytes(4)))
    (src / "plain.jpg").write_bytes(jpeg_bytes(5))
    (src / "corrupt.png").write_bytes(png_with(png_chunk(b"tEXt", b"parameters\x00x"))[:90])
    (src / "empty.png").write_bytes(b"")
    try:
        import c2pa  # noqa: F401
        import cryptography  # noqa: F401
    except ImportError:  # the [provenance] extra: the other signals are still compared
        pass
    else:
        chain, key, _ = make_chain(tmp)
        (src / "c2pa-ai.jpg").write_bytes(sign_jpeg(jpeg_bytes(6), chain, key))
    return src, build_stand_in_onnx(tmp / "m.onnx")


def read_rows(out: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    rows = [r for f in sorted(out.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    keyed = {unescape_text(r["path"]): r for r in rows}
    assert len(keyed) == len(rows), "an input has more than one row"
    return keyed


def detect_rows(src: Path, model: Path, tmp: Path) -> dict[str, dict]:
    out = tmp / "detect.jsonl"
    assert main(["detect", str(src), "--model", str(model), "--provenance", "--jsonl", str(out), "-q"]) == 0
    return {unescape_text(r["source"]): r for r in map(json.loads, out.read_text().splitlines())}


def assert_equal_rows(got: dict, want: dict, key: str, path: str) -> None:
    for k in COMPARED:
        w = want[k]
        if k == "error" and w is not None:
            w = w.replace(path, key)  # the error names the input as listed
        if k == "prob_fake" and w is not None:
            assert got[k] == pytest.approx(w, abs=1e-6), (key, k)
        else:
            assert got[k] == w, (key, k, got[k], w)


def test_batch_provenance_rows_equal_detect_rows(files, tmp_path):
    src, model = files
    want = detect_rows(src, model, tmp_path)
    # the signals this test is about are really there
    assert want[str(src / "sd-parameters.png")]["provenance"] == "ai-declared"
    assert want[str(src / "xmp-ai.png")]["digital_source_type"] == AI_URI
    assert want[str(src / "comfy.png")]["generator"]
    assert want[str(src / "corrupt.png")]["error"] and want[str(src / "plain.jpg")]["provenance"] == "unknown"
    listing = tmp_path / "inputs.txt"
    gone = str(src / "gone.png")  # an input that cannot be read: its provenance says why, as in detect
    listing.write_text(f"{gone}\n")
    # (detect refuses a missing path on its command line: its Detector, which scores every detect row)
    with Detector(model, options=InputOptions(provenance=True)) as det:
        pred = det.predict([gone])[0]
    want[gone] = {**result_row(pred, threshold=det.threshold, model_sha256=""),
                  **provenance_columns(pred.provenance)}
    assert want[gone]["provenance_signals"] and "gone.png" in want[gone]["provenance_signals"][-1]

    assert main(["batch", str(src), str(listing), "--model", str(model), "--out", str(tmp_path / "cli"),
                 "--provenance", "-q", "--batch-size", "3"]) == 0
    rows = read_rows(tmp_path / "cli")
    assert set(rows) == set(want)
    for key, r in rows.items():
        assert_equal_rows(r, want[key], key, key)

    # without the flag, no provenance column; a job resumed the other way is refused
    run_batch([str(src)], model, tmp_path / "plain", use_ray=False)
    assert not set(PROVENANCE_COLUMNS) & set(next(iter(read_rows(tmp_path / "plain").values())))
    with pytest.raises(FileExistsError, match="without --provenance"):
        run_batch([str(src)], model, tmp_path / "plain", use_ray=False, resume=True, provenance=True)


@pytest.mark.parametrize("use_ray", [False, True], ids=["in-process", "ray"])
def test_batch_provenance_of_uris_equals_detect_on_the_same_files(ray_local, files, tmp_path, use_ray):
    src, model = files
    want = detect_rows(src, model, tmp_path)
    put_objects(BUCKET, {f"p/{Path(p).name}": Path(p).read_bytes() for p in want})
    run_batch([f"s3://{BUCKET}/p/", f"file://{src}/"], model, tmp_path / "out", use_ray=use_ray,
              batch_size=3, workers=1, provenance=True)
    rows = read_rows(tmp_path / "out")
    assert len(rows) == 2 * len(want)
    for path, w in want.items():
        for key in (f"s3://{BUCKET}/p/{Path(path).name}", f"file://{path}"):
            assert_equal_rows(rows[key], w, key, path)
