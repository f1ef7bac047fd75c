"""Cells of positions whose pixels overlap: towers with overlapping convolutions (Florence-2's DaViT).

The ownership measurement of ``mmviz.capture.layouts.provenance`` gives a pixel to the one position
whose input it feeds. An overlapping convolution (kernel larger than its stride) makes every pixel
feed several neighbouring positions, so no position owns any. For those positions this module takes
one backward pass per position and:

* gives each pixel to the position whose input depends on it *most* (the largest gradient magnitude);
  a position that gets no pixel, or whose field is spread about as widely as the whole unit
  (``GLOBAL_SPREAD``), mixes the image (Florence-2's pooled token, a resampler's learned
  queries) and stays unowned, a query;
* places every other position by the centre of its receptive field (the gradient-magnitude-weighted
  mean pixel of its unit: the unit of most of its pixels);
* splits the centres of one unit into rows (and, separately, columns) at their largest gaps — as many
  as come before the sorted gaps drop the most, each at least twice any gap within a row — into rows
  of equal size, and checks that rows × columns is the number of positions, one per cell. Padding
  clips the fields at the borders, which moves their centres off an even spacing, so rows are found
  by gaps, not by dividing by a step. When no grid fits, the positions stay unowned.

One backward pass per position is costly for a large tower on a CPU: a stack whose placement would take
longer than ``layout_seconds()`` (60 s unless ``$MMVIZ_LAYOUT_SECONDS`` says otherwise), estimated from
the first ``SAMPLE`` positions, is left unplaced with a warning that says how to place it.

The position's box becomes its cell of that grid over the unit (a fractional box, ``size / count`` a
cell), so ``mmviz.capture.layouts.derived`` reads the grid from the spacing as for owned pixels.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from mmviz.capture.layouts.provenance import PixelLayout

__all__ = [
    "CHUNK",
    "DEFAULT_SECONDS",
    "GLOBAL_SPREAD",
    "MAX_POSITIONS",
    "SAMPLE",
    "layout_seconds",
    "place_by_receptive_field",
]

GLOBAL_SPREAD = 0.75
"""A field whose spread is this share of its whole unit's (or more) mixes the image: a query, not placed."""

DEFAULT_SECONDS = 60.0
"""Default time budget of one stack's placement (``$MMVIZ_LAYOUT_SECONDS`` overrides it)."""

SAMPLE = 16
"""Positions measured before the time estimate and the check for learned queries."""

CHUNK = 16
"""Positions whose gradients one batched backward pass computes."""

MAX_POSITIONS = 4096
"""Stacks with more positions to place are left unplaced (a tower's early stages: one backward per position)."""

_SEPARATION = 2.0
"""The smallest gap between rows must be this many times the largest gap within a row."""


class _TooSlow(Exception):
    """The placement would take longer than its budget: ``(estimated seconds, budget)``."""


def layout_seconds() -> float:
    """Seconds the placement of one stack may take: ``$MMVIZ_LAYOUT_SECONDS``, else ``DEFAULT_SECONDS``.

    Raises:
        ValueError: the variable is set but is not a number.
    """
    value = os.environ.get("MMVIZ_LAYOUT_SECONDS")
    if not value:
        return DEFAULT_SECONDS
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"MMVIZ_LAYOUT_SECONDS={value!r} is not a number of seconds") from None


def _gradients(values: torch.Tensor, leaf: torch.Tensor, positions: np.ndarray) -> Iterator[torch.Tensor | None]:
    """The gradient of each position's value with respect to the pixels, ``CHUNK`` positions a backward pass.

    Falls back to one pass per position where the model has an operation the batched pass cannot take.
    """
    for start in range(0, positions.size, CHUNK):
        chunk = torch.as_tensor(positions[start : start + CHUNK], device=values.device)
        pick = torch.zeros(chunk.numel(), values.numel(), dtype=values.dtype, device=values.device)
        pick[torch.arange(chunk.numel(), device=values.device), chunk] = 1
        try:
            (grads,) = torch.autograd.grad(values, leaf, pick, retain_graph=True, is_grads_batched=True)
        except RuntimeError:  # an operation without a batching rule: one pass per position
            for p in chunk.tolist():
                (grad,) = torch.autograd.grad(values[p], leaf, retain_graph=True, allow_unused=True)
                yield None if grad is None else grad.detach()
            continue
        yield from grads.detach()


