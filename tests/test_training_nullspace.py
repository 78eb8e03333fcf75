"""Projector algebra on random and structured features, and basis selection rules."""
from __future__ import annotations

import torch
import pytest

from nsnet_sdk.model import NullSpace, project
from training.nullspace import projector_matrix, semantic_basis


def _structured(n: int = 200, d: int = 48, k: int = 5, noise: float = 1e-3, seed: int = 0) -> torch.Tensor:
    """Rows living (up to small noise) in a k-dim subspace: the basis must recover that subspace."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=g))
    coeff = torch.randn(n, k, generator=g) * torch.linspace(3, 1, k)
    return coeff @ q.T + noise * torch.randn(n, d, generator=g), q


@pytest.mark.parametrize("kind", ["random", "structured"])
def test_projector_algebra(kind: str) -> None:
    if kind == "random":
        feats = torch.randn(300, 32, generator=torch.Generator().manual_seed(1))
        basis, info = semantic_basis(feats, rank=10)
    else:
        feats, _ = _structured()
        basis, info = semantic_basis(feats, energy=0.99)
    u = basis.double()
    p = projector_matrix(u)
    eye_k = torch.eye(u.shape[1], dtype=u.dtype)
    assert torch.allclose(u.T @ u, eye_k, atol=1e-6), "basis columns must be orthonormal"
    assert torch.allclose(p, p.T, atol=1e-10), "P must be symmetric"
    assert torch.allclose(p @ p, p, atol=1e-6), "P must be idempotent"
    assert torch.allclose(u.T @ p, torch.zeros_like(u.T), atol=1e-6), "P must annihilate the basis"
    f = torch.randn(7, u.shape[0], dtype=u.dtype)
    assert torch.allclose(project(f, u), f @ p, atol=1e-10)
    assert torch.allclose(NullSpace(basis)(f.float()), (f @ p).float(), atol=1e-5)
    assert info.rank == u.shape[1]


def test_structured_subspace_is_recovered() -> None:
    feats, q = _structured(k=5)
    basis, info = semantic_basis(feats, energy=0.99)
    assert info.rank == 5
    # Same subspace: projecting q's columns onto the null space leaves (almost) nothing.
    assert project(q.T.float(), basis).norm() / q.norm() < 1e-2
    assert info.residual_ratio < 1e-2 and info.energy >= 0.99
    assert info.corpus_size == feats.shape[0]


def test_energy_rule_and_rank_override() -> None:
    feats = torch.randn(100, 16, generator=torch.Generator().manual_seed(3))
    t = feats / feats.norm(dim=1, keepdim=True)
    s2 = torch.linalg.svdvals(t.double()).square()
    cum = torch.cumsum(s2, 0) / s2.sum()
    _, info = semantic_basis(feats, energy=0.8)
    expected = int((cum < 0.8).sum()) + 1  # smallest k reaching the energy
    assert info.rank == expected
    assert abs(info.energy - float(cum[expected - 1])) < 1e-5
    # energy 1.0 would annihilate everything: capped at d−1
    assert semantic_basis(feats, energy=1.0)[1].rank == 15
    assert semantic_basis(feats, rank=4)[0].shape == (16, 4)
    with pytest.raises(ValueError):
        semantic_basis(feats, rank=17)
    with pytest.raises(ValueError, match=r"\[0, 15\]"):  # rank d: P = 0, every image would score the same
        semantic_basis(feats, rank=16)
    assert semantic_basis(feats[:5], rank=5)[1].rank == 5  # n < d: up to n


def test_deterministic_and_scale_invariant() -> None:
    feats = torch.randn(50, 24, generator=torch.Generator().manual_seed(4))
    a, _ = semantic_basis(feats, rank=6)
    b, _ = semantic_basis(feats.clone(), rank=6)
    assert torch.equal(a, b)
    # Rows are L2-normalised first: rescaling each text feature changes nothing.
    c, _ = semantic_basis(feats * torch.rand(50, 1) * 10 + 0, rank=6)
    assert torch.allclose(projector_matrix(a.double()), projector_matrix(c.double()), atol=1e-5)


def test_empty_corpus_is_identity() -> None:
    basis, info = semantic_basis(torch.zeros(0, 8))
    assert basis.shape == (8, 0) and info.rank == 0
    f = torch.randn(3, 8)
    assert torch.equal(NullSpace(basis)(f), f)
