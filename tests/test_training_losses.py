"""SupCon against a direct loop over the paper's formula; the combined loss; metrics helpers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.losses import nsnet_loss, supcon_loss
from training.metrics import detection_metrics, threshold_for_fpr


def supcon_reference(z: torch.Tensor, labels: list[int], tau: float) -> float:
    """Khosla et al. 2020, Eq. 2 (L_out^sup), written as plain loops in float64."""
    z = F.normalize(z.double(), dim=1)
    n = len(labels)
    total, anchors = 0.0, 0
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denom = sum(math.exp(float(z[i] @ z[a]) / tau) for a in range(n) if a != i)
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / tau) / denom) for p in positives) / len(positives)
        anchors += 1
    return total / anchors


@pytest.mark.parametrize("seed,tau", [(0, 0.07), (1, 0.5), (2, 1.0)])
def test_supcon_matches_loop_reference(seed: int, tau: float) -> None:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(10, 6, generator=g) * 3
    labels = [0, 1, 1, 0, 0, 1, 0, 1, 1, 2]  # class 2 has no positive: that anchor is skipped
    got = supcon_loss(z, torch.tensor(labels), tau)
    assert abs(float(got) - supcon_reference(z, labels, tau)) < 1e-4


def test_supcon_prefers_clustered_embeddings_and_has_gradients() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    clustered = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    assert supcon_loss(clustered, labels) < supcon_loss(mixed, labels)
    z = mixed.clone().requires_grad_(True)
    supcon_loss(z, labels).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_supcon_without_positives_is_zero() -> None:
    z = torch.randn(3, 4, requires_grad=True)
    loss = supcon_loss(z, torch.tensor([0, 1, 2]))
    assert float(loss.detach()) == 0.0
    loss.backward()  # still part of the graph


def test_combined_loss_weights() -> None:
    g = torch.Generator().manual_seed(5)
    z, logits = torch.randn(8, 16, generator=g), torch.randn(8, generator=g)
    y = torch.tensor([0, 1] * 4)
    sc = float(supcon_loss(z, y, 0.1))
    bce = float(F.binary_cross_entropy_with_logits(logits, y.float()))
    total, parts = nsnet_loss(z, logits, y, temperature=0.1, supcon_weight=0.5, bce_weight=2.0)
    assert abs(float(total) - (0.5 * sc + 2.0 * bce)) < 1e-5
    assert abs(parts["supcon"] - sc) < 1e-6 and abs(parts["bce"] - bce) < 1e-6
    only_bce, parts = nsnet_loss(z, logits, y, supcon_weight=0.0, bce_weight=1.0)
    assert abs(float(only_bce) - bce) < 1e-6 and "supcon" not in parts


def test_detection_metrics_by_hand() -> None:
    probs = np.array([0.1, 0.6, 0.4, 0.9, 0.8, 0.2])
    labels = np.array([0, 0, 0, 1, 1, 1])
    m = detection_metrics(probs, labels, threshold=0.5)
    assert m["n"] == 6
    assert m["real_acc"] == pytest.approx(2 / 3) and m["fake_acc"] == pytest.approx(2 / 3)
    assert m["acc"] == pytest.approx(4 / 6)
    # ranking 0.9F 0.8F 0.6R 0.4R 0.2F 0.1R: AP = mean precision at each fake's rank = (1/1 + 2/2 + 3/5) / 3
    assert m["ap"] == pytest.approx((1 + 1 + 0.6) / 3)
    one_class = detection_metrics(np.array([0.3, 0.7]), np.array([0, 0]))
    assert one_class["ap"] is None and one_class["fake_acc"] is None and one_class["real_acc"] == 0.5


@pytest.mark.parametrize("fpr", [0.0, 0.05, 0.1, 0.25])
def test_threshold_for_fpr(fpr: float) -> None:
    rng = np.random.default_rng(0)
    real = rng.uniform(size=200)
    real[:20] = 0.5  # ties must not push the FPR over budget
    probs = np.concatenate([real, rng.uniform(size=50)])
    labels = np.array([0] * 200 + [1] * 50)
    t = threshold_for_fpr(probs, labels, fpr)
    achieved = np.mean(real >= t)
    assert achieved <= fpr + 1e-12
    # and it is the tightest such threshold: the next real score down would exceed the budget
    below = real[real < t].max()
    assert np.mean(real >= below) > fpr