def _centres(
    values: torch.Tensor, leaf: torch.Tensor, layout: PixelLayout, positions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per position, its field's centre ``(unit, y, x)`` and whether the field is local (not the whole image).

    A field is local when its position depends on some pixel most and its spread (the root mean square
    distance of its pixels from the centre, weighted like the centre) is under ``GLOBAL_SPREAD`` of that
    of the whole unit. Positions are taken in a random order; after the first ``SAMPLE`` it stops when
    every field so far mixes the whole image (learned queries), or raises ``_TooSlow`` when the rest
    would pass the time budget.

    Returns:
        ``([positions, 3] float centres, [positions] bool local)``.
    """
    n_units = len(layout.sizes)
    best = np.zeros(leaf.numel())
    owner = np.full(leaf.numel(), -1)
    centres = np.zeros((positions.size, 3))
    spread = np.full(positions.size, np.inf)
    whole = np.array([np.sqrt((h * h + w * w) / 12) for h, w in layout.sizes])
    budget, start = layout_seconds(), time.perf_counter()
    order = np.random.default_rng(0).permutation(positions.size)  # the first ones a sample of all
    for n, (i, grad) in enumerate(zip(order.tolist(), _gradients(values, leaf, positions[order]))):
        if n == SAMPLE and positions.size > SAMPLE:
            seen = order[:SAMPLE]
            if not (spread[seen] < GLOBAL_SPREAD * whole[centres[seen, 0].astype(int)]).any():
                break  # the fields mix the whole image: learned queries
            estimate = (time.perf_counter() - start) / SAMPLE * positions.size
            if estimate > budget:
                raise _TooSlow(estimate, budget)
        if grad is None:
            continue
        g = grad.abs().reshape(-1).double().cpu().numpy()
        mass = np.bincount(layout.unit, weights=g, minlength=n_units)
        u = int(mass.argmax())
        if mass[u] <= 0:
            continue
        mine = layout.unit == u
        w, ys, xs = g[mine] / mass[u], layout.y[mine], layout.x[mine]
        y, x = (w * ys).sum(), (w * xs).sum()
        centres[i], spread[i] = (u, y, x), np.sqrt((w * ((ys - y) ** 2 + (xs - x) ** 2)).sum())
        more = g > best
        best[more], owner[more] = g[more], i
    owns = np.bincount(owner[owner >= 0], minlength=positions.size) > 0
    return centres, owns & (spread < GLOBAL_SPREAD * whole[centres[:, 0].astype(int)])


def _split(centres: np.ndarray) -> tuple[np.ndarray, int] | None:
    """Ranks of ``centres`` split into equal groups at their largest gaps, and the group count; ``None`` if none fits.

    The gaps between groups are the largest ones, at least ``_SEPARATION`` times any gap within a group;
    their count is where the sorted gaps drop the most. Centres less than a pixel apart are one group.
    """
    order = np.argsort(centres, kind="stable")
    gaps = np.diff(centres[order])
    ranks = np.zeros(centres.size, dtype=np.int64)
    if not gaps.size or gaps.max() < 1.0:
        return ranks, 1
    desc = np.sort(gaps)[::-1]
    drops = desc[:-1] / np.maximum(desc[1:], 1e-9) if desc.size > 1 else np.array([np.inf])
    k = int(drops.argmax()) + 1  # the k largest gaps separate k + 1 groups
    if desc.size > k and desc[k - 1] < _SEPARATION * desc[k]:
        return None
    cuts = np.sort(np.argsort(gaps, kind="stable")[::-1][:k])
    ranks[order] = np.searchsorted(cuts, np.arange(centres.size), side="left")
    sizes = np.bincount(ranks)
    return (ranks, k + 1) if np.all(sizes == sizes[0]) else None


def _grid(ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int] | None:
    """``(rows, cols, row count, col count)`` of positions centred at ``(ys, xs)``, or ``None``."""
    rows, cols = _split(ys), _split(xs)
    if rows is None or cols is None or rows[1] * cols[1] != ys.size:
        return None
    if len(set(zip(rows[0].tolist(), cols[0].tolist()))) != ys.size:
        return None
    return rows[0], cols[0], rows[1], cols[1]


def place_by_receptive_field(
    values: torch.Tensor,
    leaf: torch.Tensor,
    layout: PixelLayout,
    lost: np.ndarray,
    unit: np.ndarray,
    box: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Units and cells of the ``lost`` positions (pixels reach them, they own none) from their receptive fields.

    Args:
        values: ``[positions]`` scalar per position, a differentiable function of ``leaf`` (graph retained).
        leaf: the pixels.
        layout: where each pixel element sits.
        lost: ``[positions]`` the positions to place.
        unit: ``[positions]`` units found by ownership (``-1``: none); not modified.
        box: ``[positions, 4]`` boxes found by ownership; not modified.

    Returns:
        ``(unit, box)`` with the placed positions filled in (``box`` as floats: cells of the implied grid).
    """
    unit, box = unit.copy(), box.astype(np.float64)
    positions = np.flatnonzero(lost)
    if positions.size == 0 or positions.size > MAX_POSITIONS:
        return unit, box
    try:
        centres, owns = _centres(values, leaf, layout, positions)
    except _TooSlow as slow:
        estimate, budget = slow.args
        warnings.warn(
            f"mmviz leaves {positions.size} image tokens unplaced: their tower's overlapping convolutions make "
            f"every pixel feed several of them, and placing them takes one backward pass each, about "
            f"{estimate:.0f} s here (budget {budget:.0f} s). Set MMVIZ_LAYOUT_SECONDS={10 * (estimate // 10 + 1):.0f} "
            "(or run the model on a GPU) to place them.",
            stacklevel=2,
        )
        return unit, box
    for u in range(len(layout.sizes)):
        mine = owns & (centres[:, 0] == u)
        found = _grid(centres[mine, 1], centres[mine, 2]) if mine.any() else None
        if found is None:
            continue
        rows, cols, n_rows, n_cols = found
        step_y, step_x = layout.sizes[u][0] / n_rows, layout.sizes[u][1] / n_cols
        where = positions[mine]
        unit[where] = u
        box[where] = np.stack([rows * step_y, (rows + 1) * step_y - 1, cols * step_x, (cols + 1) * step_x - 1], 1)
    return unit, box
