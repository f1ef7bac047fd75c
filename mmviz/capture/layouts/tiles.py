"""Where each tile of an image split into tiles sits on the original image, derived from the inputs.

The derived layout makes every tile an image of its own; this module places the tiles on the image they
were cut from, as ``(source, top, left, bottom, right)`` fractions of it (``TokenTable.tiles``):

* **any-resolution** (LLaVA-NeXT, LLaVA-OneVision and kin: ``image_grid_pinpoints`` in the config,
  ``image_sizes`` in the inputs, ``pixel_values [images, tiles, C, H, W]``): tile 0 is the whole image;
  the others cut the image resized into the best-fitting pinpoint (aspect ratio kept) and padded evenly
  on both sides, row-major;
* **row/column markers** (Idefics3, SmolVLM: ``<row_i_col_j>`` tokens): the image resized to
  ``rows × cols`` tiles, row-major, then the global view (the whole image);
* **aspect-ratio ids** (Mllama: ``pixel_values [batch, images, tiles, C, H, W]``, ``aspect_ratio_ids``):
  the id picks the ``rows × cols`` grid from the vision config's ``supported_aspect_ratios``; the image
  was resized into that canvas (aspect ratio kept) and padded at the bottom and right, so its extent is
  where the stitched tiles stop being the padding value (the value of the canvas's last pixel);
* **tiles then a thumbnail** (InternVL, Aya Vision: GOT-OCR2's ``crop_to_patches``,
  ``pixel_values [units, C, H, W]``): an image becomes ``rows × cols`` tiles of the image stretched to that
  canvas, row-major, then a thumbnail of the whole image (an image of one tile has no thumbnail). The
  inputs say neither the grid nor which units belong to which image, so both are measured: for each
  candidate number ``n`` of tiles and grid ``rows × cols = n``, the tiles are stitched, shrunk to the
  thumbnail's size and correlated with the unit after them; the best grid counts when the correlation
  passes ``THUMBNAIL_MATCH`` (units are compared shrunk to at most ``MATCH_SIZE`` pixels a side; an image
  processor with ``crop_to_patches=False`` is not looked at). Images with almost no structure (a flat
  colour) cannot be placed this way and keep their tiles unplaced.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

__all__ = ["THUMBNAIL_MATCH", "Box", "tile_boxes"]

Box = tuple[int, float, float, float, float]
"""``(source image, top, left, bottom, right)``, the box in fractions of the source image."""

_ROW_COL = re.compile(r"<row_(\d+)_col_(\d+)>")
WHOLE = (0.0, 0.0, 1.0, 1.0)
THUMBNAIL_MATCH = 0.9
"""Least correlation between stitched, shrunk tiles and the unit after them for that unit to be their thumbnail."""
MOST_TILES = 12
"""Most tiles of one image looked for when the processor does not say (GOT-OCR2's default ``max_patches``)."""
MATCH_SIZE = 32
"""Units are compared shrunk to at most this many pixels a side (a thumbnail is already small)."""


def tile_boxes(
    config: Any, inputs: dict[str, Any], texts: list[list[str]] | None, processor: Any = None
) -> dict[int, Box]:
    """Unit (entry of ``pixel_values`` flattened to ``[units, C, H, W]``) → its box on its source image.

    Args:
        config: the model's config.
        inputs: the forward inputs (``pixel_values``, ``image_sizes``, ``aspect_ratio_ids``).
        texts: per batch item, the token texts of the prompt (for row/column markers), or ``None``.
        processor: the processor (its ``max_patches`` bounds the tiles of one image), or ``None``.

    Returns:
        The units that could be placed; an empty dict when the tiling scheme is not known.
    """
    pixels = inputs.get("pixel_values")
    if not isinstance(pixels, torch.Tensor):
        return {}
    if pixels.ndim == 6 and "aspect_ratio_ids" in inputs:
        ratios = getattr(getattr(config, "vision_config", config), "supported_aspect_ratios", None)
        return _aspect_ratio_ids(pixels, torch.as_tensor(inputs["aspect_ratio_ids"]), ratios) if ratios else {}
    if pixels.ndim == 4 and pixels.shape[0] > 2:
        image_processor = getattr(processor, "image_processor", processor)
        if getattr(image_processor, "crop_to_patches", None) is False:
            return {}
        most = getattr(image_processor, "max_patches", None)
        return _tiles_then_thumbnail(pixels, int(most) if isinstance(most, int) else MOST_TILES)
    if pixels.ndim != 5:
        return {}
    pinpoints = getattr(config, "image_grid_pinpoints", None)
    if pinpoints and "image_sizes" in inputs:
        return _any_resolution(pixels, torch.as_tensor(inputs["image_sizes"]), pinpoints)
    if texts is not None:
        return _row_col_markers(pixels, texts)
    return {}


def _grid_boxes(source: int, rows: int, cols: int, height: float = 1.0, width: float = 1.0) -> list[Box]:
    """Boxes of a ``rows × cols`` grid of tiles, row-major, on an image that covers ``height × width`` of it."""
    return [
        (
            source,
            _clip(r, rows * height),
            _clip(c, cols * width),
            _clip(r + 1, rows * height),
            _clip(c + 1, cols * width),
        )
        for r in range(rows)
        for c in range(cols)
    ]


def _aspect_ratio_ids(pixels: torch.Tensor, ids: torch.Tensor, ratios: list[list[int]]) -> dict[int, Box]:
    """Mllama: ``pixels [batch, images, tiles, C, H, W]``, id ``k`` (from 1; 0 pads) is grid ``ratios[k-1]``."""
    batch, images, per_image, channels, height, width = pixels.shape
    out: dict[int, Box] = {}
    for b in range(batch):
        for i in range(images):
            k = int(ids[b, i]) if b < ids.shape[0] and i < ids.shape[1] else 0
            if not 0 < k <= len(ratios):
                continue
            rows, cols = (int(v) for v in ratios[k - 1])
            if rows * cols > per_image:
                continue
            canvas = pixels[b, i, : rows * cols].reshape(rows, cols, channels, height, width)
            canvas = canvas.permute(2, 0, 3, 1, 4).reshape(channels, rows * height, cols * width)
            content = (canvas != canvas[:, -1:, -1:]).any(dim=0)  # padding: the value of the last pixel
            used_rows, used_cols = content.any(dim=1).nonzero(), content.any(dim=0).nonzero()
            if used_rows.numel() == 0:
                continue
            extent_h = (int(used_rows.max()) + 1) / (rows * height)
            extent_w = (int(used_cols.max()) + 1) / (cols * width)
            source = b * images + i
            for t, box in enumerate(_grid_boxes(source, rows, cols, extent_h, extent_w)):
                out[source * per_image + t] = box
    return out


def _tiles_then_thumbnail(pixels: torch.Tensor, most: int) -> dict[int, Box]:
    """GOT-OCR2's ``crop_to_patches``: per image ``rows × cols`` tiles, row-major, then its thumbnail.

    Images are taken in order; at each unit the best-matching ``(tiles, rows, cols)`` is looked for (see
    the module docstring). A unit no tiles match is a whole image of one tile.
    """
    size = (min(pixels.shape[-2], MATCH_SIZE), min(pixels.shape[-1], MATCH_SIZE))
    units = torch.nn.functional.interpolate(pixels.detach().float(), size=size, mode="area")
    out: dict[int, Box] = {}
    start, source = 0, 0
    while start < units.shape[0]:
        best: tuple[float, int, int] | None = None
        for n in range(2, min(most, units.shape[0] - start - 1) + 1):
            thumbnail = units[start + n]
            for rows in (r for r in range(1, n + 1) if n % r == 0):
                score = _match(units[start : start + n], rows, n // rows, thumbnail)
                if score >= THUMBNAIL_MATCH and (best is None or score > best[0]):
                    best = (score, rows, n // rows)
        if best is None:
            out[start] = (source, *WHOLE)
            start += 1
        else:
            _, rows, cols = best
            for t, box in enumerate(_grid_boxes(source, rows, cols)):
                out[start + t] = box
            out[start + rows * cols] = (source, *WHOLE)
            start += rows * cols + 1
        source += 1
    return out


def _match(tiles: torch.Tensor, rows: int, cols: int, thumbnail: torch.Tensor) -> float:
    """Correlation of ``tiles [rows·cols, C, H, W]`` stitched row-major and shrunk to the thumbnail's size."""
    channels, height, width = tiles.shape[1:]
    canvas = tiles.reshape(rows, cols, channels, height, width).permute(2, 0, 3, 1, 4)
    canvas = canvas.reshape(1, channels, rows * height, cols * width)
    small = torch.nn.functional.interpolate(canvas, size=thumbnail.shape[-2:], mode="area")[0]
    a, b = small.flatten() - small.mean(), thumbnail.flatten() - thumbnail.mean()
    norm = float(a.norm() * b.norm())
    return float(a @ b) / norm if norm > 1e-12 else 0.0


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


def _clip(pixel: float, size: float) -> float:
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
