"""A procedurally generated real-vs-fake dataset with genuine generator fingerprints.

"Real" images are smooth random scenes (gradients, soft-edged shapes, 1/f texture) with
photographic-like sensor noise. Each "generator" turns independent real scenes into fakes by a
process that leaves the kind of trace real generators leave:

- ``tconv``:    2× downsampling, then 2× transposed-convolution upsampling with a random 4×4 kernel
                (fixed per generator): the uneven kernel overlap prints a checkerboard.
- ``nearest``:  2× downsampling, nearest-neighbour upsampling (2×2 pixel blocks).
- ``bilinear``: 2× downsampling, bilinear upsampling (missing high frequencies, periodic correlation).
- ``spectral``: a faint periodic pattern (period and phase fixed per generator) added: isolated
                peaks in the spectrum.

``write_dataset`` writes the GenImage layout ``<generator>/{train,val}/{ai,nature}/NNNNN.png``.
Everything is driven by one seed, so the same call always writes the same files.
``python -m training.synthetic OUT [--n-train N] [--n-val N] [--size S] [--seed S]``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

GENERATORS = ("tconv", "nearest", "bilinear", "spectral")


def real_image(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A smooth random scene with texture and sensor noise: RGB uint8 (size, size, 3)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(0.2, 0.8, 3).astype(np.float32)
    grad = rng.normal(0, 0.25, (2, 3)).astype(np.float32)
    img = base + xx[..., None] * grad[0] + yy[..., None] * grad[1]
    for _ in range(rng.integers(3, 8)):  # soft-edged ellipses of random colour
        cy, cx = rng.uniform(0, 1, 2)
        ry, rx = rng.uniform(0.05, 0.35, 2)
        d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        alpha = 1.0 / (1.0 + np.exp(np.minimum((d - 1.0) * rng.uniform(4, 20), 50.0)))
        img = img * (1 - alpha[..., None]) + rng.uniform(0, 1, 3).astype(np.float32) * alpha[..., None]
    # 1/f ("natural") texture: white noise shaped in the Fourier domain.
    f = np.fft.fftfreq(size)
    radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    radius[0, 0] = 1.0
    spec = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))) / radius ** rng.uniform(0.8, 1.2)
    tex = np.real(np.fft.ifft2(spec)).astype(np.float32)
    tex /= tex.std() + 1e-8
    img = img + rng.uniform(0.02, 0.08) * tex[..., None]
    # Sensor noise: signal-dependent shot noise plus read noise, then mild demosaic-like blur.
    level = np.clip(img, 0, 1)
    noise = rng.normal(size=img.shape).astype(np.float32)
    img = level + noise * np.sqrt(rng.uniform(0.0001, 0.0006) * level + rng.uniform(0.00002, 0.0001))
    img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.3, 0.6))
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def _down2(img: np.ndarray) -> np.ndarray:
    return cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2), interpolation=cv2.INTER_AREA)


def make_generator(name: str, seed: int = 0) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    """The fake-making process ``name`` (fixed parameters drawn from ``seed``): real RGB → fake RGB."""
    if name not in GENERATORS:
        raise ValueError(f"unknown synthetic generator {name!r}; choose from {', '.join(GENERATORS)}")
    prng = np.random.default_rng([seed, GENERATORS.index(name)])
    if name == "tconv":
        # A stride-2 transposed conv gives each output phase (y%2, x%2) a different 2×2 subset of
        # the kernel, so unequal phase sums print a checkerboard.
        k = prng.uniform(0.2, 1.0, (4, 4)).astype(np.float32)
        phase_gain = np.array([[k[0::2, 0::2].sum(), k[0::2, 1::2].sum()],
                               [k[1::2, 0::2].sum(), k[1::2, 1::2].sum()]], np.float32)
        # Unequal phase gains (±~10%) are the checkerboard; scale so the mean gain is 1.
        k = k * 4.0 / phase_gain.sum()

        def tconv(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            small = _down2(img).astype(np.float32)
            h, w = small.shape[:2]
            up = np.zeros((2 * h, 2 * w, 3), np.float32)
            up[0::2, 0::2] = small  # zero insertion, then the kernel: a stride-2 transposed conv
            out = cv2.filter2D(up, -1, k, borderType=cv2.BORDER_REFLECT)
            return np.clip(out + 0.5, 0, 255).astype(np.uint8)

        return tconv
    if name == "nearest":
        return lambda img, rng: cv2.resize(_down2(img), (img.shape[1], img.shape[0]),
                                           interpolation=cv2.INTER_NEAREST)
    if name == "bilinear":
        return lambda img, rng: cv2.resize(_down2(img), (img.shape[1], img.shape[0]),
                                           interpolation=cv2.INTER_LINEAR)
    if name == "spectral":
        # A generator's periodic artefact is the same in all its images (its period and phase come
        # from the architecture), which is what makes it a fingerprint; only the strength varies.
        # Periods of stacked 2× upsamplers (2, 4, 8 px), as in real generator spectra.
        periods = prng.choice([2.0, 4.0, 8.0], size=2, replace=True)
        phase = prng.uniform(0, 2 * np.pi, 2)

        def spectral(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            h, w = img.shape[:2]
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            pattern = np.cos(2 * np.pi * xx / periods[0] + phase[0]) + np.cos(2 * np.pi * yy / periods[1] + phase[1])
            out = img.astype(np.float32) + rng.uniform(6.0, 10.0) * pattern[..., None]
            return np.clip(out + 0.5, 0, 255).astype(np.uint8)

        return spectral
    raise AssertionError(name)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def write_dataset(
    root: str | Path,
    generators: tuple[str, ...] | list[str] = GENERATORS,
    n_train: int = 64,
    n_val: int = 32,
    size: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write ``n_train``/``n_val`` real and as many fake PNGs per generator and split, GenImage layout.

    Every generator gets its own real images (as in GenImage, where each subset has its own
    ``nature`` folder); fakes are made from further, independent real scenes, so no fake has a
    real twin in the data.
    """
    root = Path(root)
    jobs = [(g, split, n) for g in generators for split, n in (("train", n_train), ("val", n_val))]
    total = sum(2 * n for _, _, n in jobs)
    with tqdm(total=total, desc="synthetic images", unit="img", disable=not progress, leave=False) as bar:
        for gi, (gen, split, n) in enumerate(jobs):
            make_fake = make_generator(gen, seed)
            rng = np.random.default_rng([seed, gi, 7])
            for cls in ("nature", "ai"):
                (root / gen / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                _write_png(root / gen / split / "nature" / f"{i:05d}.png", real_image(rng, size))
                _write_png(root / gen / split / "ai" / f"{i:05d}.png", make_fake(real_image(rng, size), rng))
                bar.update(2)
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.synthetic", description=write_dataset.__doc__.splitlines()[0])
    p.add_argument("out", help="dataset root to write")
    p.add_argument("--generators", default=",".join(GENERATORS), help="comma-separated subset of " + ", ".join(GENERATORS))
    p.add_argument("--n-train", type=int, default=64, help="real (and fake) train images per generator")
    p.add_argument("--n-val", type=int, default=32, help="real (and fake) val images per generator")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    gens = [g.strip() for g in args.generators.split(",") if g.strip()]
    bad = [g for g in gens if g not in GENERATORS]
    if bad:
        p.error(f"unknown generator(s) {bad}; choose from {', '.join(GENERATORS)}")
    if args.size < 32 or args.n_train < 0 or args.n_val < 0:
        p.error("--size must be >= 32 and counts >= 0")
    write_dataset(args.out, gens, args.n_train, args.n_val, args.size, args.seed)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
