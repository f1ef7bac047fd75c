"""Occlusion: how much the target drops when one token or one image patch is replaced by the baseline.

Each text token's embedding and each image patch (a cell of the image's patch grid in the token
table, i.e. the pixels one image token stands for) is occluded on its own; the occluded copies run
``batch_size`` at a time without gradients. ``score = f(x) − f(x with the unit occluded)``. Image
placeholders in a VLM's text are scored through their pixels; padding is not occluded.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmviz.attribution._grad import progress_bar
from mmviz.attribution._problem import Problem

__all__ = ["occlusion"]


def occlusion(
    problem: Problem, baseline: Any = "zeros", batch_size: int = 8, progress: bool = True, **options: Any
) -> dict[str, Any]:
    """Scores every text token and image patch by occluding it.

    Args:
        problem: the explained function.
        baseline: what replaces an occluded unit (as for integrated gradients).
        batch_size: occluded copies per forward pass.
        progress: show a ``tqdm.auto`` progress bar.
        **options: options of other methods, ignored.

    Returns:
        ``scores``, ``pixel_maps`` (each patch's score over its pixels) and ``info``.
    """
    table = problem.table
    x_e, x_p = problem.x_embed, problem.x_pixels
    b_e, b_p = problem.baselines(baseline)
    units: list[tuple[int, str, Any]] = []  # (position, "text" | "image", slot or pixel mask)
    for pos in problem.embedding_units():
        units.append((pos, "text", pos))
    if x_p is not None and problem.layout is not None:
        for image in range(min(len(table.images), len(problem.layout.sizes))):
            grid = table.image_positions(image)
            for (row, col), pos in np.ndenumerate(grid):
                if pos >= 0:
                    units.append((int(pos), "image", problem.layout.cell_mask(image, row, col, table.grids[image])))
    with torch.no_grad():
        reference = problem.run(x_e, None if x_p is None else x_p[None], k=1)[0].double().cpu()
    n_targets = reference.shape[0]
    scores = np.zeros((n_targets, len(table)), dtype=np.float64)
    chunks = [units[i : i + batch_size] for i in range(0, len(units), batch_size)]
    for chunk in progress_bar(chunks, len(chunks), progress, "occlusion"):
        k = len(chunk)
        emb = None if x_e is None else x_e.expand(k, -1, -1).clone()
        pix = None if x_p is None else x_p[None].expand(k, *x_p.shape).clone()
        for i, (_, what, where) in enumerate(chunk):
            if what == "text" and emb is not None and b_e is not None:
                emb[i, where] = b_e[0, where]
            elif what == "image" and pix is not None and b_p is not None:
                pix[i][where.to(pix.device)] = b_p[where.to(b_p.device)]
        with torch.no_grad():
            values = problem.run(emb, pix, k=k).double().cpu()
        for i, (pos, _, _) in enumerate(chunk):
            scores[:, pos] = (reference - values[i]).numpy()
    maps = []
    if x_p is not None and problem.layout is not None:
        for image in range(min(len(table.images), len(problem.layout.sizes))):
            h, w = problem.layout.sizes[image]
            rows, cols = table.grids[image]
            positions = table.image_positions(image)
            cell = positions[(np.arange(h) * rows // h)[:, None], (np.arange(w) * cols // w)[None, :]]
            maps.append(np.where(cell >= 0, scores[:, np.maximum(cell, 0)], 0.0).astype(np.float32))
    info = {"baseline": baseline if isinstance(baseline, str) else "tensor", "units": len(units)}
    return {"scores": scores.astype(np.float32), "pixel_maps": tuple(maps), "info": info}
