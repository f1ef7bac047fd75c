"""Saliency: the L2 norm of the gradient of the target (Simonyan et al., 2014).

Text tokens: ``‖∂f/∂e_i‖₂`` over the embedding dimension of each input embedding ``e_i``. Pixels: the
norm over channels per pixel; an image patch's score is the norm over all its pixels and channels.
"""

from __future__ import annotations

from typing import Any

import torch

from mmviz.attribution._grad import gradients
from mmviz.attribution._problem import Problem

__all__ = ["saliency"]


def saliency(problem: Problem, **options: Any) -> dict[str, Any]:
    """Gradient magnitudes at the input (one forward and one backward per target).

    Returns:
        ``scores`` ``[targets, positions]`` and ``pixel_maps``.
    """
    _, grads = gradients(problem, problem.x_embed, _batch(problem.x_pixels))
    emb = _stack([g[0] for g in grads])
    pix = _stack([g[1] for g in grads])
    scores, maps = problem.scores(emb, pix, norm=True)
    return {"scores": scores, "pixel_maps": maps}


def _batch(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x[None]


def _stack(items: list[torch.Tensor | None]) -> torch.Tensor | None:
    """``[targets, ...]`` from per-target ``[1, ...]`` gradients."""
    if items[0] is None:
        return None
    return torch.cat([i for i in items if i is not None], 0)
