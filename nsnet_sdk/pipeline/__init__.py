"""The input stage, once: bytes → checked → decoded → oriented → mosaic → normalised tensor.

Every consumer (the Detector's executors, explain, provenance, the report, batch/serve, Triton's
preprocessing, training) goes through these modules; none opens an input path or calls a decoder
itself. The network input is a ``grid``×``grid`` mosaic of the image's own ``patch``×``patch``
patches, taken at native resolution: those with the highest and the lowest spectral entropy.

- `config`: `PatchConfig`, the contract every artifact records, and the defaults.
- `read`: the guard and bounded read, the one place that opens an input path.
- `header`, `sniff`, `sniff_boxes`: each format's structure and cost checked before decoding.
- `decode`: `inspect_bytes` (the checks every decode engine sits behind), `load_image`,
  `decode_image` (OpenCV, Pillow fallback); `orient`: orientation and transparency rules.
- `patches`: entropy (compiled kernel), selection, mosaic, normalisation, batching; `preprocess`
  is the one "decoded image → network row" every consumer calls.
- `inputs`: what counts as one input, result names, channel order.
- `executors`: inline, threads and processes executors over that chain (`make_decoder`).
- `gpu`, `nvdecode`, `torch_patches`: the GPU batch executor (nvImageCodec decode behind the same
  checks, torch selection), proven to give every input the CPU executors' outcome.
- `scan`: `iter_image_paths` / `scan_image_paths`, the folder scan (which files are images).
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
