"""One forward pass of a vision tower with hooks, and the direct contributions computed from what they saw.

The hooks only keep raw tensors (each block's query, key and value projections, the heads' outputs, the
attention and MLP outputs, the stream entering the first block, the pooling head's MLP output); nothing is
reduced while the model runs.
``decompose_image`` then writes one image's embedding as a sum of direct contributions, reducing each
layer's ``[heads, positions, dim]`` attention terms at once into the sums the trace keeps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mmviz.decompose._towers import Readout, Tower, clip_readout, siglip_readout
from mmviz.errors import CaptureError

CHECK_TOLERANCE = 1e-3
"""Largest relative gap between the attention recomputed from q/k/v and the model's own before mmviz refuses
(float32 models; half-precision ones allow 8 × their machine epsilon)."""


@dataclass
class Recording:
    """What the hooks saw in one forward pass (batch-first tensors, detached)."""

    stream0: torch.Tensor | None = None
    qkv: list[list[torch.Tensor]] = field(default_factory=list)  # per block: [query, key, value] projections
    attn_out: list[torch.Tensor] = field(default_factory=list)
    heads_in: list[torch.Tensor] = field(default_factory=list)
    mlp_out: list[torch.Tensor] = field(default_factory=list)
    pooling_mlp: torch.Tensor | None = None
    embedding: torch.Tensor | None = None


def _first(output: Any) -> torch.Tensor:
    """The tensor in a module's output, detached, in float32 (half-precision runs decompose in float32)."""
    return (output[0] if isinstance(output, tuple) else output).detach().float()


