"""Datasets on disk: layout discovery, augmentation, and a torch Dataset over nsnet_sdk.pipeline.

Layouts (``--layout``):

- ``genimage``: ``<generator>/[<subset>/]{train,val}/{ai,nature}/…``
- ``ufd`` (UniversalFakeDetect / CNNDetection): ``<generator>/[<class>/]{0_real,1_fake}/…``
  (or ``{0_real,1_fake}`` directly under the root: one generator named after the root)
- ``flat``: ``real/…`` and ``fake/…`` (one generator named after the root)
- ``auto``: the first of those whose marker folders exist.

Every image goes through :mod:`nsnet_sdk.pipeline`, the code inference runs. An unreadable file
yields no tensor; the loader reports it once and the run goes on.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from nsnet_sdk.errors import as_input_error
from nsnet_sdk.pipeline import DEFAULT, PatchConfig, iter_image_paths, load_image, preprocess
from nsnet_sdk.pipeline.inputs import size_warnings
from training.cli_common import LAYOUTS

log = logging.getLogger(__name__)

REAL, FAKE = 0, 1


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 0 real, 1 fake
    generator: str


def image_files(folder: Path) -> list[Path]:
    files, _ = iter_image_paths([str(folder)], recursive=True)  # what `nsnet detect -r` scores
    return [Path(f) for f in files]


def _dir_names(root: Path, depth: int = 4) -> set[str]:
    """Names of folders up to ``depth`` levels below ``root``, without listing image files deeper
    (a benchmark root holds millions of them)."""
    names: set[str] = set()
    level = [root]
    for _ in range(depth):
        nxt = []
        for d in level:
            try:
                nxt += [Path(e.path) for e in os.scandir(d) if e.is_dir()]
            except OSError:
                continue
        names |= {d.name for d in nxt}
        level = nxt
    return names


def detect_layout(root: Path) -> str:
    """The layout of ``root`` by its marker folders; ValueError naming the root when none fits."""
    if not root.is_dir():
        raise ValueError(f"dataset root {root} is not a directory")
    names = _dir_names(root)
    if {"ai", "nature"} & names and {"train", "val"} & names:
        return "genimage"
    if {"0_real", "1_fake"} & names:
        return "ufd"
    if (root / "real").is_dir() or (root / "fake").is_dir():
        return "flat"
    raise ValueError(f"{root}: no known dataset layout (GenImage <gen>/{{train,val}}/{{ai,nature}}, "
                     "UFD <gen>/[<class>/]{0_real,1_fake}, or flat real/ + fake/)")


def _label_dirs(root: Path, names: tuple[tuple[str, int], ...], depth: int,
                keep: Callable[[Path], bool] = lambda d: True) -> list[Sample]:
    """Images in every folder named like a label; the generator is the first path part below
    ``root`` when the label folder sits more than ``depth`` levels down, else ``root``'s name."""
    out = []
    for label_dir, label in names:
        for d in sorted(root.rglob(label_dir)):
            if not d.is_dir() or not keep(d):
                continue
            rel = d.relative_to(root).parts
            generator = rel[0] if len(rel) > depth else root.name
            out += [Sample(p, label, generator) for p in image_files(d)]
    return out


def _genimage(root: Path, split: str | None) -> list[Sample]:
    def keep(d: Path) -> bool:
        return d.parent.name in ("train", "val") and split in (None, d.parent.name)
    return _label_dirs(root, (("nature", REAL), ("ai", FAKE)), 2, keep)


def _ufd(root: Path) -> list[Sample]:
    return _label_dirs(root, (("0_real", REAL), ("1_fake", FAKE)), 1)


def _flat(root: Path) -> list[Sample]:
    out = []
    for label_dir, label in (("real", REAL), ("fake", FAKE)):
        if (root / label_dir).is_dir():
            out += [Sample(p, label, root.name) for p in image_files(root / label_dir)]
    return out


def discover(root: str | Path, layout: str = "auto", split: str | None = None,
             generators: Iterable[str] | None = None) -> list[Sample]:
    """All labelled images under ``root``, sorted by (generator, label, path).

    ``split`` ('train' / 'val') selects GenImage split folders and is ignored by the other layouts
    (their roots are already one split). ``generators`` keeps only those generator names.
    """
    root = Path(root)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if layout == "auto":
        layout = detect_layout(root)
    elif not root.is_dir():
        raise ValueError(f"dataset root {root} is not a directory")
    samples = {"genimage": lambda: _genimage(root, split), "ufd": lambda: _ufd(root), "flat": lambda: _flat(root)}[layout]()
    if generators is not None:
        wanted = set(generators)
        unknown = wanted - {s.generator for s in samples}
        if unknown:
            raise ValueError(f"{root}: generator(s) {sorted(unknown)} not found")
        samples = [s for s in samples if s.generator in wanted]
    return sorted(samples, key=lambda s: (s.generator, s.label, str(s.path)))


