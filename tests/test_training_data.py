"""Data layouts, the preprocessing contract, augmentation, captions files."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from nsnet_sdk.pipeline import DEFAULT, load_image, patch_mosaic, preprocess
from training.corpus import PROMPT_DIR, prompt_bank, read_captions
from training.data import Augment, ImageDataset, collate, detect_layout, discover, gaussian_blur, jpeg


def _img(path, seed: int = 0, size: int = 70) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".txt":
        path.write_text("not an image")
        return
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size + 10, 3), dtype=np.uint8)
    cv2.imwrite(str(path), rgb)


def _files(root, rels):
    for i, rel in enumerate(rels):
        _img(root / rel, seed=i)


def test_genimage_layout_with_and_without_subset(tmp_path) -> None:
    _files(tmp_path, ["sdv4/imagenet_ai_sdv4/train/ai/a.png", "sdv4/imagenet_ai_sdv4/train/nature/b.JPG",
                      "sdv4/imagenet_ai_sdv4/val/ai/c.png", "midj/train/ai/d.png", "midj/val/nature/e.png",
                      "midj/val/nature/notes.txt"])
    assert detect_layout(tmp_path) == "genimage"
    train = discover(tmp_path, "auto", split="train")
    assert [(s.path.name, s.label, s.generator) for s in train] == [
        ("d.png", 1, "midj"), ("b.JPG", 0, "sdv4"), ("a.png", 1, "sdv4")]
    val = discover(tmp_path, "genimage", split="val")
    assert {(s.path.name, s.label, s.generator) for s in val} == {("c.png", 1, "sdv4"), ("e.png", 0, "midj")}
    assert len(discover(tmp_path, "genimage")) == 5  # split None: both
    assert {s.generator for s in discover(tmp_path, "genimage", generators=["midj"])} == {"midj"}
    with pytest.raises(ValueError, match="nope"):
        discover(tmp_path, "genimage", generators=["nope"])


def test_ufd_layout_with_and_without_class_level(tmp_path) -> None:
    _files(tmp_path, ["progan/car/0_real/a.png", "progan/car/1_fake/b.png", "progan/cat/1_fake/c.png",
                      "dalle/0_real/d.png", "dalle/1_fake/e.png"])
    assert detect_layout(tmp_path) == "ufd"
    got = {(s.path.name, s.label, s.generator) for s in discover(tmp_path)}
    assert got == {("a.png", 0, "progan"), ("b.png", 1, "progan"), ("c.png", 1, "progan"),
                   ("d.png", 0, "dalle"), ("e.png", 1, "dalle")}
    single = tmp_path / "dalle"  # {0_real,1_fake} directly under the root: generator = root name
    assert {(s.label, s.generator) for s in discover(single, "ufd")} == {(0, "dalle"), (1, "dalle")}


def test_flat_layout_and_unknown(tmp_path) -> None:
    _files(tmp_path / "set", ["real/x/a.png", "fake/b.webp.png", "fake/c.png"])
    assert detect_layout(tmp_path / "set") == "flat"
    samples = discover(tmp_path / "set")
    assert [(s.label, s.generator) for s in samples] == [(0, "set"), (1, "set"), (1, "set")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no known dataset layout"):
        discover(tmp_path / "empty")
    with pytest.raises(ValueError, match="not a directory"):
        discover(tmp_path / "missing", "flat")


def test_dataset_uses_sdk_preprocessing_and_reports_bad_files(tmp_path) -> None:
    _files(tmp_path, ["real/a.png", "fake/b.png"])
    (tmp_path / "fake" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    samples = discover(tmp_path)
    ds = ImageDataset(samples)
    items = [ds[i] for i in range(len(ds))]
    for s, (x, label, _, err) in zip(samples, items):
        if s.path.name == "broken.png":
            assert x is None and "ImageDecodeError" in err
        else:
            assert err is None and label == s.label
            assert np.array_equal(x.numpy(), preprocess(load_image(s.path), DEFAULT))
    images, labels, idx, errors = collate(items)
    assert images.shape == (2, 3, 224, 224) and len(errors) == 1
    assert samples[errors[0][0]].path.name == "broken.png"


def test_augmentation_is_seeded_and_slot_shuffle_permutes_tiles(tmp_path) -> None:
    _files(tmp_path, ["real/a.png"])
    samples = discover(tmp_path)
    aug = Augment(slot_shuffle=True, flip=0.0)
    a = ImageDataset(samples, augment=aug, seed=1)
    x1, x2 = a[0][0], a[0][0]
    assert torch.equal(x1, x2), "same (seed, epoch, index) must give the same sample"
    a.epoch = 1
    assert not torch.equal(a[0][0], x1)
    # slot shuffle only permutes the 49 tiles of the inference mosaic
    plain = patch_mosaic(load_image(samples[0].path))

    def tiles(m: np.ndarray) -> list[bytes]:
        return sorted(t.tobytes() for t in m.reshape(7, 32, 7, 32, 3).transpose(0, 2, 1, 3, 4).reshape(49, -1))

    shuffled = patch_mosaic(load_image(samples[0].path), rng=np.random.default_rng(3))
    assert not np.array_equal(plain, shuffled) and tiles(plain) == tiles(shuffled)


def test_jpeg_and_blur_perturb_but_keep_shape() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    for out in (jpeg(rgb, 50), gaussian_blur(rgb, 2.0)):
        assert out.shape == rgb.shape and out.dtype == np.uint8 and not np.array_equal(out, rgb)
    assert np.array_equal(gaussian_blur(rgb, 0.0), rgb)
    # blur lowers high-frequency energy; stronger JPEG loses more
    hf = lambda im: np.abs(np.diff(im.astype(float), axis=1)).mean()  # noqa: E731
    assert hf(gaussian_blur(rgb, 2.0)) < hf(rgb) / 3
    assert np.abs(jpeg(rgb, 20).astype(int) - rgb).mean() > np.abs(jpeg(rgb, 95).astype(int) - rgb).mean()


def test_caption_files(tmp_path) -> None:
    (tmp_path / "c.txt").write_text("a cat\n\n  a dog on grass \n")
    (tmp_path / "c.csv").write_text("file,Caption\n1.jpg,a cat\n2.jpg,\n3.jpg,\"a dog, running\"\n")
    (tmp_path / "l.json").write_text(json.dumps(["a cat", {"caption": "a dog"}]))
    (tmp_path / "m.json").write_text(json.dumps({"1.jpg": "a cat", "2.jpg": "a dog"}))
    (tmp_path / "bad.csv").write_text("file,label\n1.jpg,x\n")
    assert read_captions(tmp_path / "c.txt") == ["a cat", "a dog on grass"]
    assert read_captions(tmp_path / "c.csv") == ["a cat", "a dog, running"]
    assert read_captions(tmp_path / "l.json") == ["a cat", "a dog"]
    assert read_captions(tmp_path / "m.json") == ["a cat", "a dog"]
    with pytest.raises(ValueError, match="caption column"):
        read_captions(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError):
        read_captions(tmp_path / "none.txt")


def test_prompt_bank_contents() -> None:
    from open_clip import IMAGENET_CLASSNAMES

    default = prompt_bank("default")
    assert "a photo of a tench." in default and "a photo of a teddy bear." in default
    coco = [ln.strip() for ln in open(PROMPT_DIR / "coco.txt") if ln.strip()]
    assert len(coco) == 80
    assert len(prompt_bank("default", 1)) == len(dict.fromkeys(list(IMAGENET_CLASSNAMES) + coco))
    assert len(prompt_bank("coco", 2)) == 160 and prompt_bank("none") == []


def test_discovery_lists_what_the_sdk_decodes(tmp_path) -> None:
    """Training sees the files `nsnet detect` sees: a JPEG 2000 image is trained on, not ignored."""
    _files(tmp_path, ["real/a.png", "fake/b.jp2"])
    samples = discover(tmp_path)
    assert [s.path.name for s in samples] == ["a.png", "b.jp2"]
    x, label, _, err = ImageDataset(samples)[1]
    assert err is None and label == 1
    assert np.array_equal(x.numpy(), preprocess(load_image(samples[1].path), DEFAULT))


def test_training_rows_are_the_detectors_rows_and_hostile_files_are_skipped(tmp_path) -> None:
    """Training loads through the inference pipeline: the same row as the Detector's executor for
    an image with transparency, and a FIFO, a header declaring 20000×9000 pixels and a truncated
    file are each one reported error (refused before decoding; the FIFO is never opened)."""
    import os
    import threading

    from nsnet_sdk.pipeline.executors import prepare_into
    from training.data import Sample

    rgba = np.dstack([np.random.default_rng(1).integers(0, 256, (80, 96, 3), dtype=np.uint8),
                      np.tile(np.linspace(0, 255, 96, dtype=np.uint8), (80, 1))])
    good = tmp_path / "rgba.png"
    cv2.imwrite(str(good), rgba[..., [2, 1, 0, 3]])
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.png"  # a 100-byte PNG whose header declares 20000×9000 pixels
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 20000, 9000, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:200])
    ds = ImageDataset([Sample(p, 0, "g") for p in (good, fifo, huge, cut)])
    items = []
    t = threading.Thread(target=lambda: items.extend(ds[i] for i in range(len(ds))), daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "reading a FIFO blocked the data loader"
    want = np.empty((3, DEFAULT.size, DEFAULT.size), np.float32)
    assert prepare_into(str(good), "rgba.png", DEFAULT, 10**8, want) == (None, ())
    assert items[0][3] is None and np.array_equal(items[0][0].numpy(), want)
    errors = [e for _, _, _, e in items[1:]]
    assert all(e is not None for e in errors), errors
    assert "ImageTooLargeError" in errors[1] and "20000x9000" in errors[1]
