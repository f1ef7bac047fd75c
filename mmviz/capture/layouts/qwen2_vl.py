"""Qwen2-VL: native-resolution images, 2×2 merged patches in the language model, window order in the tower.

* ``pixel_values`` holds flattened patches ``[patches, C·temporal·P·P]`` and ``image_grid_thw`` gives each
  image's ``(t, h, w)`` grid of raw patches.
* The language model sees ``t·(h/m)·(w/m)`` placeholder tokens per image (``m = spatial_merge_size``,
  2), **row-major on the merged grid**: the k-th placeholder of an image is merged cell
  ``(k // (w/m), k % (w/m))``, which covers raw patches ``m·row … m·row+m-1`` × ``m·col … m·col+m-1``.
* The vision tower runs over the raw patches of all images in one sequence, in **merge-window order**
  (each ``m×m`` block is contiguous, blocks row-major), and attends only within an image (block-diagonal
  through ``cu_seqlens``). Its table maps each position to its image and raw-grid ``(row, col)``.

Images are single frames (``t = 1``); video inputs are not laid out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmviz.capture.layouts import LayoutContext, register_layout
from mmviz.data import TokenTable

__all__ = ["images_from_patches", "qwen2_vl", "window_order"]


def window_order(h: int, w: int, merge: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw-grid ``(rows, cols)`` of the vision tower's positions for one ``h×w`` image, in merge-window order."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    shape = (h // merge, merge, w // merge, merge)
    return rows.reshape(shape).transpose(0, 2, 1, 3).ravel(), cols.reshape(shape).transpose(0, 2, 1, 3).ravel()


def images_from_patches(
    pixel_values: torch.Tensor, grid_thw: torch.Tensor, vision_config: Any, processor: Any
) -> list[np.ndarray]:
    """Rebuilds ``uint8 [H, W, 3]`` images from Qwen2-VL's flattened patches (first frame of each).

    Uses the image processor's mean and std when known, else a per-image min-max stretch.
    """
    patch = int(vision_config.patch_size)
    merge = int(vision_config.spatial_merge_size)
    temporal = int(getattr(vision_config, "temporal_patch_size", 1))
    channels = int(getattr(vision_config, "in_channels", 3))
    pixels = pixel_values.detach().to("cpu", torch.float32)
    image_processor = getattr(processor, "image_processor", processor)
    mean, std = getattr(image_processor, "image_mean", None), getattr(image_processor, "image_std", None)
    out, start = [], 0
    for t, h, w in grid_thw.tolist():
        n = t * h * w
        block = pixels[start : start + n].reshape(
            t, h // merge, w // merge, merge, merge, channels, temporal, patch, patch
        )
        start += n
        img = block[0, :, :, :, :, :, 0].permute(4, 0, 2, 5, 1, 3, 6).reshape(channels, h * patch, w * patch)
        if mean is not None and std is not None and len(mean) == channels:
            img = img * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
        else:
            img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-12)
        arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        out.append(np.ascontiguousarray(arr[:, :, :3]))
    return out


def _tower_table(grids: list[tuple[int, int]], merge: int, images: list[np.ndarray]) -> TokenTable:
    index, rows, cols = [], [], []
    for i, (h, w) in enumerate(grids):
        r, c = window_order(h, w, merge)
        index.append(np.full(r.size, i))
        rows.append(r)
        cols.append(c)
    image_index, patch_row, patch_col = np.concatenate(index), np.concatenate(rows), np.concatenate(cols)
    texts = [f"img{i} ({r},{c})" for i, r, c in zip(image_index, patch_row, patch_col)]
    return TokenTable.build(
        texts,
        kind=["image"] * len(texts),
        image_index=image_index,
        patch_row=patch_row,
        patch_col=patch_col,
        images=images,
        grids=grids,
    )


@register_layout("qwen2_vl")
def qwen2_vl(ctx: LayoutContext) -> None:
    """Marks merged image tokens in the text and lays out the vision tower's raw patches."""
    thw = ctx.inputs.get("image_grid_thw")
    vc = getattr(ctx.config, "vision_config", None)
    if thw is None or vc is None:
        return
    merge = int(vc.spatial_merge_size)
    grid_thw = torch.as_tensor(thw).reshape(-1, 3)
    raw = [(int(h), int(w)) for _, h, w in grid_thw.tolist()]
    pixels = ctx.inputs.get("pixel_values")
    if pixels is not None and pixels.ndim == 2 and not ctx.images:
        ctx.images = images_from_patches(pixels, grid_thw, vc, ctx.processor)
    image_token = getattr(ctx.config, "image_token_id", None)
    if "text" in ctx.tables and image_token is not None:
        merged = [(t * h // merge, w // merge) for t, h, w in grid_thw.tolist()]
        ctx.mark_image_tokens(int(image_token), merged)
    n_patches = int(grid_thw.prod(-1).sum())
    images = [ctx.image(i) for i in range(len(raw))]
    for group, (batch, q_len, k_len) in ctx.shapes.items():
        if group != "language_model" and batch == 1 and q_len == k_len == n_patches:
            name = f"{group}.patches"
            ctx.tables[name] = [_tower_table(raw, merge, images)]
            ctx.module_tables[group] = (name, name)
