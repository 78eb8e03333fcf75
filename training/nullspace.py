"""The semantic subspace and its null-space projector.

Text features of a semantic corpus span the directions CLIP uses for *what an image shows*. Their
top right singular vectors U_k (d×k, orthonormal columns) are the semantic basis; the projector
P = I − U_k U_kᵀ removes those directions from an image feature, keeping what semantics do not
explain (generator traces). Everything here is plain linear algebra on tensors: no CLIP, no I/O.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch

from training.cli_common import DEFAULT_ENERGY

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BasisInfo:
    """What was kept: recorded in the checkpoint's ``projector`` section."""

    rank: int
    energy: float  # fraction of the corpus' squared singular values inside the basis
    residual_ratio: float  # ‖T·P‖_F / ‖T‖_F on the row-normalised corpus T
    corpus_size: int

    def to_dict(self) -> dict:
        return asdict(self)


def semantic_basis(
    text_features: torch.Tensor, rank: int | None = None, energy: float = DEFAULT_ENERGY
) -> tuple[torch.Tensor, BasisInfo]:
    """Semantic basis U (d×k, orthonormal columns, float32) of a corpus of text features (n×d).

    Rows are L2-normalised first so every text counts equally. ``rank`` given: k = rank; otherwise
    k is the smallest count whose squared singular values reach ``energy`` of the total. Either way
    k ≤ d−1, so the projector never annihilates the whole feature (P = 0 would make every image
    score the same). An empty corpus gives k = 0 (P = I).
    Deterministic: computed in float64 and each column's sign fixed (largest entry positive).
    """
    if text_features.ndim != 2:
        raise ValueError(f"text features must be (n, d), got shape {tuple(text_features.shape)}")
    n, d = text_features.shape
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    if n == 0:
        if rank:
            raise ValueError(f"rank {rank} requested but the text corpus is empty")
        return torch.zeros(d, 0), BasisInfo(0, 0.0, 0.0, 0)

    t = text_features.detach().to("cpu", torch.float64)
    t = t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)
    _, s, vh = torch.linalg.svd(t, full_matrices=False)
    power = s.square()
    total = float(power.sum())
    max_rank = min(n, d - 1)
    if rank is None:
        cum = torch.cumsum(power, 0) / total
        k = int(torch.searchsorted(cum, torch.tensor(energy, dtype=cum.dtype) - 1e-12)) + 1
        k = min(k, max_rank)
    else:
        if not 0 <= rank <= max_rank:
            raise ValueError(f"rank must be in [0, {max_rank}] for a corpus of {n} texts in {d} dims, got {rank}")
        k = rank
    u = vh[:k].T.contiguous()  # d×k
    # SVD fixes columns only up to sign; pin it so the same corpus always gives the same tensor.
    if k:
        idx = u.abs().argmax(dim=0)
        signs = torch.sign(u[idx, torch.arange(k)])
        u = u * torch.where(signs == 0, torch.ones_like(signs), signs)
    kept = float(power[:k].sum()) / total
    resid = t - (t @ u) @ u.T
    info = BasisInfo(
        rank=k,
        energy=round(kept, 6),
        residual_ratio=round(float(resid.norm() / t.norm()), 6),
        corpus_size=n,
    )
    log.info("semantic basis: k=%d of d=%d, energy kept %.4f, ||T·P||/||T|| = %.4f",
             k, d, info.energy, info.residual_ratio)
    return u.to(torch.float32), info


def projector_matrix(basis: torch.Tensor) -> torch.Tensor:
    """P = I − U Uᵀ (d×d) for a basis U with orthonormal columns."""
    d = basis.shape[0]
    return torch.eye(d, dtype=basis.dtype, device=basis.device) - basis @ basis.T
