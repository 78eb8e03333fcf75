"""Image loading and NS-Net patch selection: the one preprocessing used by training and every backend.

The network input is a ``grid``×``grid`` mosaic of the image's own ``patch``×``patch`` patches, taken
at native resolution: those with the highest and the lowest spectral entropy.

- `config`: `PatchConfig`, the contract every artifact records, and the defaults.
- `decode`: `load_image` (bomb guards, orientation, every input kind).
- `header`, `sniff`, `sniff_boxes`: each format's structure checked before decoding, and the limits.
- `orient`: the orientation and transparency rules every decoding path shares.
- `scan`: `iter_image_paths` / `scan_image_paths`, the folder scan (which files are images).
- `patches`: entropy, selection, mosaic, normalisation, batching; `preprocess` is the one "decoded
  image → network row" every consumer calls.
- `triton`: the Triton Python-backend model (encoded bytes → rows) that export/to_triton.py names.
"""
from __future__ import annotations

from .config import CLIP_MEAN, CLIP_STD, DEFAULT, MAX_PIXELS, PatchConfig
from .decode import IMAGE_SUFFIXES, image_size, load_image
from .scan import ImageScan, iter_image_paths, scan_image_paths
from .patches import (kernel_name, mosaic_slots, normalize, patch_entropies, patch_mosaic, preprocess,
                      preprocess_batch, select_kernel)

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "DEFAULT", "MAX_PIXELS", "IMAGE_SUFFIXES", "PatchConfig", "load_image",
    "image_size", "ImageScan", "iter_image_paths", "scan_image_paths", "patch_entropies",
    "mosaic_slots", "patch_mosaic", "normalize", "preprocess", "preprocess_batch", "kernel_name",
    "select_kernel",
]
