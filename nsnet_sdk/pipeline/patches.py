"""Patch selection: the spectral entropy of every grid patch, the mosaic of the highest- and
lowest-entropy patches, CLIP normalisation and batching.

The exact definition (README, "Patch selection") is implemented by :func:`patch_entropies` and
:func:`patch_mosaic`; :func:`preprocess` adds CLIP normalisation.

Speed: for 32×32 patches a compiled kernel (``_entropy.c``: 8 or 16 patches per SIMD lane group,
integer R+G+B, radix-2 FFT with the mean only in the exact DC bin, A·log A and the sums fused, the
GIL released) computes the entropies; :func:`kernel_name` says which variant runs. The fallback,
used for other patch sizes, when the extension is not built, or with ``NSNET_KERNEL=reference``,
does the per-patch 2-D DFTs as two matrix products over a band of patches inside a small ONNX
Runtime graph (``entropy.onnx``, written by ``tools/make_entropy_graph.py``) on the calling thread.
Both select the same patches (docs/preprocess-kernel.md): entropies agree to ~1e-6 relative, and
only patches whose exact entropies tie or lie within that rounding (e.g. exact circular shifts,
flips, transposes of each other) can be ordered differently.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import cv2
import numpy as np

from ..cpuinfo import cpu_model
from .config import DEFAULT, PatchConfig
from .decode import load_image

__all__ = ["patch_entropies", "mosaic_slots", "patch_mosaic", "normalize", "preprocess", "preprocess_batch",
           "kernel_name", "select_kernel"]

KERNEL_PATCH = 32  # the only patch side the compiled kernel handles
REFERENCE = "reference"


_selected: str | None = None  # set by select_kernel(); else NSNET_KERNEL decides


def _kernel_variant() -> str:
    return _resolve(_selected or os.environ.get("NSNET_KERNEL", "").strip().lower() or "auto")


@lru_cache(maxsize=8)
def _resolve(want: str) -> str:
    """The entropy kernel for a request: ``auto`` (the best this CPU runs), a variant, ``reference``."""
    if want == REFERENCE:
        return REFERENCE
    try:
        from . import _entropy
    except ImportError:
        if want == "auto":
            return REFERENCE
        raise RuntimeError(f"NSNET_KERNEL={want}: the compiled kernel is not built "
                           "(run `make setup` or `python setup.py build_ext --inplace`)") from None
    variants = _entropy.variants()
    if want == "auto":
        return measured_variant(variants, _entropy.entropies, kernel_build_id())
    if want not in variants:
        raise RuntimeError(f"NSNET_KERNEL={want}: this CPU/build offers {', '.join(variants)} or reference")
    return want


def kernel_cache_path() -> Path:
    """Where the measured kernel choice is kept: ``$NSNET_CACHE_DIR/kernel.json``, else
    ``$XDG_CACHE_HOME/nsnet-sdk/kernel.json`` (``~/.cache/nsnet-sdk/kernel.json``)."""
    root = os.environ.get("NSNET_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                     Path.home() / ".cache") / "nsnet-sdk"
    return Path(root) / "kernel.json"


@lru_cache(maxsize=1)
def kernel_build_id() -> str:
    """A short hash of the compiled kernel file: a rebuilt kernel (new code, another compiler) is
    measured again instead of inheriting the choice made for the previous build."""
    import hashlib

    from . import _entropy

    return hashlib.sha256(Path(_entropy.__file__).read_bytes()).hexdigest()[:16]


def measured_variant(variants: Sequence[str], run: Callable[[np.ndarray, np.ndarray, str], None],
                     build: str = "") -> str:
    """The fastest of ``variants`` (the build's, CPUID order) on this CPU model, measured once on a
    512×512 image at first use and kept in `kernel_cache_path` per CPU model, variant set and
    ``build`` (`kernel_build_id`: the same variant names can hide different code after an upgrade).

    CPUID alone misleads: on some AVX-512 parts the 512-bit variant is slower than the AVX2 one
    (frequency licence, port pressure). Where the choice cannot be kept (unwritable cache), the
    CPUID order is used, so that every process of a machine runs the same kernel. Every variant
    selects the same patches (docs/preprocess-kernel.md), so the choice changes speed only.
    """
    if len(variants) < 2:
        return variants[0]
    import json
    import time

    key = f"{cpu_model()} | {','.join(variants)}" + (f" | {build}" if build else "")
    path = kernel_cache_path()
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    if known.get(key) in variants:
        return known[key]
    img = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    out = np.empty(256, np.float64)
    best = {v: float("inf") for v in variants}
    for _ in range(7):  # interleaved rounds, minimum per variant: robust to other load
        for v in variants:
            t = time.perf_counter()
            run(img, out, v)
            best[v] = min(best[v], time.perf_counter() - t)
    fastest = min(variants, key=lambda v: (best[v], variants.index(v)))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(dict(known, **{key: fastest}), indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        return variants[0]
    return fastest


def select_kernel(name: str | None = None) -> str:
    """Choose the entropy kernel for this process, overriding ``NSNET_KERNEL``: ``"auto"``, a
    variant (``"c-avx2"``…) or ``"reference"``; ``None`` goes back to the environment variable.

    Returns the kernel that now runs. Raises RuntimeError for a kernel this build/CPU lacks.
    """
    global _selected
    want = None if name is None else name.strip().lower()
    if want is not None:
        _resolve(want)  # refuse before switching
    _selected = want
    return _kernel_variant()


def kernel_name(cfg: PatchConfig = DEFAULT) -> str:
    """Which entropy kernel runs for ``cfg``: ``c-avx512``, ``c-avx2``, ``c-portable`` or ``reference``."""
    return _kernel_variant() if cfg.patch == KERNEL_PATCH else REFERENCE


@lru_cache(maxsize=8)
def _dft_mats(p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Real matrices for p×p real 2-D DFTs done as two matrix products, and half-spectrum weights.

    rows:  (2k, p) = [cos; −sin], k = p//2+1: real DFT down each patch column (u = 0..p/2 only; the
           other half of the spectrum is the Hermitian mirror, counted twice through ``weights``).
    cross: (2p, 2p) with [Xr | Xi] @ cross = [Re | Im] of the complex DFT along each patch row.
    """
    k = p // 2 + 1
    n = np.arange(p)
    ang_r = 2 * np.pi * np.outer(np.arange(k), n) / p
    rows = np.concatenate([np.cos(ang_r), -np.sin(ang_r)], 0).astype(np.float32)
    ang = 2 * np.pi * np.outer(n, n) / p
    c, s = np.cos(ang), np.sin(ang)
    cross = np.block([[c, -s], [s, c]]).astype(np.float32)  # (Xr + iXi)(C − iS)
    weights = np.full(k, 2.0)
    weights[0] = 1.0
    if p % 2 == 0:
        weights[-1] = 1.0  # the Nyquist row is its own mirror
    return rows, cross, weights


def _pad(rgb: np.ndarray, p: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    if h >= p and w >= p:
        return rgb
    # BORDER_REFLECT (= numpy "symmetric") repeats the reflection when the pad exceeds the image.
    return cv2.copyMakeBorder(rgb, 0, max(0, p - h), 0, max(0, p - w), cv2.BORDER_REFLECT)


def _check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise TypeError(
            f"expected an RGB uint8 HxWx3 array, got {getattr(rgb, 'dtype', type(rgb))} "
            f"{getattr(rgb, 'shape', '')}; use load_image() for other inputs"
        )
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"empty image of shape {rgb.shape}")


def _pixels_contiguous(img: np.ndarray) -> np.ndarray:
    """``img``, copied where its pixels and channels are not contiguous (any row stride is fine):
    the compiled routines read them so."""
    if img.strides[1:] != (3, 1) or img.strides[0] < 3 * img.shape[1]:
        return np.ascontiguousarray(img)
    return img


def _entropies(padded: np.ndarray, p: int, kernel: str | None = None) -> np.ndarray:
    kernel = kernel or (_kernel_variant() if p == KERNEL_PATCH else REFERENCE)
    nr, nc = padded.shape[0] // p, padded.shape[1] // p
    if kernel != REFERENCE:
        from . import _entropy

        padded = _pixels_contiguous(padded)
        out = np.empty((nr, nc), np.float64)
        _entropy.entropies(padded, out, kernel)
        return out
    # Bands of ~512 patches bound the kernel's intermediates (large images otherwise go memory-bound)
    # while keeping the per-call overhead small.
    band = max(1, 512 // nc)
    return np.concatenate([_band_entropies(padded[r * p : (r + band) * p, : nc * p], p) for r in range(0, nr, band)])


_SESSIONS: dict[int, Any] = {}


def _entropy_session() -> Any:
    """The patch-DFT matrix products (nsnet_sdk/entropy.onnx) in ONNX Runtime, one session per process.

    Why ONNX Runtime and not numpy's matmul: numpy's OpenBLAS starts its own threads for these
    GEMMs, and called from several decode workers at once (under any other load) that runs ~20×
    slower than single-threaded. An ORT session with one intra-op thread runs the same GEMMs at
    full single-core speed on the calling thread, and Run() is thread-safe.
    """
    pid = os.getpid()  # a session must not be shared across fork()
    if pid not in _SESSIONS:
        try:
            import onnxruntime as ort
        except ImportError as e:  # neither nsnet-sdk[cpu] nor [gpu] installed
            from ..errors import BackendUnavailableError

            raise BackendUnavailableError(
                "patch selection runs its entropy kernel in ONNX Runtime, which is not installed: "
                "pip install 'nsnet-sdk[cpu]' (or 'nsnet-sdk[gpu]' on an NVIDIA machine)") from e

        from ..ort_options import session_options_for

        so = session_options_for("fp32", "CPUExecutionProvider", intra_op_threads=1, inter_op_threads=1)
        path = Path(__file__).with_name("entropy.onnx")
        _SESSIONS[pid] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return _SESSIONS[pid]


def _band_entropies(rgb: np.ndarray, p: int) -> np.ndarray:
    nr, nc = rgb.shape[0] // p, rgb.shape[1] // p
    w = nc * p
    rows, cross, weights = _dft_mats(p)
    k = p // 2 + 1
    # R+G+B instead of their mean: the entropy of A/ΣA does not change when A is scaled.
    g = cv2.transform(np.ascontiguousarray(rgb[: nr * p]).astype(np.float32), np.ones((1, 3), np.float32))
    g = g.reshape(nr, p, w)
    dc = g.sum(1).reshape(nr, nc, p).sum(-1)  # patch sums: exact, integers below 2**24
    # Removing each patch's mean makes a flat patch exactly zero, so its non-DC spectrum is exactly
    # zero (as with an FFT) instead of rounding noise that would break the ties the definition needs.
    g -= np.repeat(dc * np.float32(1.0 / (p * p)), p, axis=1)[:, None, :]
    (y,) = _entropy_session().run(None, {
        "g": g, "rows": rows, "cross": cross,
        "x_shape": np.array([nr, 2, k, nc, p], np.int64), "row_shape": np.array([nr * k * nc, 2 * p], np.int64),
    })  # y: rows (r, u, c) of [Re | Im], the DFT of every patch at frequencies u = 0..p/2, all v
    a = cv2.magnitude(y[:, :p], y[:, p:])
    a.reshape(nr, k, nc, p)[:, 0, :, 0] = 0.0  # DC (rounding noise after mean removal): exact below
    alog = cv2.multiply(a, cv2.log(cv2.max(a, 1e-30)))
    s_ac = np.einsum("rkn,k->rn", cv2.reduce(a, 1, cv2.REDUCE_SUM).reshape(nr, k, nc).astype(np.float64), weights)
    l_ac = np.einsum("rkn,k->rn", cv2.reduce(alog, 1, cv2.REDUCE_SUM).reshape(nr, k, nc).astype(np.float64), weights)
    dc = np.abs(dc.astype(np.float64))
    s = dc + s_ac
    with np.errstate(divide="ignore", invalid="ignore"):
        # −Σ q log q with q = A/S  ==  log S − (Σ A log A)/S; only DC non-zero → exactly 0.
        ent = np.log(s) - (np.where(dc > 0, dc * np.log(dc), 0.0) + l_ac) / s
    return np.where(s_ac > 0, ent, 0.0)


def patch_entropies(rgb: np.ndarray, cfg: PatchConfig = DEFAULT) -> np.ndarray:
    """Spectral entropy of every grid patch: float64 array of shape (H//patch, W//patch) after padding.

    A patch's score is the Shannon entropy of its normalised 2-D DFT magnitude (DC included) of the
    mean of R, G and B; an all-zero spectrum scores 0.
    """
    _check_rgb(rgb)
    return _entropies(_pad(rgb, cfg.patch), cfg.patch)


def mosaic_slots(entropies: np.ndarray, slots: int) -> np.ndarray:
    """Raster indices of the patches placed in the mosaic slots, in slot order.

    Patches are ordered by entropy descending, ties by raster index ascending. With at least
    ``slots`` patches: the top ``ceil(slots/2)`` in that order, then the last ``floor(slots/2)`` of
    that order reversed (lowest entropy first). With fewer: that order repeated cyclically.
    """
    e = np.asarray(entropies, dtype=np.float64).ravel()
    order = np.argsort(-e, kind="stable")
    if e.size >= slots:
        high = (slots + 1) // 2
        return np.concatenate([order[:high], order[::-1][: slots - high]])
    return np.resize(order, slots)


def patch_mosaic(
    rgb: np.ndarray, cfg: PatchConfig = DEFAULT, rng: np.random.Generator | None = None, *,
    slots: np.ndarray | None = None
) -> np.ndarray:
    """The uint8 (size, size, 3) mosaic of selected patches, copied pixel for pixel.

    Slot i sits at mosaic row ``i // grid``, column ``i % grid``. Given ``rng``, the slots are
    randomly permuted (a training augmentation; inference passes no rng and is deterministic).
    ``slots``: the selection already computed (``mosaic_slots(patch_entropies(rgb, cfg))``), so
    a caller that needs it too does not pay for the entropies twice.
    """
    _check_rgb(rgb)
    p, gsz = cfg.patch, cfg.grid
    padded = _pad(rgb, p)
    kernel = _kernel_variant() if p == KERNEL_PATCH else REFERENCE
    if kernel != REFERENCE:
        from . import _entropy

        padded = _pixels_contiguous(padded)  # read once more by the gather below
        # The compiled twins of mosaic_slots and of the gather below (tests/test_kernel.py holds
        # them equal): ~2 + 6 µs where numpy takes ~6 + 12 µs of a ~160 µs mosaic at 512x512.
        if slots is None:
            idx = np.empty(cfg.slots, np.int64)
            _entropy.select(_entropies(padded, p, kernel), idx)
        else:
            idx = np.ascontiguousarray(slots, np.int64)
        if rng is not None:
            idx = rng.permutation(idx)
        out = np.empty((cfg.size, cfg.size, 3), np.uint8)
        _entropy.mosaic(padded, idx, out, p)
        return out
    idx = mosaic_slots(_entropies(padded, p, kernel), cfg.slots) if slots is None else np.asarray(slots)
    if rng is not None:
        idx = rng.permutation(idx)
    nr, nc = padded.shape[0] // p, padded.shape[1] // p
    tiles = padded[: nr * p, : nc * p].reshape(nr, p, nc, p, 3)[idx // nc, :, idx % nc]  # (slots, p, p, 3)
    return np.ascontiguousarray(tiles.reshape(gsz, gsz, p, p, 3).transpose(0, 2, 1, 3, 4)).reshape(
        cfg.size, cfg.size, 3
    )


@lru_cache(maxsize=8)
def normalize_affine(cfg: PatchConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, shift), float32, with ``normalize(x) = x·scale + shift`` for uint8 x:
    the one definition of CLIP normalisation (the GPU pipeline applies the same numbers)."""
    std = np.asarray(cfg.std, np.float64)
    return (1.0 / (255.0 * std)).astype(np.float32), (-np.asarray(cfg.mean) / std).astype(np.float32)


def normalize(mosaic: np.ndarray, cfg: PatchConfig = DEFAULT, out: np.ndarray | None = None, *,
              bgr: bool = False) -> np.ndarray:
    """uint8 HWC mosaic → float32 CHW ``(x/255 − mean)/std``, written into ``out`` when given.

    ``bgr=True``: the mosaic is in BGR order (cut straight from a decode buffer); the output is
    the same RGB tensor, the planes simply read in reverse order.
    """
    if out is None:
        out = np.empty((3, *mosaic.shape[:2]), np.float32)
    scale, shift = normalize_affine(cfg)
    planes = cv2.split(mosaic)
    for c, plane in enumerate(planes[::-1] if bgr else planes):
        np.multiply(plane, scale[c], out=out[c], dtype=np.float32)
        out[c] += shift[c]
    return out


def preprocess(img: np.ndarray, cfg: PatchConfig = DEFAULT, out: np.ndarray | None = None, *,
               bgr: bool = False, rng: np.random.Generator | None = None,
               slots: np.ndarray | None = None) -> np.ndarray:
    """A decoded uint8 H×W×3 image → its network row, float32 (3, size, size): the mosaic
    (`patch_mosaic`; ``rng`` and ``slots`` as there) normalised (`normalize`; ``out``, and
    ``bgr=True`` for an image in OpenCV's order). The one way every consumer makes a row."""
    return normalize(patch_mosaic(img, cfg, rng, slots=slots), cfg, out=out, bgr=bgr)


def preprocess_batch(
    items: Sequence[Any] | Iterable[Any], cfg: PatchConfig = DEFAULT, out: np.ndarray | None = None
) -> np.ndarray:
    """Preprocess several images into one float32 (B, 3, size, size) array.

    Items are RGB uint8 arrays or anything :func:`load_image` accepts. When ``out`` is given it must
    have room for every item; the filled leading slice ``out[:B]`` is returned.
    """
    items = list(items)
    if out is None:
        out = np.empty((len(items), 3, cfg.size, cfg.size), np.float32)
    elif out.shape[0] < len(items) or out.shape[1:] != (3, cfg.size, cfg.size) or out.dtype != np.float32:
        raise ValueError(f"out has shape {out.shape} {out.dtype}, need ({len(items)}, 3, {cfg.size}, {cfg.size}) float32")
    for i, item in enumerate(items):
        rgb = item if _is_rgb8(item) else load_image(item)
        preprocess(rgb, cfg, out=out[i])
    return out[: len(items)]


def _is_rgb8(x: Any) -> bool:
    return isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 3 and x.shape[2] == 3
