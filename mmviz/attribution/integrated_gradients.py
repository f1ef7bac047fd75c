"""Integrated gradients (Sundararajan et al., 2017), with the steps run in bounded batches.

``IG_i = (x_i − b_i) · ∫₀¹ ∂f/∂x_i (b + α(x − b)) dα``, the integral approximated at ``steps`` points
(Gauss–Legendre by default, as Captum). The points run ``batch_size`` at a time, so memory stays that of
``batch_size`` forward/backward passes whatever ``steps`` is; parameters are frozen while it runs, so
autograd keeps only what input gradients need. ``delta = Σ IG − (f(x) − f(b))`` measures how far the
approximation is from completeness.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmviz.attribution._grad import gradients, progress_bar
from mmviz.attribution._problem import Problem

__all__ = ["integrated_gradients", "path_points"]

RULES = ("gausslegendre", "riemann_middle", "riemann_trapezoid", "riemann_left", "riemann_right")


def path_points(steps: int, rule: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
    """Points ``α`` in [0, 1] and their weights (summing to 1) for the path integral.

    Args:
        steps: number of points.
        rule: ``"gausslegendre"`` or a Riemann rule (``riemann_middle``, ``_trapezoid``, ``_left``, ``_right``).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}")
    if rule == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (x + 1), 0.5 * w
    if rule == "riemann_trapezoid":
        if steps < 2:
            raise ValueError("riemann_trapezoid needs at least 2 steps")
        a = np.linspace(0, 1, steps)
        w = np.full(steps, 1.0 / (steps - 1))
        w[[0, -1]] /= 2
        return a, w
    offsets = {"riemann_middle": 0.5, "riemann_left": 0.0, "riemann_right": 1.0}
    if rule not in offsets:
        raise ValueError(f"unknown integration rule {rule!r}; use one of {RULES}")
    return (np.arange(steps) + offsets[rule]) / steps, np.full(steps, 1.0 / steps)


def integrated_gradients(
    problem: Problem,
    baseline: Any = "zeros",
    steps: int = 50,
    batch_size: int = 8,
    rule: str = "gausslegendre",
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Integrated gradients of every target.

    Args:
        problem: the explained function.
        baseline: ``"zeros"``, ``"pad"`` (pad-token embeddings; zero pixels), a tensor shaped like the
            embeddings or the pixels, or ``{"text": ..., "image": ...}``.
        steps: points on the path.
        batch_size: points per forward/backward pass (bounds memory).
        rule: integration rule (see ``path_points``).
        progress: show a ``tqdm.auto`` progress bar.
        **options: options of other methods, ignored.

    Returns:
        ``scores``, ``pixel_maps``, ``delta`` ``[targets]`` and ``info``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    alphas, weights = path_points(steps, rule)
    x_e, x_p = problem.x_embed, problem.x_pixels
    b_e, b_p = problem.baselines(baseline)
    n_targets = len(problem.plan.labels)
    sum_e = None if x_e is None else torch.zeros((n_targets, *x_e.shape[1:]), dtype=torch.float64, device=x_e.device)
    sum_p = None if x_p is None else torch.zeros((n_targets, *x_p.shape), dtype=torch.float64, device=x_p.device)
    chunks = [slice(i, min(i + batch_size, steps)) for i in range(0, steps, batch_size)]
    for chunk in progress_bar(chunks, len(chunks), progress, "integrated gradients"):
        a = torch.as_tensor(alphas[chunk], dtype=torch.float32)
        w = torch.as_tensor(weights[chunk], dtype=torch.float64)
        emb = pix = None
        if x_e is not None and b_e is not None:
            emb = b_e + a.to(x_e.device)[:, None, None] * (x_e - b_e)
        if x_p is not None and b_p is not None:
            shape = (-1,) + (1,) * x_p.ndim
            pix = b_p[None] + a.to(x_p.device).reshape(shape) * (x_p - b_p)[None]
        _, grads = gradients(problem, emb, pix)
        for t, (g_e, g_p) in enumerate(grads):
            if g_e is not None and sum_e is not None:
                sum_e[t] += torch.einsum("k,k...->...", w.to(g_e.device), g_e.double())
            if g_p is not None and sum_p is not None:
                sum_p[t] += torch.einsum("k,k...->...", w.to(g_p.device), g_p.double())
    attr_e = None if sum_e is None or x_e is None or b_e is None else sum_e * (x_e - b_e).double()
    attr_p = None if sum_p is None or x_p is None or b_p is None else sum_p * (x_p - b_p)[None].double()
    total = torch.zeros(n_targets, dtype=torch.float64)
    for attr in (attr_e, attr_p):
        if attr is not None:
            total += attr.reshape(n_targets, -1).sum(-1).cpu()
    with torch.no_grad():
        ends_e = None if x_e is None or b_e is None else torch.cat([x_e, b_e], 0)
        ends_p = None if x_p is None or b_p is None else torch.stack([x_p, b_p], 0)
        ends = problem.run(ends_e, ends_p, k=2).double().cpu()
    delta = (total - (ends[0] - ends[1])).numpy()
    scores, maps = problem.scores(attr_e, attr_p, norm=False)
    info = {"baseline": baseline if isinstance(baseline, str) else "tensor", "steps": steps, "rule": rule}
    info.update(f_input=ends[0].tolist(), f_baseline=ends[1].tolist())
    return {"scores": scores, "pixel_maps": maps, "delta": delta, "info": info}
