"""Cells of positions whose pixels overlap: towers with overlapping convolutions (Florence-2's DaViT).

The ownership measurement of ``mmviz.capture.layouts.provenance`` gives a pixel to the one position
whose input it feeds. An overlapping convolution (kernel larger than its stride) makes every pixel
feed several neighbouring positions, so no position owns any. This module places those positions by
the centre of their receptive fields, measured with identity attention (positions do not mix):

* **by bands** (``_band_centres``, the default): noise is added to one horizontal band of pixels at a
  time (``BAND_SPLIT`` bands to a grid cell, the cell's size estimated from the unit's area and the
  number of positions), then to one vertical band at a time, ``BANDS_PER_PASS`` perturbed images a
  batched forward; with several units (tiles, images) each unit is perturbed whole first. How much a
  band changes a position's states (the norm over its features, root mean square over noise draws)
  gives its profile along that axis: the response-weighted mean band centre is its centre row (or
  column), the weighted spread its extent. The cost is ``rows + cols`` forwards (``+ units``), however
  many positions; a forward that stops at the stack's first attention layer;
* **by gradients** (``_centres``, the fallback where the model's forward does not take the perturbed
  pixels or some unit's band centres form no grid): one backward pass per position, ``CHUNK`` a batched
  pass; a pixel goes to the position whose input depends on it most (the largest gradient magnitude),
  the centre is the gradient-magnitude-weighted mean pixel and a position that gets no pixel is a query.

Either way a position whose field is spread about as widely as its whole unit (``GLOBAL_SPREAD``), or
that several units change, mixes the image (Florence-2's pooled token, a resampler's learned queries)
and stays unowned, a query. The centres of one unit are split into rows (and, separately, columns) at
their largest gaps — as many as come before the sorted gaps drop the most, each at least twice any gap
within a row — into rows of equal size, and rows × columns must be the number of positions, one per
cell. Padding clips the fields at the borders, which moves their centres off an even spacing, so rows
are found by gaps, not by dividing by a step. When no grid fits, the positions stay unowned.

A stack whose placement would take longer than ``layout_seconds()`` (60 s unless
``$MMVIZ_LAYOUT_SECONDS`` says otherwise), estimated from the first batched forward (bands) or the
first ``SAMPLE`` positions (gradients), is left unplaced with a warning that says how to place it.

The position's box becomes its cell of that grid over the unit (a fractional box, ``size / count`` a
cell), so ``mmviz.capture.layouts.derived`` reads the grid from the spacing as for owned pixels.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from mmviz.capture.layouts.provenance import PixelLayout

__all__ = [
    "BANDS_PER_PASS",
    "BAND_SPLIT",
    "CHUNK",
    "DEFAULT_SECONDS",
    "FEATURES",
    "GLOBAL_SPREAD",
    "MAX_DRAWS",
    "MAX_POSITIONS",
    "NOISE",
    "SAMPLE",
    "Responder",
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
"""Stacks with more positions to place are left unplaced (a tower's early stages: thin bands, a costly fallback)."""

BAND_SPLIT = 1
"""Bands of pixels to a cell of the grid (its spacing estimated from the unit's area and the position count)."""

NOISE = 0.1
"""Standard deviation of the noise added to a band, in standard deviations of the pixels."""

FEATURES = 256
"""Features whose changes one band's response sums at least (over several noise draws where a position has fewer)."""

MAX_DRAWS = 8
"""Most noise draws per band."""

BANDS_PER_PASS = 8
"""Perturbed pixel tensors one forward runs as a batch."""

Responder = Callable[[list[torch.Tensor]], list[torch.Tensor]]
"""Pixel tensors → the ``[positions, features]`` states each gives (identity attention), in one forward."""

_NEGLIGIBLE = 0.05
"""Gaps between centres under this share of the largest gap are as good as none when counting rows."""

_SEPARATION = 2.0
"""The smallest gap between rows must be this many times the largest gap within a row."""


class _TooSlow(Exception):
    """The placement would take longer than its budget: ``(estimated seconds, budget, what it runs)``."""


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
                raise _TooSlow(estimate, budget, f"{positions.size} backward passes, one per token")
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


def _band_masks(layout: PixelLayout, count: int) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """``(row bands, column bands, band height)`` over every unit: bands ``BAND_SPLIT`` to a cell of ``count``."""
    area = sum(h * w for h, w in layout.sizes)
    band = max(1, int(np.sqrt(area / max(count, 1)) // BAND_SPLIT))
    height, width = max(h for h, _ in layout.sizes), max(w for _, w in layout.sizes)
    rows = [layout.y // band == k for k in range(-(-height // band))]
    cols = [layout.x // band == k for k in range(-(-width // band))]
    return rows, cols, band


def _responses(respond: Responder, pixels: torch.Tensor, masks: list[np.ndarray], positions: np.ndarray) -> np.ndarray:
    """``[masks, positions]`` how much adding noise to each mask's pixels changes each position's states.

    The change is the root mean square, over noise draws, of the norm of the difference of the position's
    ``[features]`` states (zero where no state moves by more than ``1e-5`` of the largest): one draw, or
    enough that the draws hold ``FEATURES`` features together (at most ``MAX_DRAWS``), since a norm over a
    few features varies much from draw to draw. Runs ``BANDS_PER_PASS`` perturbed tensors a forward (one
    at a time where the model's inputs do not batch, or batching changes the unperturbed states); raises
    ``_TooSlow`` when the first pass says the rest would pass the time budget.
    """
    budget, start = layout_seconds(), time.perf_counter()
    base = respond([pixels])[0][positions]
    tol = 1e-5 * float(base.abs().max().clamp_min(1e-12))
    draws = int(np.clip(-(-FEATURES // max(base.shape[-1], 1)), 1, MAX_DRAWS))
    gen = torch.Generator(pixels.device).manual_seed(1)
    scale = NOISE * float(pixels.float().std().clamp_min(1e-6)) if pixels.numel() > 1 else NOISE
    # added, not a factor: a factor leaves dark pixels (zeros) alone and would draw the centres to bright ones
    noises = [
        torch.randn(pixels.shape, generator=gen, device=pixels.device, dtype=pixels.dtype) * scale for _ in range(draws)
    ]
    items = [(m, d) for d in range(draws) for m in range(len(masks))]
    out = np.zeros((len(masks), positions.size))
    per_pass = max(1, min(BANDS_PER_PASS, len(items)))
    done = 0
    while done < len(items):
        chunk = items[done : done + per_pass]
        moved = [
            pixels + noises[d] * torch.from_numpy(masks[m].reshape(pixels.shape)).to(pixels.device) for m, d in chunk
        ]
        if per_pass > 1:
            try:
                first, *moved = respond([pixels, *moved])
                if done == 0 and float((first[positions] - base).abs().max()) > tol:
                    per_pass = 1  # batching changes the states: one tensor a forward
            except (ValueError, RuntimeError):
                per_pass = 1
            if per_pass == 1:
                continue
        else:
            moved = respond(moved)
        for (m, _), states in zip(chunk, moved):
            diff = states[positions] - base
            out[m] += (diff.square().sum(dim=1) * (diff.abs().amax(dim=1) > tol)).cpu().numpy()
        done += len(chunk)
        if done < len(items) and done == len(chunk):  # the first pass: the time estimate
            estimate = (time.perf_counter() - start) / (done + 1) * (len(items) + 1)
            if estimate > budget:
                raise _TooSlow(estimate, budget, f"{len(items) + 1} forward passes with perturbed pixels")
    return np.sqrt(out / draws)


def _profile(response: np.ndarray, band: int, extent: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(centre, variance, total)`` per position of ``[bands, positions]`` responses along one axis.

    Band ``k`` covers ``[k · band, (k + 1) · band)`` clipped to each position's unit ``extent``; the centre
    is the response-weighted mean of the band centres, the variance adds each band's own (uniform) spread.
    """
    k = np.arange(response.shape[0])[:, None]
    lo = np.minimum(k * band, extent[None, :])
    hi = np.minimum((k + 1) * band, extent[None, :])
    mid, inner = (lo + hi - 1) / 2, ((hi - lo) ** 2 - 1).clip(0) / 12
    total = response.sum(axis=0)
    w = response / np.maximum(total, 1e-300)
    centre = (w * mid).sum(axis=0)
    return centre, (w * ((mid - centre) ** 2 + inner)).sum(axis=0), total


def _band_centres(
    respond: Responder, pixels: torch.Tensor, layout: PixelLayout, positions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per position, its field's centre ``(unit, y, x)`` and whether it is local, from perturbed bands of pixels.

    With several units, each is perturbed whole first: a local position changes with one unit only. Then
    every row band (all units at once), then every column band: a position's responses along each axis
    give its centre and spread (see ``_profile``); it is local when its spread is under ``GLOBAL_SPREAD``
    of its unit's, as in ``_centres``.

    Returns:
        ``([positions, 3] float centres, [positions] bool local)``.
    """
    n_units = len(layout.sizes)
    rows, cols, band = _band_masks(layout, positions.size)
    units = [layout.unit == u for u in range(n_units)] if n_units > 1 else []
    response = _responses(respond, pixels, [*units, *rows, *cols], positions)
    if units:
        by_unit = response[:n_units]
        unit, single = by_unit.argmax(axis=0), (by_unit > 0).sum(axis=0) == 1
    else:
        unit, single = np.zeros(positions.size, dtype=np.int64), np.ones(positions.size, dtype=bool)
    sizes = np.array(layout.sizes, dtype=np.float64).reshape(-1, 2)[unit]
    first = len(units)
    y, var_y, total_y = _profile(response[first : first + len(rows)], band, sizes[:, 0])
    x, var_x, total_x = _profile(response[first + len(rows) :], band, sizes[:, 1])
    whole = np.sqrt((sizes**2).sum(axis=1) / 12)
    local = single & (total_y > 0) & (total_x > 0) & (np.sqrt(var_y + var_x) < GLOBAL_SPREAD * whole)
    return np.stack([unit, y, x], axis=1).astype(np.float64), local


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
    # gaps under _NEGLIGIBLE of the largest count as that much: two tiny gaps within a row (0.016 and
    # 0.002 px) must not make the largest drop
    drops = desc[:-1] / np.maximum(desc[1:], _NEGLIGIBLE * desc[0]) if desc.size > 1 else np.array([np.inf])
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


def _cells(
    centres: np.ndarray,
    local: np.ndarray,
    layout: PixelLayout,
    positions: np.ndarray,
    unit: np.ndarray,
    box: np.ndarray,
) -> bool:
    """Fills ``unit`` and ``box`` of the local ``positions`` from the grid their centres imply, unit by unit.

    Returns:
        Whether every unit with local positions had a grid.
    """
    complete = True
    for u in range(len(layout.sizes)):
        mine = local & (centres[:, 0] == u)
        if not mine.any():
            continue
        found = _grid(centres[mine, 1], centres[mine, 2])
        if found is None:
            complete = False
            continue
        rows, cols, n_rows, n_cols = found
        step_y, step_x = layout.sizes[u][0] / n_rows, layout.sizes[u][1] / n_cols
        where = positions[mine]
        unit[where] = u
        box[where] = np.stack([rows * step_y, (rows + 1) * step_y - 1, cols * step_x, (cols + 1) * step_x - 1], 1)
    return complete


def place_by_receptive_field(
    values: torch.Tensor,
    leaf: torch.Tensor,
    layout: PixelLayout,
    lost: np.ndarray,
    unit: np.ndarray,
    box: np.ndarray,
    respond: Responder | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Units and cells of the ``lost`` positions (pixels reach them, they own none) from their receptive fields.

    With ``respond``, the fields are measured by perturbing bands of pixels (``_band_centres``: one forward
    per row and per column band, ``BANDS_PER_PASS`` a batch); where that fails (the model's forward
    raises, or some unit's local positions form no grid) and without it, by gradients (``_centres``: one
    backward pass per position).

    Args:
        values: ``[positions]`` scalar per position, a differentiable function of ``leaf`` (graph retained).
        leaf: the pixels.
        layout: where each pixel element sits.
        lost: ``[positions]`` the positions to place.
        unit: ``[positions]`` units found by ownership (``-1``: none); not modified.
        box: ``[positions, 4]`` boxes found by ownership; not modified.
        respond: runs the model with identity attention on pixel tensors, giving each one's states of
            the same positions as ``values`` (``[positions, features]``).

    Returns:
        ``(unit, box)`` with the placed positions filled in (``box`` as floats: cells of the implied grid).
    """
    unit, box = unit.copy(), box.astype(np.float64)
    positions = np.flatnonzero(lost)
    if positions.size == 0 or positions.size > MAX_POSITIONS:
        return unit, box
    try:
        if respond is not None:
            try:
                centres, local = _band_centres(respond, leaf.detach(), layout, positions)
            except (ValueError, RuntimeError):  # the model's forward does not take the perturbed pixels
                pass
            else:
                placed_unit, placed_box = unit.copy(), box.copy()
                if _cells(centres, local, layout, positions, placed_unit, placed_box):
                    return placed_unit, placed_box
        centres, owns = _centres(values, leaf, layout, positions)
    except _TooSlow as slow:
        estimate, budget, what = slow.args
        warnings.warn(
            f"mmviz leaves {positions.size} image tokens unplaced: their tower's overlapping convolutions make "
            f"every pixel feed several of them, and placing them takes {what}, about {estimate:.0f} s here "
            f"(budget {budget:.0f} s). Set MMVIZ_LAYOUT_SECONDS={10 * (estimate // 10 + 1):.0f} "
            "(or run the model on a GPU) to place them.",
            stacklevel=2,
        )
        return unit, box
    _cells(centres, owns, layout, positions, unit, box)
    return unit, box
