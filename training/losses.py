"""Training losses: supervised contrastive (Khosla et al. 2020, the L^sup_out form) + λ·BCE."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from training.cli_common import DEFAULT_TEMPERATURE



def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """Supervised contrastive loss of embeddings ``z`` (B,D; normalised here) with ``labels`` (B,).

    For each anchor i with at least one positive (same label, j ≠ i):
    ℓ_i = −1/|P(i)| Σ_{p∈P(i)} log( exp(z_i·z_p/τ) / Σ_{a≠i} exp(z_i·z_a/τ) ); the loss is the mean
    over those anchors (0 when no anchor has a positive, e.g. a batch of one class member each).
    """
    if z.ndim != 2 or labels.shape != (z.shape[0],):
        raise ValueError(f"z must be (B, D) and labels (B,), got {tuple(z.shape)} and {tuple(labels.shape)}")
    z = F.normalize(z.float(), dim=1)
    n = z.shape[0]
    sim = z @ z.T / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    # log-softmax over all a ≠ i (the diagonal is excluded from the denominator).
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = pos.sum(1)
    has_pos = n_pos > 0
    if not bool(has_pos.any()):
        return z.sum() * 0.0  # keeps the graph (and the device) without contributing
    mean_log_prob_pos = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(1)[has_pos] / n_pos[has_pos]
    return -mean_log_prob_pos.mean()


def nsnet_loss(
    z: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
    supcon_weight: float = 1.0,
    bce_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """supcon_weight·SupCon(z) + bce_weight·BCE(logits); returns (loss, parts for logging)."""
    parts: dict[str, float] = {}
    total = logits.sum() * 0.0
    if supcon_weight:
        sc = supcon_loss(z, labels, temperature)
        total = total + supcon_weight * sc
        parts["supcon"] = float(sc.detach())
    if bce_weight:
        bce = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        total = total + bce_weight * bce
        parts["bce"] = float(bce.detach())
    parts["loss"] = float(total.detach())
    return total, parts