@contextlib.contextmanager
def recording(tower: Tower) -> Iterator[Recording]:
    """Hooks that fill a ``Recording`` while the tower runs; removed on exit, also on errors."""
    rec = Recording()
    handles = []

    def keep_stream0(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        rec.stream0 = _first(args[0] if args else kwargs["hidden_states"])

    def keep_projection(_m: nn.Module, _a: Any, out: Any) -> None:
        if not rec.qkv or len(rec.qkv[-1]) == 3:
            rec.qkv.append([])
        rec.qkv[-1].append(_first(out))

    def keep_heads_in(_m: nn.Module, args: tuple[Any, ...]) -> None:
        rec.heads_in.append(_first(args[0]))

    def keep_attn_out(_m: nn.Module, _a: Any, out: Any) -> None:
        rec.attn_out.append(_first(out))

    def keep_mlp_out(_m: nn.Module, _a: Any, out: Any) -> None:
        rec.mlp_out.append(_first(out))

    def keep_pooling_mlp(_m: nn.Module, _a: Any, out: Any) -> None:
        rec.pooling_mlp = _first(out)

    try:
        handles.append(tower.blocks[0].register_forward_pre_hook(keep_stream0, with_kwargs=True))
        for block in tower.blocks:
            attn: Any = block.self_attn
            for projection in (attn.q_proj, attn.k_proj, attn.v_proj):
                handles.append(projection.register_forward_hook(keep_projection))
            handles.append(attn.out_proj.register_forward_pre_hook(keep_heads_in))
            handles.append(attn.register_forward_hook(keep_attn_out))
            mlp: Any = block.mlp
            handles.append(mlp.register_forward_hook(keep_mlp_out))
        pooling: Any = tower.pooling
        if pooling is not None:
            handles.append(pooling.mlp.register_forward_hook(keep_pooling_mlp))
        yield rec
    finally:
        for handle in handles:
            handle.remove()


def run(tower: Tower, pixel_values: torch.Tensor, **kwargs: Any) -> Recording:
    """Runs the tower once on ``pixel_values`` ``[batch, 3, H, W]`` and returns what the hooks saw."""
    with recording(tower) as rec, torch.no_grad():
        pooled = tower.vision(pixel_values=pixel_values, **kwargs).pooler_output
        rec.embedding = _first(tower.projection(pooled) if tower.projection is not None else pooled)
    complete = len(rec.qkv) == len(tower.blocks) and all(len(p) == 3 for p in rec.qkv)
    if rec.stream0 is None or not complete or len(rec.mlp_out) != len(tower.blocks):
        raise CaptureError(
            f"decompose: the tower ran {len(rec.attn_out)} of its {len(tower.blocks)} blocks through their "
            "attention; a block was skipped or called twice, which the decomposition cannot follow"
        )
    return rec


@dataclass
class ImageTerms:
    """One image's direct contributions, in the embedding space ``[dim]`` (torch, float32).

    ``patches``, ``maps`` and ``detail`` are filled only when asked for (the image the trace details).
    """

    embedding: torch.Tensor
    embed: torch.Tensor
    mlp: torch.Tensor  # [layers, dim]
    heads: torch.Tensor  # [layers, heads, dim]
    bias: torch.Tensor  # [layers, dim]
    constant: torch.Tensor  # [dim]
    extra: dict[str, torch.Tensor]
    patches: torch.Tensor | None = None  # [layers, positions, dim]
    maps: torch.Tensor | None = None  # [directions, layers, heads, positions]
    detail: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [heads, positions, dim]


def _readout(tower: Tower, rec: Recording, item: int, last: torch.Tensor) -> Readout:
    if tower.family == "clip":
        return clip_readout(tower, last)
    assert rec.pooling_mlp is not None
    return siglip_readout(tower, last, rec.pooling_mlp[item].reshape(-1))


def fold_output(block: nn.Module, readout: Readout) -> torch.Tensor:
    """``[heads, groups, width, head_dim]`` each head's output projection, centred and read out by ``readout``.

    It depends on the tower's weights only (the run's statistics sit in ``readout.weights``), so one fold
    serves every image of a batch.
    """
    attn: Any = block.self_attn
    n_heads = int(attn.num_heads)
    w_out = attn.out_proj.weight.detach().float()
    d = w_out.shape[0]
    w_out = (w_out - w_out.mean(dim=0, keepdim=True)).view(d, n_heads, -1)  # the norm's centring, folded in
    return torch.einsum("gkd,dhe->hgke", readout.inner, w_out)


def _attention_layer(
    block: nn.Module,
    qkv: list[torch.Tensor],
    heads_in: torch.Tensor,
    readout: Readout,
    folded: torch.Tensor,
    layer: int,
    per_source: bool,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Pre-output terms of one attention layer for one image.

    Args:
        block: the encoder block.
        qkv: ``[positions, d]`` the run's query, key and value projections.
        heads_in: ``[positions, d]`` what entered the output projection (the heads' outputs, concatenated).
        readout: the image's readout.
        folded: ``fold_output(block, readout)``.
        layer: index, for messages.
        per_source: also return each (head, source position) term.

    Returns:
        ``terms`` ``[heads, positions, groups·width]`` (``None`` unless ``per_source``), ``head_sums``
        ``[heads, groups·width]`` and the output bias's pre-output term ``[groups·width]``.
    """
    attn: Any = block.self_attn
    n_heads = int(attn.num_heads)
    d = heads_in.shape[-1]
    hd = d // n_heads
    rows = torch.nonzero(readout.weights.abs().sum(dim=0) > 0).flatten()  # query positions the readout reads
    q = qkv[0][rows].view(len(rows), n_heads, hd).transpose(0, 1)
    k = qkv[1].view(-1, n_heads, hd).transpose(0, 1)
    v = qkv[2].view(-1, n_heads, hd).transpose(0, 1)  # [heads, positions, hd]
    scale = float(getattr(attn, "scale", hd**-0.5))
    probs = torch.softmax(q @ k.transpose(1, 2) * scale, dim=-1)  # [heads, rows, positions]
    mine = (probs @ v).transpose(0, 1).reshape(len(rows), d)
    theirs = heads_in[rows]
    gap = float((mine - theirs).norm() / theirs.norm().clamp_min(1e-12))
    if gap > max(CHECK_TOLERANCE, 8 * torch.finfo(attn.out_proj.weight.dtype).eps):  # half precision rounds more
        raise CaptureError(
            f"decompose: layer {layer}'s attention is not softmax(q·kᵀ·scale)·v as the decomposition assumes "
            f"(relative gap {gap:.2e}); rotary embeddings, masks or custom attention are not supported"
        )
    groups, width = readout.inner.shape[:2]
    weight_by_head = torch.einsum("gr,hrs->ghs", readout.weights[:, rows], probs)  # [groups, heads, positions]
    bias = attn.out_proj.bias
    bias_term = readout.of_vector(bias.detach().float()) if bias is not None else torch.zeros(groups * width).to(v)
    if not per_source:
        mixed = torch.einsum("ghs,hse->hge", weight_by_head, v)  # [heads, groups, hd]
        return None, torch.einsum("hgke,hge->hgk", folded, mixed).reshape(n_heads, -1), bias_term
    terms = torch.einsum("hgke,hse->hsgk", folded, v) * weight_by_head.permute(1, 2, 0)[..., None]
    terms = terms.reshape(n_heads, -1, groups * width)
    return terms, terms.sum(dim=1), bias_term


def decompose_image(
    tower: Tower,
    rec: Recording,
    item: int,
    *,
    folds: list[torch.Tensor] | None = None,
    directions: torch.Tensor | None = None,
    detail_layers: tuple[int, ...] = (),
) -> tuple[ImageTerms, list[torch.Tensor]]:
    """Writes batch item ``item``'s embedding as a sum of direct contributions.

    Args:
        tower: the tower that ran.
        rec: what its hooks saw.
        item: batch index.
        folds: ``fold_output`` of each block (computed here when ``None``; returned for the next image).
        directions: ``[directions, dim]`` unit vectors to project each (layer, head, source) term on
            (``None``: keep no patch-level terms).
        detail_layers: layers whose full ``[heads, positions, dim]`` terms are kept.
    """
    assert rec.stream0 is not None and rec.embedding is not None
    stream0 = rec.stream0[item]
    last = stream0 + sum(a[item] for a in rec.attn_out) + sum(m[item] for m in rec.mlp_out)
    readout = _readout(tower, rec, item, last)
    outer_dirs = None
    if directions is not None:
        outer_dirs = directions if readout.outer is None else directions @ readout.outer
    heads, bias, patches, maps = [], [], [], []
    detail: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        folds = folds if folds is not None else [fold_output(block, readout) for block in tower.blocks]
        for layer, block in enumerate(tower.blocks):
            per_source = outer_dirs is not None or layer in detail_layers
            qkv = [x[item] for x in rec.qkv[layer]]
            terms, head_sums, bias_term = _attention_layer(
                block, qkv, rec.heads_in[layer][item], readout, folds[layer], layer, per_source
            )
            heads.append(readout.finish(head_sums))
            bias.append(readout.finish(bias_term))
            if terms is None:
                continue
            if outer_dirs is not None:
                patches.append(readout.finish(terms.sum(dim=0)))
                maps.append(torch.einsum("hsk,nk->nhs", terms, outer_dirs))
            if layer in detail_layers:
                detail[layer] = readout.finish(terms)
        mlp = torch.stack([readout.finish(readout.of_stream(m[item])) for m in rec.mlp_out])
        embed = readout.finish(readout.of_stream(stream0))
    terms_of_image = ImageTerms(
        embedding=rec.embedding[item],
        embed=embed,
        mlp=mlp,
        heads=torch.stack(heads),
        bias=torch.stack(bias),
        constant=readout.constant,
        extra={name: value.reshape(-1) for name, value in readout.extra.items()},
        patches=torch.stack(patches) if patches else None,
        maps=torch.stack(maps, dim=1) if maps else None,
        detail=detail,
    )
    return terms_of_image, folds
