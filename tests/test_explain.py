"""Per-patch explanations: the boxes are exactly the patches `patch_mosaic` put in the mosaic, the
contributions are the occlusion logit changes (checked against a direct computation on a linear
stand-in and on the nsnet-tiny network), and `nsnet explain` writes a PNG and a JSON per image."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")

from _sdk_util import build_stand_in_onnx, stand_in_logit, textured, write_png  # noqa: E402

from nsnet_sdk import Detector, InputOptions  # noqa: E402
from nsnet_sdk.errors import ImageDecodeError, InferenceError, UnsupportedInputError  # noqa: E402
from nsnet_sdk.pipeline import DEFAULT, patch_mosaic, preprocess  # noqa: E402

P, G = DEFAULT.patch, DEFAULT.grid


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_stand_in_onnx(tmp_path_factory.mktemp("m") / "m.onnx")


# (h, w): many patches, a ragged edge, fewer patches than slots (repeats), smaller than a patch.
SHAPES = [(300, 417), (100, 200), (20, 50)]


@pytest.mark.parametrize("h,w", SHAPES)
def test_boxes_are_exactly_the_patches_patch_mosaic_selected(model, h, w):
    rgb = textured(h, w, seed=h)
    with Detector(model, options=InputOptions(workers=0)) as det:
        ex = det.explain(rgb)
    mosaic = patch_mosaic(rgb, DEFAULT)
    assert len(ex.boxes) == len(ex.contributions) == G * G and ex.size == (w, h)
    for i, (x0, y0, x1, y1) in enumerate(ex.boxes):
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        tile = mosaic[(i // G) * P:(i // G + 1) * P, (i % G) * P:(i % G + 1) * P]
        # A box clipped at a tiny image's edge shows the part of the (padded) tile inside the image.
        assert np.array_equal(rgb[y0:y1, x0:x1], tile[:y1 - y0, :x1 - x0]), f"slot {i}"
        assert (x1 - x0, y1 - y0) == (min(P, w - x0), min(P, h - y0))


def test_contributions_match_a_direct_occlusion_computation(model):
    rgb = textured(260, 330, seed=3)
    with Detector(model, options=InputOptions(workers=0)) as det:
        ex = det.explain(rgb)
        pred = det.predict(rgb)
    x = preprocess(rgb, DEFAULT).astype(np.float64)
    base = stand_in_logit(x[None])[0]
    assert ex.logit == pytest.approx(pred.logit, abs=1e-5) == pytest.approx(base, abs=1e-3)
    assert ex.prob_fake == pytest.approx(pred.prob_fake, abs=1e-6)
    direct = []
    for i in range(G * G):  # one forward pass per variant, in float64 numpy: the reference
        v = x.copy()
        v[:, (i // G) * P:(i // G + 1) * P, (i % G) * P:(i % G + 1) * P] = 0.0
        direct.append(base - stand_in_logit(v[None])[0])
    np.testing.assert_allclose(ex.contributions, direct, atol=2e-3)
    # The model is linear: the contributions add up to the change when every slot is occluded.
    assert sum(ex.contributions) == pytest.approx(base - stand_in_logit(np.zeros_like(x)[None])[0], abs=1e-2)
    assert np.ptp(ex.contributions) > 0.01  # the patches do differ, so the test can tell slots apart


@pytest.mark.filterwarnings("ignore::nsnet_sdk.errors.RandomWeightsWarning")  # a random-init test model
def test_contributions_on_the_nsnet_tiny_network():
    pytest.importorskip("torch")
    pytest.importorskip("open_clip")
    from _export_util import torch_logits
    from _sdk_util import tiny_export
    from nsnet_sdk.explain import occlusion_batch
    from nsnet_sdk.model import load_checkpoint

    art = tiny_export()
    rgb = textured(240, 290, seed=5)
    with Detector(art["onnx"], options=InputOptions(workers=0)) as det:
        ex = det.explain(rgb)
    net, _ = load_checkpoint(art["run"])
    net.eval()
    x = preprocess(rgb, DEFAULT)
    base = torch_logits(net, x[None])[0]
    occluded = np.repeat(x[None], G * G, axis=0)  # one forward pass for all the slots
    for i in range(G * G):
        occluded[i, :, (i // G) * P:(i // G + 1) * P, (i % G) * P:(i % G + 1) * P] = 0.0
    direct = base - torch_logits(net, occluded)
    assert ex.logit == pytest.approx(base, abs=1e-3)
    np.testing.assert_allclose(ex.contributions, direct, atol=1e-3)
    assert occlusion_batch(x, G, P).shape == (G * G + 1, 3, 224, 224)


def test_explain_follows_the_detectors_channel_order(model):
    rgb = textured(150, 190, seed=9)
    with Detector(model, options=InputOptions(workers=0)) as det:
        want = det.explain(rgb)
    with Detector(model, options=InputOptions(workers=0, channels="bgr")) as det:
        got = det.explain(np.ascontiguousarray(rgb[..., ::-1]))
    assert got.contributions == want.contributions and got.boxes == want.boxes


def test_explain_errors_are_typed_and_name_the_input(model, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really")
    with Detector(model, options=InputOptions(workers=0)) as det:
        with pytest.raises(ImageDecodeError, match="broken.jpg"):
            det.explain(str(bad))
        with pytest.raises(UnsupportedInputError, match="int"):
            det.explain(42)
    with pytest.raises(InferenceError, match="closed"):
        det.explain(textured(64, 64))


def test_cli_explain_writes_png_and_json_per_image(model, tmp_path):
    pytest.importorskip("matplotlib")
    import cv2

    from nsnet_sdk.cli import main

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    write_png(imgs / "a.png", textured(200, 260, seed=1))
    write_png(imgs / "b.png", textured(90, 120, seed=2))
    (imgs / "c.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    assert main(["explain", str(imgs), "-m", str(model), "--out", str(out)]) == 0
    index = [json.loads(line) for line in (out / "explanations.jsonl").read_text().splitlines()]
    assert [Path(r["source"]).name for r in index] == ["a.png", "b.png", "c.jpg"]
    assert index[2]["error"].startswith("ImageDecodeError") and index[2]["json"] is None
    with Detector(model, options=InputOptions(workers=0)) as det:
        for r in index[:2]:
            saved = json.loads((out / r["json"]).read_text())
            assert saved == json.loads(json.dumps(det.explain(r["source"]).to_dict()))
            png = cv2.imread(str(out / r["png"]))
            assert png is not None and png.shape[0] > 100 and png.std() > 0
    assert main(["explain", str(imgs / "a.png"), "-m", str(model), "--out", str(tmp_path / "o2"),
                 "--no-png"]) == 0
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == ["a.json", "explanations.jsonl"]


def test_explain_carries_the_same_warnings_as_predict(model, tmp_path):
    small = write_png(tmp_path / "tiny.png", textured(12, 20, seed=4))
    with Detector(model, options=InputOptions(workers=0)) as det:
        want = det.predict(str(small)).warnings
        got = det.explain(str(small)).warnings
    assert want and got == tuple(want)  # the smaller-than-a-patch warning, from the one pipeline


def _index(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "explanations.jsonl").read_text(encoding="utf-8").splitlines()]


def test_cli_explain_folder_non_utf8_name_and_failing_input_keep_the_run_going(model, tmp_path):
    """A file name that is not UTF-8 is explained and drawn (its bytes escaped as detect's files
    escape them); an input whose output cannot be written is an error row; the rest are explained."""
    pytest.importorskip("matplotlib")
    import os

    from nsnet_sdk.cli import main
    from nsnet_sdk.results import unescape_text

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    write_png(imgs / "a.png", textured(120, 150, seed=1))
    odd = os.fsdecode(bytes(imgs) + b"/b\xff\xfe.png")  # invalid UTF-8, as os.listdir returns it
    tmp = write_png(tmp_path / "b.png", textured(130, 100, seed=2))
    Path(odd).write_bytes(tmp.read_bytes())  # (OpenCV's imwrite cannot take such a name)
    write_png(imgs / "c.png", textured(90, 140, seed=3))
    write_png(imgs / "d.png", textured(100, 100, seed=4))
    out = tmp_path / "out"
    (out / "c.json").mkdir(parents=True)  # c's JSON cannot be written: a failure that is no NSNetError
    assert main(["explain", str(imgs), "-m", str(model), "--out", str(out)]) == 0
    rows = _index(out)
    assert [unescape_text(r["source"]) for r in rows] == [str(imgs / "a.png"), odd, str(imgs / "c.png"),
                                                         str(imgs / "d.png")]
    assert rows[1]["source"].endswith("/b\\xff\\xfe.png") and rows[1]["error"] is None
    assert (out / os.fsdecode(b"b\xff\xfe.png")).is_file()  # drawn, the title escaped
    assert rows[2]["error"].startswith("IsADirectoryError") and rows[2]["png"] is None
    assert rows[3]["error"] is None and (out / "d.png").is_file()


def test_the_drawn_photo_is_shrunk_before_matplotlib_sees_it(model, monkeypatch, tmp_path):
    """Memory of the figure is bounded by ``max_side``, not by the photo: matplotlib is handed a
    shrunk copy (with the original's coordinates), never the full-size array."""
    pytest.importorskip("matplotlib")
    from matplotlib.axes import Axes

    from nsnet_sdk.explain import render_png

    seen = []
    real = Axes.imshow

    def spy(self, x, *a, **k):
        seen.append((np.shape(x), k.get("extent")))
        return real(self, x, *a, **k)

    monkeypatch.setattr(Axes, "imshow", spy)
    rgb = textured(300, 2000, seed=6)
    with Detector(model, options=InputOptions(workers=0)) as det:
        ex = det.explain(rgb)
    render_png(ex, rgb, tmp_path / "wide.png", max_side=400)
    (shape, extent), = seen
    assert max(shape[:2]) == 400 and shape[:2] == (60, 400) and extent == (0, 2000, 300, 0)


def _log_mean_onnx(path: Path) -> Path:
    """A contract-honouring ONNX model with logit = log(mean of the input): NaN for a dark image
    (its normalised mean is negative), finite for a light one."""
    import onnx
    from onnx import TensorProto, helper

    from _sdk_util import contract_metadata

    nodes = [helper.make_node("ReduceMean", ["images"], ["m"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("Log", ["m"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["prob_fake"])]
    graph = helper.make_graph(
        nodes, "log_mean", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 3, 224, 224])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["B"]),
         helper.make_tensor_value_info("prob_fake", TensorProto.FLOAT, ["B"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, contract_metadata())
    onnx.save(model, str(path))
    return path


def test_cli_explain_records_a_non_finite_logit_as_that_inputs_row(tmp_path):
    """As `predict` records a non-finite logit for its input, `nsnet explain` writes an error row
    for it and goes on with the next input."""
    from nsnet_sdk.cli import main

    model = _log_mean_onnx(tmp_path / "log.onnx")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    write_png(imgs / "a_light.png", np.full((96, 96, 3), 250, np.uint8))
    write_png(imgs / "b_dark.png", np.full((96, 96, 3), 5, np.uint8))
    write_png(imgs / "c_light.png", np.clip(textured(96, 120, seed=1).astype(int) + 150, 0, 255).astype(np.uint8))
    with Detector(model, options=InputOptions(workers=0)) as det:
        assert det.predict(str(imgs / "b_dark.png"), on_error="record").error.startswith("InferenceError")
    out = tmp_path / "out"
    assert main(["explain", str(imgs), "-m", str(model), "--out", str(out), "--no-png"]) == 0
    rows = _index(out)
    assert [Path(r["source"]).name for r in rows] == ["a_light.png", "b_dark.png", "c_light.png"]
    assert rows[1]["error"].startswith("InferenceError") and "non-finite" in rows[1]["error"]
    assert rows[0]["error"] is None and rows[2]["error"] is None and rows[2]["json"] == "c_light.json"
