"""The GPU-resident input pipeline: batched decode (nvImageCodec), patch selection, mosaic and
normalisation in torch on the device, handed to the backend without a host round trip.

Importing this package imports nothing heavy; torch and nvImageCodec load when a pipeline is
built. ``pipeline="gpu", device="cpu"`` runs the same torch code on the CPU (tests, checks).
"""
from __future__ import annotations

from .pipeline import PIPELINES, GpuPipeline, resolve_pipeline

__all__ = ["PIPELINES", "GpuPipeline", "resolve_pipeline"]
