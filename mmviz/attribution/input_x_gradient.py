"""Input × gradient: ``Σ_d e_{i,d} · ∂f/∂e_{i,d}`` per position (signed; Shrikumar et al., 2016).

Pixels: the channel sum per pixel; an image patch's score is the sum over its pixels.
"""

from __future__ import annotations

from typing import Any

from mmviz.attribution._grad import gradients
from mmviz.attribution._problem import Problem
from mmviz.attribution.saliency import _batch, _stack

__all__ = ["input_x_gradient"]


def input_x_gradient(problem: Problem, **options: Any) -> dict[str, Any]:
    """Input times gradient at the input (one forward and one backward per target).

    Returns:
        ``scores`` ``[targets, positions]`` and ``pixel_maps``.
    """
    _, grads = gradients(problem, problem.x_embed, _batch(problem.x_pixels))
    emb = _stack([g[0] for g in grads])
    pix = _stack([g[1] for g in grads])
    emb = None if emb is None or problem.x_embed is None else emb * problem.x_embed
    pix = None if pix is None or problem.x_pixels is None else pix * problem.x_pixels[None]
    scores, maps = problem.scores(emb, pix, norm=False)
    return {"scores": scores, "pixel_maps": maps}
