"""Where each tile of an image split into tiles sits on the original image, for the tiling schemes that say so.

The derived layout makes every tile an image of its own; this module places the tiles on the image they
were cut from, as ``(source, top, left, bottom, right)`` fractions of it (``TokenTable.tiles``), where the
inputs carry enough to know:

* **any-resolution** (LLaVA-NeXT, LLaVA-OneVision and kin: ``image_grid_pinpoints`` in the config,
  ``image_sizes`` in the inputs, ``pixel_values [images, tiles, C, H, W]``): tile 0 is the whole image;
  the others cut the image resized into the best-fitting pinpoint (aspect ratio kept) and padded evenly
  on both sides, row-major;
* **row/column markers** (Idefics3, SmolVLM: ``<row_i_col_j>`` tokens): the image resized to
  ``rows × cols`` tiles, row-major, then the global view (the whole image).

Other tiling schemes (InternVL, Aya Vision and Mllama tiles) keep their tiles unplaced.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

__all__ = ["Box", "tile_boxes"]

Box = tuple[int, float, float, float, float]
"""``(source image, top, left, bottom, right)``, the box in fractions of the source image."""

_ROW_COL = re.compile(r"<row_(\d+)_col_(\d+)>")
WHOLE = (0.0, 0.0, 1.0, 1.0)


def tile_boxes(config: Any, inputs: dict[str, Any], texts: list[list[str]] | None) -> dict[int, Box]:
    """Unit (entry of ``pixel_values`` flattened to ``[units, C, H, W]``) → its box on its source image.

    Args:
        config: the model's config.
        inputs: the forward inputs (``pixel_values``, ``image_sizes``).
        texts: per batch item, the token texts of the prompt (for row/column markers), or ``None``.

    Returns:
        The units that could be placed; an empty dict when the tiling scheme is not known.
    """
    pixels = inputs.get("pixel_values")
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != 5:
        return {}
    pinpoints = getattr(config, "image_grid_pinpoints", None)
    if pinpoints and "image_sizes" in inputs:
        return _any_resolution(pixels, torch.as_tensor(inputs["image_sizes"]), pinpoints)
    if texts is not None:
        return _row_col_markers(pixels, texts)
    return {}


def _any_resolution(pixels: torch.Tensor, sizes: torch.Tensor, pinpoints: list[list[int]]) -> dict[int, Box]:
    from transformers.image_processing_utils import select_best_resolution

    per_image, tile_h, tile_w = pixels.shape[1], pixels.shape[-2], pixels.shape[-1]
    out: dict[int, Box] = {}
    for image, (height, width) in enumerate(sizes.reshape(-1, 2).tolist()):
        target_h, target_w = select_best_resolution((height, width), pinpoints)
        scale_h, scale_w = target_h / height, target_w / width
        if scale_w < scale_h:  # as transformers' get_patch_output_size
            new_w, new_h = target_w, min(math.ceil(height * scale_w), target_h)
        else:
            new_h, new_w = target_h, min(math.ceil(width * scale_h), target_w)
        pad_y, pad_x = (target_h - new_h) // 2, (target_w - new_w) // 2
        cols = target_w // tile_w
        out[image * per_image] = (image, *WHOLE)
        for k in range(1, min(per_image, (target_h // tile_h) * cols + 1)):
            r, c = divmod(k - 1, cols)
            top, bottom = (_clip((r + e) * tile_h - pad_y, new_h) for e in (0, 1))
            left, right = (_clip((c + e) * tile_w - pad_x, new_w) for e in (0, 1))
            out[image * per_image + k] = (image, top, left, bottom, right)
    return out


def _clip(pixel: float, size: int) -> float:
    """``pixel`` as a fraction of ``size``, clipped to the image."""
    return float(min(max(pixel / size, 0.0), 1.0))


def _row_col_markers(pixels: torch.Tensor, texts: list[list[str]]) -> dict[int, Box]:
    per_item = pixels.shape[1]
    out: dict[int, Box] = {}
    for item, tokens in enumerate(texts):
        cells = [tuple(int(v) for v in m.groups()) for m in map(_ROW_COL.fullmatch, tokens) if m]
        real = int((pixels[item].flatten(1) != 0).any(dim=1).sum())
        if not cells:
            continue
        rows, cols = max(r for r, _ in cells), max(c for _, c in cells)
        if real != rows * cols + 1:  # one image per item: its tiles, then the global view
            continue
        for k in range(rows * cols):
            r, c = divmod(k, cols)
            out[item * per_item + k] = (0, r / rows, c / cols, (r + 1) / rows, (c + 1) / cols)
        out[item * per_item + rows * cols] = (0, *WHOLE)
    return out