def split_off(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(train, val): ``fraction`` of each (generator, label) group, at least one image of a group of
    two or more, drawn with ``seed``; the same call always gives the same split."""
    import random

    groups: dict[tuple[str, int], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.generator, s.label), []).append(s)
    held: set[Path] = set()
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda s: str(s.path))
        k = min(len(members) - 1, max(1, round(fraction * len(members)))) if fraction > 0 else 0
        held |= {s.path for s in random.Random(f"{seed}/{key[0]}/{key[1]}").sample(members, k)}
    return [s for s in samples if s.path not in held], [s for s in samples if s.path in held]


@dataclass(frozen=True)
class Augment:
    """CNNDetection-style augmentation on the decoded image (before patch selection), plus the
    mosaic slot shuffle. Probabilities 0 disable a step."""

    slot_shuffle: bool = True
    flip: float = 0.5
    jpeg_prob: float = 0.0
    jpeg_quality: tuple[int, int] = (30, 100)
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.0, 3.0)

    def apply(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.blur_prob and rng.random() < self.blur_prob:
            rgb = gaussian_blur(rgb, float(rng.uniform(*self.blur_sigma)))
        if self.jpeg_prob and rng.random() < self.jpeg_prob:
            rgb = jpeg(rgb, int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1)))
        if self.flip and rng.random() < self.flip:
            rgb = np.ascontiguousarray(rgb[:, ::-1])
        return rgb


def gaussian_blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation ``sigma`` pixels (kernel ±3σ); σ ≤ 0 is a no-op."""
    if sigma <= 0:
        return rgb
    return cv2.GaussianBlur(rgb, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    """JPEG re-compression at ``quality`` (1–100), decoded back to RGB uint8 by the pipeline's own
    decoder, exactly as an uploaded JPEG would be at inference."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return load_image(buf.tobytes(), name=f"<JPEG q{int(quality)} re-compression>")


def downscale(rgb: np.ndarray, factor: float) -> np.ndarray:
    """Resize by ``factor`` (area interpolation: what a photo pipeline's downsizing does)."""
    h, w = rgb.shape[:2]
    return cv2.resize(rgb, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)


LEFT_OUT = "left out of calibration"

@dataclass
class ImageDataset(Dataset):
    """Items: (tensor (3,S,S) or None, label, index, error message or None).

    ``augment`` None → deterministic inference preprocessing. ``transform`` (rgb → rgb) is applied
    after decoding, e.g. a robustness perturbation at evaluation. Randomness per item is seeded by
    (seed, epoch, index), so runs are reproducible whatever the worker count.
    """

    samples: list[Sample]
    cfg: PatchConfig = DEFAULT
    augment: Augment | None = None
    seed: int = 0
    transform: object = None
    epoch: int = field(default=0)
    # Calibration leaves out images whose score says little (smaller than one patch): their
    # repeated pixels would set the operating point. Their error starts with LEFT_OUT.
    skip_low_information: bool = False

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        try:  # the bounded read, structural checks and decode inference runs
            rgb = load_image(s.path, name=str(s.path))
        except Exception as e:  # one unreadable file is skipped and reported, never the run's end
            exc = as_input_error(e, str(s.path))
            return None, s.label, i, f"{type(exc).__name__}: {exc}"
        if self.skip_low_information and size_warnings(rgb, self.cfg.patch):
            return None, s.label, i, f"{LEFT_OUT}: {size_warnings(rgb, self.cfg.patch)[0]}"
        if self.transform is not None:
            rgb = self.transform(rgb)
        rng = None
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            rgb = self.augment.apply(rgb, rng)
            if not self.augment.slot_shuffle:
                rng = None
        x = preprocess(rgb, self.cfg, rng=rng)
        return torch.from_numpy(x), s.label, i, None


def collate(batch):
    """(images (B,3,S,S) or None, labels (B,), indices (B,), [(index, error)]) of the readable items."""
    good = [b for b in batch if b[0] is not None]
    errors = [(b[2], b[3]) for b in batch if b[0] is None]
    if not good:
        return None, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), errors
    images = torch.stack([b[0] for b in good])
    labels = torch.tensor([b[1] for b in good], dtype=torch.long)
    indices = torch.tensor([b[2] for b in good], dtype=torch.long)
    return images, labels, indices, errors


class SkipLog:
    """Counts unreadable files and warns once per file."""

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples
        self.bad: dict[str, str] = {}

    def add(self, errors: list[tuple[int, str]]) -> None:
        for idx, msg in errors:
            path = str(self.samples[idx].path)
            if path not in self.bad:
                self.bad[path] = msg
                log.warning("skipping %s image %s (%s)", "a low-information" if msg.startswith(LEFT_OUT)
                            else "an unreadable", path, msg)

    @property
    def count(self) -> int:
        return len(self.bad)

    @property
    def left_out(self) -> int:
        """Of `count`, the images left out because their score says little (not unreadable)."""
        return sum(msg.startswith(LEFT_OUT) for msg in self.bad.values())


def loader(dataset: ImageDataset, batch_size: int, shuffle: bool = False, workers: int = 0,
           seed: int = 0) -> torch.utils.data.DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                                       collate_fn=collate, generator=gen, drop_last=False,
                                       persistent_workers=False)


def summary(samples: list[Sample], skipped: int) -> dict:
    """The checkpoint's ``data`` section."""
    return {"n_images": len(samples) - skipped, "skipped": skipped,
            "generators": sorted({s.generator for s in samples}),
            "n_real": sum(s.label == REAL for s in samples), "n_fake": sum(s.label == FAKE for s in samples),
            "generator_counts": {g: sum(s.generator == g for s in samples)
                                 for g in sorted({s.generator for s in samples})}}
