"""Batched forward passes over image datasets: visual features (for the cache) and fake scores."""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from tqdm import tqdm

from training.data import ImageDataset, SkipLog, loader


def autocast(device: torch.device):
    """fp16 autocast on CUDA (AMP), nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


@torch.no_grad()
def run_dataset(fn, dataset: ImageDataset, batch_size: int, device: torch.device, workers: int = 0,
                desc: str = "images", progress: bool = True, skips: SkipLog | None = None):
    """Apply ``fn`` (images → tensor (B,…)) to every readable image in order.

    Returns (outputs (N,…) float32 CPU tensor, labels (N,), dataset indices (N,)); unreadable files
    go to ``skips`` (warned once each) and are left out.
    """
    skips = skips if skips is not None else SkipLog(dataset.samples)
    outs, labels, idxs = [], [], []
    for images, lab, idx, errors in tqdm(loader(dataset, batch_size, workers=workers), desc=desc, unit="batch",
                                         disable=not progress, leave=False):
        skips.add(errors)
        if images is None:
            continue
        with autocast(device):
            outs.append(fn(images.to(device, non_blocking=True)).float().cpu())
        labels.append(lab)
        idxs.append(idx)
    if not outs:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(outs), torch.cat(labels), torch.cat(idxs)


def score(model, dataset: ImageDataset, batch_size: int, device: torch.device, workers: int = 0,
          progress: bool = True, skips: SkipLog | None = None, desc: str = "scoring"):
    """(prob_fake (N,) numpy, labels (N,) numpy, dataset indices (N,) numpy) of the readable images."""
    model.eval()
    logits, labels, idx = run_dataset(model, dataset, batch_size, device, workers, desc, progress, skips)
    return torch.sigmoid(logits).numpy(), labels.numpy(), idx.numpy()


def probs_from_features(model, features: torch.Tensor, device: torch.device, batch_size: int = 4096) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(features), batch_size):
            with autocast(device):
                out.append(torch.sigmoid(model.logits_from_features(features[i:i + batch_size].to(device)).float()).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)
