"""The GPU input pipeline (nsnet_sdk.pipeline.gpu): the same selection, mosaic and scores as the CPU path.

Everything except the ``gpu``-marked tests runs the torch code on the CPU device; the ``gpu`` tests
repeat the selection check on CUDA and cover the device handoff and the FP16 / CUDA-graph path.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nsnet_sdk.errors import BackendUnavailableError, ImageDecodeError  # noqa: E402
from nsnet_sdk.pipeline import torch_patches as gp  # noqa: E402
from nsnet_sdk.pipeline.nvdecode import decode_batch, nvimgcodec_available  # noqa: E402
from nsnet_sdk.pipeline import (DEFAULT, load_image, mosaic_slots, patch_entropies,  # noqa: E402
                                  patch_mosaic, preprocess)
from test_preprocess import textured  # noqa: E402  (the conformance corpus' generator)

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device (torch.cuda.is_available() is False)")

# The conformance corpus: 1×1 up to 4000×3000, sizes not divisible by 32, thinner than a patch.
SHAPES = [(1, 1), (5, 7), (2, 100), (33, 1), (1, 40), (31, 31), (64, 33), (100, 70), (224, 224),
          (300, 700), (20, 5000), (256, 96), (512, 512), (768, 1024), (4000, 3000)]


def tied_images() -> dict[str, np.ndarray]:
    """Images whose patches tie exactly: flat, flat blocks, one tile repeated (aligned or not)."""
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return {
        "flat": np.full((300, 200, 3), 77, np.uint8),
        "black": np.zeros((65, 97, 3), np.uint8),
        "blocks": (np.kron(rng.integers(0, 4, (9, 11, 1)), np.ones((32, 32, 3))) * 60).astype(np.uint8),
        "periodic": np.tile(tile, (10, 13, 1)),
        "periodic_offset": np.tile(tile, (10, 13, 1))[5:, 7:],
        "binary_noise": rng.integers(0, 2, (500, 500, 3), dtype=np.uint8),
    }


def assert_same_as_cpu(rgb: np.ndarray, device: str = "cpu") -> None:
    t = torch.from_numpy(rgb).to(device)
    want = mosaic_slots(patch_entropies(rgb), DEFAULT.slots)
    got = gp.mosaic_slots(gp.patch_entropies(t), DEFAULT.slots).cpu().numpy()
    np.testing.assert_array_equal(got, want)  # the same patches in the same slots
    np.testing.assert_array_equal(gp.patch_mosaics([t])[0].cpu().numpy(), patch_mosaic(rgb))
    np.testing.assert_allclose(gp.preprocess_batch([t])[0].cpu().numpy(), preprocess(rgb), atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("seed", [0, 1])
def test_selection_and_mosaic_equal_the_cpu_path_on_the_corpus(shape, seed):
    assert_same_as_cpu(textured(*shape, seed))


@pytest.mark.parametrize("name", list(tied_images()))
def test_exact_ties_follow_raster_order_as_on_the_cpu(name):
    assert_same_as_cpu(tied_images()[name])


def test_uniform_noise_equals_the_cpu_path():
    assert_same_as_cpu(np.random.default_rng(5).integers(0, 256, (1000, 900, 3), dtype=np.uint8))


def mirror_tied_images() -> dict[str, np.ndarray]:
    """Images holding a 32×32 tile and its vertical mirror: equal entropies by definition (the same
    DFT magnitudes), which each FFT may round apart in either direction."""
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    halves = np.concatenate([np.tile(tile, (4, 8, 1)), np.tile(tile[::-1], (4, 8, 1))])
    mixed = textured(256, 256, 3)  # distinct patches, with one tile/mirror pair among them
    mixed[64:96, 96:128], mixed[160:192, 32:64] = tile, tile[::-1]
    return {"tile_and_mirror_halves": halves, "one_pair_among_distinct_patches": mixed}


def _patch(rgb: np.ndarray, index: int, cols: int) -> np.ndarray:
    r, c = divmod(int(index), cols)
    return rgb[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32]


def assert_only_mirrors_diverge(name: str, device: str) -> None:
    """The contract for patches tied by definition: the GPU (float64) and CPU (float32) paths may
    order a patch and its mirror differently — by rounding, on any FFT library or CPU — and nothing
    else. Every slot holds the same patch, or a patch and its mirror whose entropies agree to rounding."""
    rgb = mirror_tied_images()[name]
    t, cols = torch.from_numpy(rgb).to(device), rgb.shape[1] // 32
    e_gpu = gp.patch_entropies(t).cpu().numpy().ravel()
    e_cpu = patch_entropies(rgb).ravel()
    np.testing.assert_allclose(e_gpu, e_cpu, rtol=1e-6, atol=0)  # one definition, two precisions
    got = gp.mosaic_slots(gp.patch_entropies(t), DEFAULT.slots).cpu().numpy()
    cpu = mosaic_slots(e_cpu, DEFAULT.slots)
    assert len(set(got)) == len(set(cpu)) == DEFAULT.slots  # each a selection, no patch twice
    differing = 0
    for g, c in zip(got, cpu):
        if g == c:
            continue
        differing += 1
        pg, pc = _patch(rgb, g, cols), _patch(rgb, c, cols)
        assert np.array_equal(pg, pc[::-1]), f"slot holds patch {g} on the GPU, {c} on the CPU: not mirrors"
        assert abs(e_gpu[g] - e_gpu[c]) < 1e-9 and abs(e_cpu[g] - e_cpu[c]) < 1e-5
    if name == "one_pair_among_distinct_patches":
        pair = {2 * cols + 3, 5 * cols + 1}  # where mirror_tied_images put them: both uniform noise,
        assert pair <= set(cpu) and pair <= set(got)  # so the two highest entropies, both selected
        assert differing <= 2 and all(g == c for g, c in zip(got, cpu) if g not in pair)
    # The mosaics a model sees: slot by slot the same pixels, or a tile where the other has its mirror.
    m_gpu = gp.patch_mosaics([t])[0].cpu().numpy()
    m_cpu = patch_mosaic(rgb)
    for i in range(DEFAULT.slots):
        a, b = _patch(m_gpu, i, DEFAULT.grid), _patch(m_cpu, i, DEFAULT.grid)
        assert np.array_equal(a, b) or np.array_equal(a, b[::-1]), f"mosaic slot {i}"


@pytest.mark.parametrize("name", list(mirror_tied_images()))
def test_mirror_tied_patches_are_the_one_known_divergence(name):
    assert_only_mirrors_diverge(name, "cpu")


def test_a_batch_of_different_sizes_equals_each_image_alone():
    rgbs = [textured(h, w, i) for i, (h, w) in enumerate([(1, 1), (300, 700), (31, 200), (512, 512), (97, 33)])]
    batch = gp.preprocess_batch([torch.from_numpy(x) for x in rgbs]).numpy()
    assert batch.shape == (5, 3, DEFAULT.size, DEFAULT.size) and batch.dtype == np.float32
    for got, rgb in zip(batch, rgbs):
        np.testing.assert_allclose(got, preprocess(rgb), atol=1e-6, rtol=0)


def test_wrong_tensors_are_refused():
    with pytest.raises(TypeError, match="uint8"):
        gp.patch_mosaics([torch.zeros((40, 40, 3), dtype=torch.float32)])
    with pytest.raises(TypeError, match="H×W×3"):
        gp.patch_mosaics([torch.zeros((40, 40), dtype=torch.uint8)])
    with pytest.raises(ValueError, match="empty"):
        gp.patch_entropies(torch.zeros((0, 40, 3), dtype=torch.uint8))


def test_decode_batch_without_nvimagecodec_decodes_each_item_as_load_image_does(tmp_path):
    from _sdk_util import write_png

    rgb = textured(50, 60, 1)
    good = write_png(tmp_path / "a.png", rgb)
    items = [str(good), b"not an image", str(tmp_path / "missing.png")]
    out = decode_batch(items, ["item0", "item1", "item2"], device="cpu")
    np.testing.assert_array_equal(out[0][0].numpy(), rgb)
    assert isinstance(out[1][0], ImageDecodeError) and "item1" in str(out[1][0])
    assert isinstance(out[2][0], ImageDecodeError) and "no such file" in str(out[2][0])


def test_importing_the_gpu_package_loads_no_torch():
    code = "import nsnet_sdk, nsnet_sdk.pipeline.gpu, sys; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


# ---- nvImageCodec (optional; needs its CUDA libraries even for the CPU backend) ----------------
nvimg = pytest.mark.skipif(not nvimgcodec_available()[0], reason=nvimgcodec_available()[1] or "ok")


@nvimg
def test_nvimagecodec_cpu_backend_matches_load_image(tmp_path):
    import cv2

    from nsnet_sdk.pipeline.nvdecode import NvDecoder

    rgb = textured(123, 257, 2)
    png = cv2.imencode(".png", rgb[..., ::-1])[1].tobytes()
    jpg = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    for device in ["cpu"] + (["cuda"] if CUDA else []):
        png_t, jpg_t = NvDecoder(device).decode([png, jpg])
        np.testing.assert_array_equal(png_t.cpu().numpy(), load_image(png))  # lossless: exact
        # JPEG: libjpeg-turbo's and nvJPEG's IDCT/upsampling round differently (docs/nvidia.md)
        diff = np.abs(jpg_t.cpu().numpy().astype(int) - load_image(jpg).astype(int))
        assert diff.max() <= 8 and diff.mean() < 1.0, (device, diff.max(), diff.mean())


# ---- the Detector's pipeline option -----------------------------------------------------------
@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    pytest.importorskip("onnx")
    from _sdk_util import build_stand_in_onnx

    return build_stand_in_onnx(tmp_path_factory.mktemp("m") / "m.onnx")


def test_gpu_pipeline_on_the_cpu_device_scores_like_the_cpu_pipeline(stand_in, tmp_path):
    from _sdk_util import write_png
    from nsnet_sdk import BackendOptions, Detector, InputOptions

    inputs = [textured(300, 400, 0), str(write_png(tmp_path / "b.png", textured(64, 33, 1))),
              b"garbage", textured(10, 12, 2), 42, str(tmp_path / "missing.png"), textured(700, 90, 3)]
    cpu = Detector(stand_in, options=InputOptions(workers=2)).predict(inputs, batch_size=3)
    det = Detector(stand_in, backend=BackendOptions(device="cpu"), options=InputOptions(pipeline="gpu", workers=2))
    assert det.pipeline == "gpu:cpu" and det.info()["pipeline"] == "gpu:cpu"
    gpu = det.predict(inputs, batch_size=3)
    assert [p.source for p in gpu] == [p.source for p in cpu]
    for g, c in zip(gpu, cpu):
        assert type(g.error) is type(c.error) and str(g.error) == str(c.error)
        assert g.warnings == c.warnings
        if c.error is None:
            assert g.logit == pytest.approx(c.logit, abs=1e-5)
    assert sum(p.error is None for p in gpu) == 4 and any(gpu[3].warnings)
    with pytest.raises(ImageDecodeError, match="bytes"):  # one input: its typed error is raised
        det.predict(b"garbage")
    assert det.predict(inputs[0]).logit == pytest.approx(cpu[0].logit, abs=1e-5)


def test_auto_falls_back_to_the_cpu_pipeline_without_cuda_or_nvimagecodec(stand_in, monkeypatch):
    from nsnet_sdk import BackendOptions, Detector, InputOptions
    from nsnet_sdk.pipeline import gpu as pl

    if not (CUDA and nvimgcodec_available()[0]):
        assert Detector(stand_in, options=InputOptions(pipeline="auto")).pipeline == "cpu"  # this machine, as it is
    monkeypatch.setattr(pl, "_cuda_available", lambda: (True, ""))  # CUDA there, codec absent
    monkeypatch.setattr("nsnet_sdk.pipeline.nvdecode.nvimgcodec_available", lambda: (False, "absent"))
    assert Detector(stand_in, options=InputOptions(pipeline="auto")).pipeline == "cpu"
    monkeypatch.setattr(pl, "_cuda_available", lambda: (False, "none"))  # codec there, no CUDA
    monkeypatch.setattr("nsnet_sdk.pipeline.nvdecode.nvimgcodec_available", lambda: (True, ""))
    det = Detector(stand_in, options=InputOptions(pipeline="auto"))
    assert det.pipeline == "cpu" and det.predict(textured(80, 80, 0)).error is None


def test_gpu_pipeline_without_cuda_is_refused_unless_device_cpu(stand_in):
    from nsnet_sdk import BackendOptions, Detector, InputOptions

    with pytest.raises(ValueError, match="pipeline must be one of"):
        Detector(stand_in, options=InputOptions(pipeline="GPU"))
    if CUDA:
        pytest.skip("this machine has CUDA: the refusal cannot happen here")
    with pytest.raises(BackendUnavailableError, match="device='cpu'"):
        Detector(stand_in, options=InputOptions(pipeline="gpu"))


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("open_clip")
    pytest.importorskip("onnx")
    from _sdk_util import tiny_export

    return tiny_export()


def test_torch_backend_takes_the_device_tensor_of_the_gpu_pipeline(tiny):
    from nsnet_sdk import BackendOptions, Detector, InputOptions

    rgbs = [textured(200, 300, i) for i in range(4)]
    cpu = Detector(tiny["run"], backend=BackendOptions(device="cpu"), options=InputOptions(workers=0)).predict(rgbs)
    det = Detector(tiny["run"], backend=BackendOptions(device="cpu"), options=InputOptions(pipeline="gpu", workers=0))
    assert det._gpu.to_host is False  # the torch backend gets the tensor itself
    x = gp.preprocess_batch([torch.from_numpy(r) for r in rgbs])
    np.testing.assert_allclose(det.backend.run(x), det.backend.run(x.numpy()), atol=1e-6, rtol=0)
    np.testing.assert_allclose([p.logit for p in det.predict(rgbs)], [p.logit for p in cpu], atol=1e-5)
    with pytest.raises(ValueError, match="CUDA"):
        from nsnet_sdk.backends.torch import TorchBackend
        TorchBackend(tiny["run"], device="cpu", precision="fp16")


# ---- CUDA: run by `make gpu-check` ------------------------------------------------------------
@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", list(mirror_tied_images()))
def test_cuda_mirror_tied_patches_are_the_one_known_divergence(name):
    assert_only_mirrors_diverge(name, "cuda")  # cuFFT rounds ties its own way; the contract holds


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_cuda_selection_equals_the_cpu_path(shape):
    assert_same_as_cpu(textured(*shape, 0), device="cuda")
    for rgb in tied_images().values():
        assert_same_as_cpu(rgb, device="cuda")


@pytest.mark.gpu
@needs_cuda
def test_cuda_pipeline_hands_a_device_tensor_to_the_torch_backend(tiny):
    from nsnet_sdk import BackendOptions, Detector, InputOptions

    rgbs = [textured(300, 200, i) for i in range(6)]
    det = Detector(tiny["run"], backend=BackendOptions(device="cuda"), options=InputOptions(pipeline="gpu", workers=0))
    calls = []
    run = det.backend.run
    det.backend.run = lambda x: calls.append(x) or run(x)
    got = [p.logit for p in det.predict(rgbs)]
    assert calls and all(isinstance(x, torch.Tensor) and x.is_cuda for x in calls)
    want = [p.logit for p in Detector(tiny["run"], backend=BackendOptions(device="cpu")).predict(rgbs)]
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("graphs", [False, True])
def test_cuda_fp16_matches_fp32_within_5e_3_in_probability(tiny, graphs):
    from nsnet_sdk.backends.torch import TorchBackend
    from nsnet_sdk.prediction import sigmoid

    x = gp.preprocess_batch([torch.from_numpy(textured(256, 256, i)).cuda() for i in range(8)])
    fp32 = TorchBackend(tiny["run"], device="cuda").run(x)
    fast = TorchBackend(tiny["run"], device="cuda", precision="fp16", cuda_graphs=graphs)
    for _ in range(2):  # the second call replays the captured graph
        np.testing.assert_allclose(sigmoid(fast.run(x)), sigmoid(fp32), atol=5e-3, rtol=0)


# ---- the gpu-check benchmark, on the CPU device -----------------------------------------------
def test_pipeline_stage_rows_are_consistent(stand_in, tmp_path):
    from benchmarks._pipeline import markdown_table, measure_pipeline
    from _sdk_util import write_png
    from nsnet_sdk import BackendOptions, Detector, InputOptions

    files = [str(write_png(tmp_path / f"{i}.png", textured(120, 90 + i, i))) for i in range(3)]
    rows = []
    for pipeline in ("cpu", "gpu"):
        with Detector(stand_in, backend=BackendOptions(device="cpu"), options=InputOptions(pipeline=pipeline, workers=1)) as det:
            rows.append(measure_pipeline(det, files, 4, iters=2))
    assert [r["pipeline"] for r in rows] == ["cpu", "gpu"] and rows[1]["device"] == "cpu"
    for r in rows:
        assert r["batch_size"] == 4 and r["backend_device"] == "CPUExecutionProvider"
        assert r["model_only_images_per_s"] == pytest.approx(1e3 / r["model_ms_per_image"])
        assert r["cores_needed"] == pytest.approx(r["model_only_images_per_s"] * r["host_cpu_ms_per_image"] / 1e3)
        assert r["end_to_end_fraction"] == pytest.approx(r["end_to_end_images_per_s"] / r["model_only_images_per_s"])
        assert min(r["decode_ms_per_image"], r["select_ms_per_image"], r["end_to_end_images_per_s"]) > 0
    table = markdown_table(rows + [{"backend": "tensorrt", "skipped": "no GPU"}]).splitlines()
    assert len(table) == 5 and "skipped: no GPU" in table[-1]


@pytest.mark.slow
def test_gpu_check_runs_every_step_on_the_cpu_device(tmp_path):
    pytest.importorskip("open_clip")
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu",
                        "--no-tests", "--backbone", "nsnet-tiny", "--batch-sizes", "2", "--images", "2",
                        "--size", "96", "--iters", "1", "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=root, env={"PYTHONPATH": str(root), "PATH": ""})
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    report = json.loads((tmp_path / "gpu_check_cpu.json").read_text())
    got = {(row["backend"], row["pipeline"]) for row in report["rows"] if not row.get("skipped")}
    assert got == {("torch", "cpu"), ("torch", "gpu"), ("onnxruntime (CPUExecutionProvider)", "cpu"),
                   ("onnxruntime (CPUExecutionProvider)", "gpu")}
    assert [s["backend"] for s in report["skipped_rows"]] == ["tensorrt"]
    md = (tmp_path / "gpu_check_cpu.md").read_text()
    assert report["device"] in md and "Not run: tensorrt" in md


@nvimg
def test_gpu_pipeline_prints_no_library_noise_and_raises_no_warning(tmp_path):
    """nvImageCodec's extensions print an [ERROR] line per optional codec library absent; the GPU
    pipeline routes them to logging. And a read-only array input raises no torch UserWarning."""
    code = (
        "import numpy as np\n"
        "from nsnet_sdk.pipeline.gpu import GpuPipeline\n"
        "from nsnet_sdk.pipeline import DEFAULT\n"
        "p = GpuPipeline('cpu', DEFAULT, to_host=True)\n"
        "assert p.decoder is not None\n"
        "a = np.full((64, 64, 3), 7, np.uint8); a.flags.writeable = False\n"
        "batch, errors, _ = p.prepare([a], ['a'])\n"
        "assert errors == [None] and batch.shape == (1, 3, 224, 224)\n"
        "print('ok')\n")
    r = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    assert "[ERROR]" not in r.stderr and "Failed to load" not in r.stderr, r.stderr
