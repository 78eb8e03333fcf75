"""Fold NS-Net's null-space projector and head into CLIP's visual tower for deployment.

The trained model computes ``logit = cls(W2·gelu(W0·(f − f·U·Uᵀ) + b0) + b2)`` with
``f = pooled @ proj``. Everything between ``pooled`` and the GELU is linear, so

    proj' = proj · P · W0ᵀ        (P = I − U·Uᵀ, computed in float64)
    b0 added after,

and everything after the GELU is linear too, so ``head.2`` and ``classifier`` collapse into one
``Linear(hidden, 1)``. The deployed network is plain CLIP with a (width × hidden) last layer
instead of (width × d): no extra d×d projection is ever executed.

The visual tower is re-expressed (same weights, same arithmetic) with attention written out as
separate Q/K/V matmuls, reshape/transpose, ``softmax(Q·Kᵀ·scale)·V``: the pattern ONNX Runtime's
transformer optimizer fuses into one ``Attention`` node. open_clip's ``nn.MultiheadAttention``
exports as one opaque block of ops that the optimizer does not recognise.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FoldedNSNet", "fold_model", "folded_weights"]


class _LayerNorm(nn.Module):
    """Plain LayerNorm (exports as one ``LayerNormalization`` op at opset ≥ 17)."""

    def __init__(self, ln: nn.LayerNorm) -> None:
        super().__init__()
        self.weight = nn.Parameter(ln.weight.detach().clone())
        self.bias = nn.Parameter(ln.bias.detach().clone())
        self.eps = float(ln.eps)
        self.shape = tuple(ln.normalized_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.shape, self.weight, self.bias, self.eps)


def _norm(module: nn.Module, where: str) -> nn.Module:
    """LayerNorm → `_LayerNorm`, Identity (``no_ln_pre``) stays; any other norm is refused, never dropped."""
    if isinstance(module, nn.LayerNorm):
        return _LayerNorm(module)
    if isinstance(module, nn.Identity):
        return nn.Identity()
    raise NotImplementedError(f"{where}: {type(module).__name__} is not supported by export (LayerNorm only)")


class _Block(nn.Module):
    """One pre-LN residual attention block of an open_clip ViT, attention written out explicitly."""

    def __init__(self, blk: nn.Module) -> None:
        super().__init__()
        mha = blk.attn
        if not isinstance(mha, nn.MultiheadAttention) or hasattr(blk, "ln_1_kv"):
            raise NotImplementedError(
                f"export supports open_clip ResidualAttentionBlock (nn.MultiheadAttention); got {type(blk).__name__}"
            )
        if mha.in_proj_weight is None or mha.in_proj_bias is None:
            raise NotImplementedError("attention without packed in-projection/bias is not supported")
        d, h = mha.embed_dim, mha.num_heads
        self.heads, self.head_dim = h, d // h
        self.scale = self.head_dim ** -0.5
        w, b = mha.in_proj_weight.detach(), mha.in_proj_bias.detach()
        self.q, self.k, self.v = (nn.Linear(d, d) for _ in range(3))
        for i, lin in enumerate((self.q, self.k, self.v)):
            lin.weight.data.copy_(w[i * d:(i + 1) * d])
            lin.bias.data.copy_(b[i * d:(i + 1) * d])
        self.out = nn.Linear(d, d)
        self.out.weight.data.copy_(mha.out_proj.weight.detach())
        self.out.bias.data.copy_(mha.out_proj.bias.detach())
        self.ln_1 = _norm(blk.ln_1, "ln_1")
        self.ln_2 = _norm(blk.ln_2, "ln_2")
        self.ls_1, self.ls_2 = blk.ls_1, blk.ls_2          # LayerScale or Identity
        self.c_fc, self.act, self.c_proj = blk.mlp.c_fc, blk.mlp.gelu, blk.mlp.c_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        y = self.ln_1(x)
        # (B,N,D) -> (B,h,N,hd); K goes straight to (B,h,hd,N) so Q·K needs no extra Transpose.
        q = self.q(y).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(y).reshape(b, n, self.heads, self.head_dim).permute(0, 2, 3, 1)
        v = self.v(y).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
        att = torch.softmax(torch.matmul(q, k) * self.scale, dim=-1)
        o = torch.matmul(att, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.ls_1(self.out(o))
        x = x + self.ls_2(self.c_proj(self.act(self.c_fc(self.ln_2(x)))))
        return x


class FoldedNSNet(nn.Module):
    """Deployable NS-Net: images (B,3,H,W) float32 -> (logit (B,), prob_fake (B,)).

    Attributes mirror open_clip's VisionTransformer where they are reused unchanged; ``proj`` is the
    folded (width × hidden) matrix, ``proj_bias`` head.0's bias, ``out`` the collapsed head.2∘classifier.
    """

    def __init__(self, visual: nn.Module, proj: torch.Tensor, proj_bias: torch.Tensor,
                 act: nn.Module, out_weight: torch.Tensor, out_bias: torch.Tensor) -> None:
        super().__init__()
        if getattr(visual, "attn_pool", None) is not None:
            raise NotImplementedError("attentional pooling towers are not supported by export")
        if visual.pool_type not in ("tok", "avg"):
            raise NotImplementedError(f"pool_type {visual.pool_type!r} is not supported by export")
        self.conv1 = visual.conv1
        self.class_embedding = nn.Parameter(visual.class_embedding.detach().clone())
        self.positional_embedding = nn.Parameter(visual.positional_embedding.detach().clone())
        self.ln_pre = _norm(visual.ln_pre, "ln_pre")
        self.blocks = nn.ModuleList(_Block(b) for b in visual.transformer.resblocks)
        self.ln_post = _norm(visual.ln_post, "ln_post")
        self.pool_type = visual.pool_type
        self.final_ln_after_pool = bool(visual.final_ln_after_pool)
        self.proj = nn.Parameter(proj.detach().clone())
        self.proj_bias = nn.Parameter(proj_bias.detach().clone())
        self.act = act
        self.out = nn.Linear(out_weight.shape[1], 1)
        self.out.weight.data.copy_(out_weight)
        self.out.bias.data.copy_(out_bias)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(images)
        x = x.flatten(2).transpose(1, 2)                                   # (B, grid², width)
        cls = self.class_embedding.reshape(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.ln_pre(x)
        for blk in self.blocks:
            x = blk(x)
        if self.final_ln_after_pool:
            pooled = self.ln_post(x[:, 0] if self.pool_type == "tok" else x[:, 1:].mean(dim=1))
        else:
            x = self.ln_post(x)
            pooled = x[:, 0] if self.pool_type == "tok" else x[:, 1:].mean(dim=1)
        hidden = self.act(torch.matmul(pooled, self.proj) + self.proj_bias)
        logit = self.out(hidden).squeeze(-1)
        return logit, torch.sigmoid(logit)


def folded_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The folded linear algebra (float64 then float32) of an ``NSNet``.

    Returns ``proj`` (width×hidden) = proj·(I−UUᵀ)·W0ᵀ, ``proj_bias`` = b0,
    ``out_weight`` (1×hidden) = Wc·W2 and ``out_bias`` (1,) = Wc·b2 + bc.
    """
    proj = model.visual.proj.detach().double()                  # (width, d)
    u = model.nullspace.basis.detach().double()                 # (d, k)
    w0 = model.head[0].weight.detach().double()                 # (hidden, d)
    # proj·P·W0ᵀ without forming the d×d matrix P: proj·W0ᵀ − (proj·U)·(Uᵀ·W0ᵀ).
    folded = proj @ w0.T - (proj @ u) @ (u.T @ w0.T)
    w2, b2 = model.head[2].weight.detach().double(), model.head[2].bias.detach().double()
    wc, bc = model.classifier.weight.detach().double(), model.classifier.bias.detach().double()
    return {
        "proj": folded.float(),
        "proj_bias": model.head[0].bias.detach().float().clone(),
        "out_weight": (wc @ w2).float(),
        "out_bias": (wc @ b2 + bc).float(),
    }


def fold_model(model: nn.Module) -> FoldedNSNet:
    """Build the folded inference module from an ``NSNet`` (attribute names per docs/formats.md)."""
    if len(model.head) != 3 or not isinstance(model.head[0], nn.Linear) or not isinstance(model.head[2], nn.Linear):
        raise NotImplementedError("export expects head = Sequential(Linear, activation, Linear)")
    if getattr(model.visual, "proj", None) is None:
        raise NotImplementedError("export expects a visual tower with a `proj` matrix")
    w = folded_weights(model)
    folded = FoldedNSNet(model.visual, w["proj"], w["proj_bias"], model.head[1], w["out_weight"], w["out_bias"])
    return folded.float().eval().requires_grad_(False)
