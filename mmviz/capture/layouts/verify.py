"""Checks a laid-out table against the model: do the pixels of patch row ``r`` reach exactly the row-``r`` tokens?

``verify_layout`` is independent of how the table was laid out (by hand or derived): for every image of
the table and every row and every column of its grid, it perturbs only that band of the image's pixels,
runs the model with identity attention (so positions do not mix, see
``mmviz.capture.layouts.provenance``) and compares the positions that changed with the positions the
table puts in that row or column. A token is *verified* when every band check it takes part in agrees.

Overlapping receptive fields (Florence-2's DaViT convolutions) make a band change the positions of
neighbouring rows too; then the check is an order: how much each band changes a position gives the
position's mean band, and the positions the table puts in row ``k`` must all lie above those of row
``k - 1`` and below those of row ``k + 1`` (a table with rows or columns swapped, or a position in the
wrong row, fails).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmviz._hf.modules import stack_names
from mmviz.capture.layouts.derived import PIXEL_INPUTS, forward_inputs, unit_images
from mmviz.capture.layouts.provenance import PixelLayout, probe_stack
from mmviz.data import TokenTable

__all__ = ["LayoutCheck", "verify_layout"]


@dataclass(frozen=True)
class LayoutCheck:
    """What ``verify_layout`` found for one batch item.

    Attributes:
        image_tokens: positions the pixels reach (the image's tokens, by measurement), less the queries.
        laid_out: of those, positions the table marks ``image`` with an image, row and column.
        verified: of those, positions whose row and column band checks all agree with the table.
        failures: human-readable reasons for the positions that did not verify.
        queries: positions the table marks as queries (``<query k>``, mixing the whole image: a Q-Former's
            queries, Florence-2's pooled token) that every band of pixels changes; not image tokens.
    """

    image_tokens: int
    laid_out: int
    verified: int
    failures: tuple[str, ...] = ()
    queries: int = 0

    @property
    def ok(self) -> bool:
        """Every image token laid out and verified."""
        return self.image_tokens > 0 and self.verified == self.laid_out == self.image_tokens


def verify_layout(
    model: torch.nn.Module,
    inputs: dict[str, Any],
    table: TokenTable,
    stack: str,
    processor: Any = None,
    batch_index: int = 0,
    side: str = "query",
) -> LayoutCheck:
    """Checks that each image token of ``table`` is the patch it claims, by perturbing bands of pixels.

    Args:
        model: the vision-language model the table was captured from.
        inputs: the forward inputs of that capture (as the processor returned them).
        table: the table of ``stack``'s ``side`` positions for batch item ``batch_index``.
        stack: the recorded stack whose positions the table describes (``"language_model"``, ...).
        processor: the processor (its mean and std turn the pixels back into the table's images).
        batch_index: the batch item the table belongs to.
        side: ``"query"``, or ``"key"`` for the image side of a cross-attention (Mllama).

    Returns:
        A `LayoutCheck`; ``check.ok`` when every image token is laid out and verified.
    """
    pixel_key = next((k for k in PIXEL_INPUTS if k in inputs), None)
    if pixel_key is None:
        raise ValueError(f"the inputs hold no pixels (expected one of {PIXEL_INPUTS})")
    config = getattr(model.config, "vision_config", None) or model.config
    merge = int(getattr(config, "spatial_merge_size", 2) or 2)
    pixels = torch.as_tensor(inputs[pixel_key])
    layout = PixelLayout.of(pixels, inputs.get("image_grid_thw"), merge)
    if layout is None:
        raise ValueError(f"pixels of shape {tuple(pixels.shape)} have no layout mmviz knows")
    run = forward_inputs(model, inputs)
    names = stack_names(model)
    base = probe_stack(model, run, names, stack, pixel_key, pixels, side)[batch_index]
    n = base.shape[0]

    # added, not multiplied (a dark or zero pixel must move too), and not one value (norms would undo it)
    noise = np.random.default_rng(0).uniform(0.2, 0.6, pixels.numel()) * max(float(pixels.float().std()), 1e-3)

    def moved_by(mask: np.ndarray) -> np.ndarray:
        shift = torch.from_numpy((noise * mask).reshape(pixels.shape)).to(pixels.dtype)
        moved = probe_stack(model, run, names, stack, pixel_key, pixels + shift, side)[batch_index]
        tol = 1e-5 * float(base.abs().max().clamp_min(1e-12))
        return np.where((moved - base).abs().numpy() > tol, (moved - base).abs().numpy(), 0.0)

    everything = moved_by(np.ones(pixels.numel())) > 0
    claimed = (table.kind[:n] == "special") & np.char.startswith(table.text[:n].astype(str), "<query ")
    mixed = claimed & everything  # cleared below where a band leaves a claimed query unchanged
    reached = everything & ~claimed
    units = _match_units(table, unit_images(pixels, inputs.get("image_grid_thw"), config, processor))
    image = (table.kind[:n] == "image") & (table.image_index[:n] >= 0)
    good = image.copy()
    failures = []
    for i, unit in enumerate(units):
        mine = image & (table.image_index[:n] == i)
        if unit < 0:
            good &= ~mine
            failures.append(f"image {i} of the table matches no unit of the pixels")
            continue
        rows, cols = table.grids[i]
        height, width = layout.sizes[unit]
        in_unit = layout.unit == unit
        for axis, count, size, coord, label in (
            ("row", rows, height, layout.y, table.patch_row[:n]),
            ("col", cols, width, layout.x, table.patch_col[:n]),
        ):

            def band(parts: int, k: int) -> np.ndarray:
                return (in_unit & (coord * parts // size == k)).astype(np.float64)  # noqa: B023

            response = np.stack([moved_by(band(count, k)) for k in range(count)])
            mixed &= (response > 0).all(axis=0)
            wrong = _exact(response, reached, mine, label, image)
            if wrong.any() and (((response > 0) & reached)[:, mine].sum(axis=0) > 1).any():  # overlap
                slices = np.stack([moved_by(band(count * SLICES, k)) for k in range(count * SLICES)])
                wrong = _ordered(slices, count, reached, mine, label, image)
            for k in range(count):
                if wrong[k].any():
                    failures.append(f"image {i} {axis} {k}: positions {np.flatnonzero(wrong[k]).tolist()}")
            good &= ~wrong.any(axis=0)
    unconfirmed = claimed & everything & ~mixed
    if unconfirmed.any():
        failures.append(f"positions {np.flatnonzero(unconfirmed).tolist()} are marked queries but do not mix the image")
    reached |= unconfirmed
    return LayoutCheck(
        queries=int(mixed.sum()),
        image_tokens=int(reached.sum()),
        laid_out=int((image & reached).sum()),
        verified=int((good & reached).sum()),
        failures=tuple(failures),
    )


SLICES = 4
"""Slices per row (column) band for the order check of overlapping receptive fields."""


def _exact(
    response: np.ndarray, reached: np.ndarray, mine: np.ndarray, label: np.ndarray, image: np.ndarray
) -> np.ndarray:
    """``[bands, positions]`` where band ``k`` does not change exactly the positions labelled ``k``."""
    changed = (response > 0) & reached
    expected = mine[None, :] & (label[None, :] == np.arange(response.shape[0])[:, None])
    return (changed ^ expected) & (image | reached)[None, :]


def _ordered(
    slices: np.ndarray, count: int, reached: np.ndarray, mine: np.ndarray, label: np.ndarray, image: np.ndarray
) -> np.ndarray:
    """``[bands, positions]`` where the order of the positions' mean slices disagrees with their labels.

    Every pixel feeds neighbouring positions, so a band changes several rows; each position's mean slice
    (weighted by how much each slice changes it) must put all positions of label ``k`` above all of
    label ``k - 1`` and below all of label ``k + 1``. Positions the pixels reach that the table leaves
    out disagree too.
    """
    total = slices.sum(axis=0)
    centre = (np.arange(slices.shape[0])[:, None] * slices).sum(axis=0) / np.maximum(total, 1e-30)
    wrong = np.zeros((count, label.size), dtype=bool)
    for k in range(count):
        here = mine & (label == k)
        below, above = centre[mine & (label == k - 1)], centre[mine & (label == k + 1)]
        bad = here & (total <= 0)
        if below.size:
            bad |= here & (centre <= below.max())
        if above.size:
            bad |= here & (centre >= above.min())
        wrong[k] = bad
    wrong[0] |= reached & ~image
    return wrong


def _match_units(table: TokenTable, images: list[np.ndarray]) -> list[int]:
    """The unit of the pixels each of the table's images was recovered from (``-1`` where none matches)."""
    out = []
    for img in table.images:
        out.append(
            next((u for u, cand in enumerate(images) if cand.shape == img.shape and np.array_equal(cand, img)), -1)
        )
    return out
