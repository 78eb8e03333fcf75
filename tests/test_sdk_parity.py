"""The SDK on a real exported model: nsnet-tiny (random weights, no download) trained for 0 epochs,
exported to ONNX; ONNX Runtime vs the PyTorch checkpoint, every input kind, FP16/INT8 on CPU."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("open_clip")
pytest.importorskip("onnx")

from PIL import Image  # noqa: E402

from _sdk_util import textured, tiny_export, write_png  # noqa: E402
from nsnet_sdk import Detector, InputOptions  # noqa: E402

FP32_LOGIT_TOL = 1e-4


@pytest.fixture(scope="module")
def tiny() -> dict[str, Path]:
    return tiny_export()


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [textured(int(rng.integers(32, 400)), int(rng.integers(32, 400)), seed=i) for i in range(12)]


def test_onnx_runtime_matches_pytorch_checkpoint(tiny, images):
    ort_det = Detector(tiny["onnx"], options=InputOptions(workers=2))
    torch_det = Detector(tiny["run"], options=InputOptions(workers=2))
    st_det = Detector(tiny["run"] / "nsnet.safetensors", options=InputOptions(workers=0))
    assert (ort_det.backend.name, torch_det.backend.name, st_det.backend.name) == \
        ("onnxruntime", "torch", "torch")
    assert ort_det.config == torch_det.config and ort_det.threshold == torch_det.threshold
    assert ort_det.meta.backbone == torch_det.meta.backbone == "nsnet-tiny"
    assert ort_det.meta.projector_rank == torch_det.meta.projector_rank
    a = np.array([p.logit for p in ort_det.predict(images, batch_size=5)])
    b = np.array([p.logit for p in torch_det.predict(images, batch_size=12)])
    c = np.array([p.logit for p in st_det.predict(images, batch_size=1)])
    assert np.ptp(b) > 20 * FP32_LOGIT_TOL, "images must score differently for parity to mean much"
    np.testing.assert_allclose(a, b, atol=FP32_LOGIT_TOL, rtol=0)
    np.testing.assert_allclose(c, b, atol=1e-6, rtol=0)


def test_every_input_kind_gives_the_same_score_for_the_same_picture(tiny, tmp_path):
    det = Detector(tiny["onnx"], options=InputOptions(workers=2))
    pic = textured(150, 210, seed=42)
    png = write_png(tmp_path / "pic.png", pic)
    data = png.read_bytes()
    kinds = [str(png), png, data, bytearray(data), pic, pic.astype(np.uint16) * 257,
             Image.fromarray(pic), Image.open(io.BytesIO(data)),
             np.dstack([pic, np.full(pic.shape[:2], 255, np.uint8)])]  # opaque: the same picture
    preds = det.predict(kinds, batch_size=4)
    assert all(p.ok for p in preds), [p.error for p in preds if not p.ok]
    logits = [p.logit for p in preds]
    assert max(logits) - min(logits) <= 1e-6, logits
    single = [det.predict(k).logit for k in kinds]
    np.testing.assert_allclose(single, logits, atol=1e-6, rtol=0)


def test_fp16_and_int8_models_run_on_the_cpu_provider(tiny, images, tmp_path):
    """onnxruntime 1.32 segfaults on FP16 CLIP graphs at ORT_ENABLE_ALL on CPU; the Detector must
    run them. Run in a child so that a crash fails this test instead of killing the suite."""
    from export.to_onnx import export_onnx

    fp16 = export_onnx(tiny["run"], tmp_path / "nsnet.fp16.onnx", fp16=True)
    int8 = export_onnx(tiny["run"], tmp_path / "nsnet.int8.onnx", int8=True)
    arrays = tmp_path / "imgs.npz"
    np.savez(arrays, *images)
    code = textwrap.dedent(f"""
        import json, numpy as np
        from nsnet_sdk import Detector, InputOptions
        imgs = list(np.load({str(arrays)!r}).values())
        out = {{}}
        for path in ({str(fp16)!r}, {str(int8)!r}):
            d = Detector(path, options=InputOptions(workers=2))
            preds = d.predict(imgs, batch_size=5)
            out[d.meta.precision] = [p.prob_fake for p in preds]
            out[d.meta.precision + "_errors"] = [p.error for p in preds if not p.ok]
        print(json.dumps(out))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-2000:]}"
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["fp16_errors"] == [] and got["int8_errors"] == [], got
    ref = np.array([p.prob_fake for p in Detector(tiny["onnx"], options=InputOptions(workers=0)).predict(images)])
    np.testing.assert_allclose(got["fp16"], ref, atol=5e-3, rtol=0)
    np.testing.assert_allclose(got["int8"], ref, atol=5e-2, rtol=0)
