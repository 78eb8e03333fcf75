"""Patch selection in torch for a batch of differently sized images, on any torch device.

The definition is `nsnet_sdk.pipeline.patches`' (the same 32×32 grid, BORDER_REFLECT padding,
spectral entropy of R+G+B with DC included, stable descending order with ties by ascending raster
index, cyclic repetition below ``slots`` patches); this module only moves it onto the device.

Precision: entropies are computed in float64 (``torch.fft.fft2`` on exactly mean-removed patches).
The CPU path does its DFTs in float32 and agrees with float64 to about 1e-6; only patches whose
entropies lie that close can come out in another order (docs/nvidia.md, "Exactness").
"""
from __future__ import annotations

from typing import Any, Sequence

from .config import DEFAULT, PatchConfig

__all__ = ["patch_entropies", "mosaic_slots", "patch_mosaics", "preprocess_batch"]

# Patches per FFT call: bounds the complex128 intermediates (16 KiB per 32×32 patch) to ~256 MiB.
_CHUNK = 16384


def _torch():
    import torch
    return torch


def _reflect_index(n: int, size: int, device: Any):
    """Source indices of BORDER_REFLECT (numpy "symmetric") padding of ``n`` samples to ``size``,
    repeated when the pad is wider than the image: period 2n, mirrored in the second half."""
    torch = _torch()
    j = torch.arange(size, device=device) % (2 * n)
    return torch.where(j < n, j, 2 * n - 1 - j)


def _pad(img, p: int):
    h, w = img.shape[:2]
    if h >= p and w >= p:
        return img
    img = img.index_select(0, _reflect_index(h, max(h, p), img.device))
    return img.index_select(1, _reflect_index(w, max(w, p), img.device))


def _check(img) -> None:
    torch = _torch()
    if not isinstance(img, torch.Tensor) or img.dtype != torch.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise TypeError(f"expected an RGB uint8 H×W×3 tensor, got {getattr(img, 'dtype', type(img))} "
                        f"{tuple(getattr(img, 'shape', ()))}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"empty image of shape {tuple(img.shape)}")


def _grid(padded, p: int):
    """(nr·nc, p, p, 3) uint8 patches of the grid in raster order, and (nr, nc)."""
    nr, nc = padded.shape[0] // p, padded.shape[1] // p
    tiles = padded[: nr * p, : nc * p].reshape(nr, p, nc, p, 3).permute(0, 2, 1, 3, 4)
    return tiles.reshape(nr * nc, p, p, 3), (nr, nc)


def _entropies_of(tiles):
    """Spectral entropy of each (p, p, 3) uint8 patch: float64 (N,)."""
    torch = _torch()
    out = []
    for start in range(0, tiles.shape[0], _CHUNK):
        g = tiles[start : start + _CHUNK].to(torch.float64).sum(-1)  # R+G+B: exact integers
        dc = g.sum((1, 2))
        # Exact mean removal (float64) makes a flat patch's spectrum exactly zero: ties stay ties.
        a = torch.fft.fft2(g - (dc / g[0].numel())[:, None, None]).abs()
        a[:, 0, 0] = 0.0  # rounding noise where the mean was; DC enters below from the exact sum
        s_ac = a.sum((1, 2))
        l_ac = torch.xlogy(a, a).sum((1, 2))
        dc = dc.abs()
        s = dc + s_ac
        # −Σ q log q with q = A/S  ==  log S − (Σ A log A)/S; only DC non-zero → exactly 0.
        ent = torch.log(s) - (torch.xlogy(dc, dc) + l_ac) / s
        out.append(torch.where(s_ac > 0, ent, torch.zeros_like(ent)))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64, device=tiles.device)


def patch_entropies(img, cfg: PatchConfig = DEFAULT):
    """Spectral entropy of every grid patch of an RGB uint8 H×W×3 tensor: float64 (H//p, W//p)
    after padding, on the tensor's device."""
    _check(img)
    tiles, shape = _grid(_pad(img, cfg.patch), cfg.patch)
    return _entropies_of(tiles).reshape(shape)


def mosaic_slots(entropies, slots: int):
    """Raster indices of the patches placed in the mosaic slots (`nsnet_sdk.pipeline.mosaic_slots`
    on the device): entropy descending, ties by raster index; top ``ceil(slots/2)`` then the last
    ``floor(slots/2)`` reversed; fewer patches than slots → the order repeated cyclically."""
    torch = _torch()
    e = entropies.reshape(-1)
    order = torch.sort(e, descending=True, stable=True).indices  # stable: ties keep raster order
    if e.numel() >= slots:
        high = (slots + 1) // 2
        return torch.cat([order[:high], order.flip(0)[: slots - high]])
    return order[torch.arange(slots, device=e.device) % e.numel()]


def patch_mosaics(images: Sequence[Any], cfg: PatchConfig = DEFAULT):
    """The uint8 (B, size, size, 3) mosaics of a batch of RGB uint8 H×W×3 tensors of any sizes,
    on their (common) device. All patches of the batch share the FFT calls."""
    torch = _torch()
    p, gsz = cfg.patch, cfg.grid
    grids = []
    for img in images:
        _check(img)
        grids.append(_grid(_pad(img, p), p))
    if not grids:
        return torch.zeros((0, cfg.size, cfg.size, 3), dtype=torch.uint8)
    ent = _entropies_of(torch.cat([t for t, _ in grids])).split([t.shape[0] for t, _ in grids])
    picked = [tiles[mosaic_slots(e, cfg.slots)] for (tiles, _), e in zip(grids, ent)]
    m = torch.stack(picked).reshape(len(picked), gsz, gsz, p, p, 3).permute(0, 1, 3, 2, 4, 5)
    return m.reshape(len(picked), cfg.size, cfg.size, 3)


def normalize(mosaics, cfg: PatchConfig = DEFAULT, out=None):
    """uint8 (B, S, S, 3) → float32 (B, 3, S, S) ``(x/255 − mean)/std`` with the CPU path's float32
    scale and shift (so both round alike), written into ``out`` when given."""
    torch = _torch()
    from .patches import normalize_affine

    scale, shift = (torch.from_numpy(v).to(mosaics.device).view(1, 3, 1, 1) for v in normalize_affine(cfg))
    x = mosaics.permute(0, 3, 1, 2).to(torch.float32) * scale + shift
    if out is None:
        return x.contiguous()
    out[: len(x)].copy_(x)
    return out[: len(x)]


def preprocess_batch(images: Sequence[Any], cfg: PatchConfig = DEFAULT, out=None):
    """RGB uint8 H×W×3 tensors → the network input, float32 (B, 3, size, size) on their device."""
    return normalize(patch_mosaics(images, cfg), cfg, out=out)
