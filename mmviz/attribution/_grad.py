"""Gradients of the explained function with respect to text embeddings and pixels, in batches."""

from __future__ import annotations

import torch

from mmviz._hf.run import progress_bar
from mmviz.attribution._problem import Problem

__all__ = ["gradients", "progress_bar"]


def gradients(
    problem: Problem, emb: torch.Tensor | None, pix: torch.Tensor | None
) -> tuple[torch.Tensor, list[tuple[torch.Tensor | None, torch.Tensor | None]]]:
    """Values and per-target gradients at ``k`` points.

    Args:
        problem: the explained function.
        emb: ``[k, n_embed, dim]`` embeddings, or ``None`` (text not attributed).
        pix: ``[k, *pixel_values.shape]`` pixels, or ``None`` (pixels not attributed).

    Returns:
        ``[k, targets]`` values (detached) and, per target, the gradients w.r.t. ``emb`` and ``pix``.
    """
    leaves = []
    if emb is not None:
        emb = emb.detach().requires_grad_(True)
        leaves.append(emb)
    if pix is not None:
        pix = pix.detach().requires_grad_(True)
        leaves.append(pix)
    with torch.enable_grad():
        values = problem.run(emb, pix)
        n_targets = values.shape[1]
        out: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []
        for t in range(n_targets):
            grads = torch.autograd.grad(values[:, t].sum(), leaves, retain_graph=t < n_targets - 1)
            g = iter(grads)
            out.append((next(g) if emb is not None else None, next(g) if pix is not None else None))
    return values.detach(), out
