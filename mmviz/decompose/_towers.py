"""The parts of a CLIP or SigLIP vision tower that the decomposition reads, and its linearised readout.

A tower is embeddings → encoder blocks (pre-norm attention and MLP, each added to the residual stream) →
a readout that turns the last residual stream ``[positions, d]`` into the image embedding ``[dim]``:

* CLIP: the final LayerNorm of the pooled (CLS) position, then the visual projection;
* SigLIP: the final LayerNorm of every position, then the multihead attention-pooling ("MAP") head: a
  learnt probe attends over the positions, and an MLP is added to the pooled vector.

``Readout`` writes that map as ``embedding = Out · concat_g(In_g · Σ_s W[g, s] · x_s) + constant`` for a
residual stream ``x``, exact for this run: the LayerNorms are linearised with the statistics (mean and
standard deviation) of the run itself, the pooling head's attention weights are the run's own, and the
pooling head's MLP (nonlinear) is kept whole as one more direct term, as TextSpan keeps each MLP whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mmviz.errors import CaptureError

SUPPORTED = "CLIPModel, CLIPVisionModel(WithProjection), SiglipModel, SiglipVisionModel (with its pooling head)"


@dataclass
class Tower:
    """Where the pieces of a vision tower live.

    Attributes:
        vision: the vision transformer (its forward takes ``pixel_values``, returns ``pooler_output``).
        blocks: the encoder blocks, in order.
        final_norm: the LayerNorm before the readout.
        projection: CLIP's visual projection (``None`` for SigLIP and a bare ``CLIPVisionModel``).
        pooling: SigLIP's attention-pooling head (``None`` for CLIP).
        family: ``"clip"`` or ``"siglip"``.
    """

    vision: nn.Module
    blocks: list[nn.Module]
    final_norm: nn.LayerNorm
    projection: nn.Linear | None
    pooling: nn.Module | None
    family: str

    @property
    def pooled_position(self) -> int | None:
        """The position CLIP reads its embedding from (``None`` when every position is pooled)."""
        return 0 if self.family == "clip" else None


def find_tower(model: nn.Module) -> Tower:
    """Locates the vision tower of a CLIP or SigLIP model.

    Raises:
        CaptureError: the model is not one of the supported vision towers.
    """
    vision = getattr(model, "vision_model", model)
    name = type(model).__name__
    blocks = getattr(getattr(vision, "encoder", None), "layers", None)
    final_norm = getattr(vision, "post_layernorm", None)
    if blocks is None or not isinstance(final_norm, nn.LayerNorm):
        raise CaptureError(
            f"decompose needs a CLIP or SigLIP vision tower; {name} has no vision encoder with a final "
            f"LayerNorm. Supported: {SUPPORTED}."
        )
    for i, block in enumerate(blocks):
        attn = getattr(block, "self_attn", None)
        if attn is None or not all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "out_proj")):
            raise CaptureError(f"decompose: block {i} of {name} has no self_attn with q/k/v/out projections")
        if getattr(block, "mlp", None) is None:
            raise CaptureError(f"decompose: block {i} of {name} has no mlp")
    pooling = getattr(vision, "head", None)
    if "siglip" in type(vision).__name__.lower():
        if pooling is None:
            raise CaptureError(
                f"decompose: this SigLIP tower ({name}) has no pooling head (vision_use_head=False), so it "
                "has no single image embedding to decompose"
            )
        return Tower(vision, list(blocks), final_norm, None, pooling, "siglip")
    if pooling is not None:
        raise CaptureError(f"decompose: {name} pools with a head mmviz does not decompose. Supported: {SUPPORTED}.")
    projection = getattr(model, "visual_projection", None)
    return Tower(vision, list(blocks), final_norm, projection, None, "clip")


@dataclass
class Readout:
    """The run's readout as a linear map of the last residual stream plus fixed terms.

    Attributes:
        weights: ``[groups, positions]`` how much each position feeds each group (pooling weight over
            the position's norm standard deviation); CLIP has one group reading the CLS position.
        inner: ``[groups, width, d]`` per-group map applied after centring (and scaling by the norm's
            weight): CLIP's ``projection · diag(γ)``, SigLIP's pooling values ``W_v,g · diag(γ)``.
        outer: ``[dim, groups·width]`` map from the concatenated groups to the embedding (``None``: identity).
        constant: ``[dim]`` terms no block writes: the norm's shift through the head, the head's biases.
        extra: named ``[dim]`` terms computed whole (SigLIP: ``"pooling.mlp"``).
    """

    weights: torch.Tensor
    inner: torch.Tensor
    outer: torch.Tensor | None
    constant: torch.Tensor
    extra: dict[str, torch.Tensor]

    def finish(self, pre: torch.Tensor) -> torch.Tensor:
        """Maps ``[..., groups·width]`` pre-output vectors to the embedding space ``[..., dim]``."""
        return pre if self.outer is None else pre @ self.outer.T

    def of_stream(self, stream: torch.Tensor) -> torch.Tensor:
        """The direct contribution of a residual-stream term ``[positions, d]`` (pre-output, ``[groups·width]``)."""
        pooled = self.weights @ stream  # [groups, d]
        return torch.einsum("gkd,gd->gk", self.inner, centred(pooled)).flatten()

    def of_vector(self, vector: torch.Tensor) -> torch.Tensor:
        """The contribution of a vector added at every position (a bias) (pre-output, ``[groups·width]``)."""
        scale = self.weights.sum(dim=1)  # [groups]
        return torch.einsum("gkd,d->gk", self.inner, centred(vector)).mul(scale[:, None]).flatten()


def centred(x: torch.Tensor) -> torch.Tensor:
    """``x`` minus its mean over the last axis (the LayerNorm's centring, a linear map)."""
    return x - x.mean(dim=-1, keepdim=True)


def norm_scale(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """``[...]`` the standard deviation the LayerNorm divides by for each row of ``x`` ``[..., d]``."""
    var = x.double().var(dim=-1, unbiased=False)
    return (var + norm.eps).sqrt().to(x.dtype)


def _gamma(norm: nn.LayerNorm, d: int, like: torch.Tensor) -> torch.Tensor:
    return norm.weight.detach().to(like) if norm.weight is not None else torch.ones(d).to(like)


def _beta(norm: nn.LayerNorm, d: int, like: torch.Tensor) -> torch.Tensor:
    return norm.bias.detach().to(like) if norm.bias is not None else torch.zeros(d).to(like)


def clip_readout(tower: Tower, last: torch.Tensor) -> Readout:
    """CLIP's readout for one image: LayerNorm of the CLS position, then the projection.

    Args:
        tower: the tower.
        last: ``[positions, d]`` the last residual stream of the image.
    """
    d = last.shape[-1]
    sigma = norm_scale(tower.final_norm, last[0])
    weights = torch.zeros(1, last.shape[0], dtype=last.dtype, device=last.device)
    weights[0, 0] = 1.0 / sigma
    gamma, beta = _gamma(tower.final_norm, d, last), _beta(tower.final_norm, d, last)
    proj = tower.projection.weight.detach().to(last) if tower.projection is not None else torch.eye(d).to(last)
    constant = proj @ beta
    if tower.projection is not None and tower.projection.bias is not None:
        constant = constant + tower.projection.bias.detach().to(last)
    return Readout(weights, (proj * gamma)[None], None, constant, {})


def siglip_readout(tower: Tower, last: torch.Tensor, pooling_mlp: torch.Tensor) -> Readout:
    """SigLIP's readout for one image: LayerNorm of every position, then the attention-pooling head.

    The head's attention weights are the run's own; its MLP output (``pooling_mlp``, captured from the
    run) is one more direct term.

    Args:
        tower: the tower.
        last: ``[positions, d]`` the last residual stream of the image.
        pooling_mlp: ``[dim]`` what the pooling head's MLP added in the run.
    """
    head: Any = tower.pooling
    attn: nn.MultiheadAttention = head.attention
    d = last.shape[-1]
    groups = attn.num_heads
    width = d // groups
    w_in = attn.in_proj_weight.detach().to(last)
    b_in = attn.in_proj_bias.detach().to(last) if attn.in_proj_bias is not None else torch.zeros(3 * d).to(last)
    w_q, w_k, w_v = w_in.split(d)
    b_q, b_k, b_v = b_in.split(d)
    gamma, beta = _gamma(tower.final_norm, d, last), _beta(tower.final_norm, d, last)
    sigma = norm_scale(tower.final_norm, last)  # [positions]
    normed = gamma * centred(last) / sigma[:, None] + beta
    query = (head.probe.detach().to(last).reshape(d) @ w_q.T + b_q).view(groups, width)
    keys = (normed @ w_k.T + b_k).view(-1, groups, width)
    probs = torch.softmax(torch.einsum("gk,sgk->gs", query, keys) / width**0.5, dim=-1)  # [groups, positions]
    w_out = attn.out_proj.weight.detach().to(last)
    b_out = attn.out_proj.bias.detach().to(last) if attn.out_proj.bias is not None else torch.zeros(d).to(last)
    inner = (w_v * gamma).view(groups, width, d)
    constant = w_out @ (w_v @ beta + b_v) + b_out
    return Readout(probs / sigma, inner, w_out, constant, {"pooling.mlp": pooling_mlp})
