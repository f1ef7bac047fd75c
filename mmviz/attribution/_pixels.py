"""Where each element of ``pixel_values`` lies in its image: maps, patch cells and occlusion masks.

Processors hand pixels to models in different layouts: ``[images, C, H, W]`` (ViT, CLIP, SigLIP,
LLaVA, PaliGemma), ``[batch, images, C, H, W]``, or Qwen2-VL's flattened patches
``[patches, C·temporal·P·P]`` in merge-window order. ``PixelLayout`` gives every element its
image and pixel, so per-element attributions reduce to ``[H, W]`` maps and to the cells of a patch grid
without per-family code in the methods.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["PixelLayout"]


class PixelLayout:
    """Image and pixel of each element of one example's ``pixel_values``.

    Attributes:
        sizes: ``(height, width)`` of each image.
        flat: ``LongTensor`` shaped like ``pixel_values``: index of each element's pixel in all images'
            pixels laid end to end (image 0 row-major, then image 1, ...).
    """

    def __init__(self, pixel_values: torch.Tensor, inputs: dict[str, Any], model: Any) -> None:
        shape = tuple(pixel_values.shape)
        if pixel_values.ndim == 2 and "image_grid_thw" in inputs:
            self.sizes, flat = _flattened_patches(shape, inputs["image_grid_thw"], model)
        elif pixel_values.ndim in (4, 5):
            *lead, _, h, w = shape
            n = int(np.prod(lead))
            self.sizes = [(h, w)] * n
            idx = torch.arange(n)[:, None, None, None] * (h * w) + (torch.arange(h)[:, None] * w + torch.arange(w))
            flat = idx.expand(n, shape[-3], h, w).reshape(shape)
        else:
            raise ValueError(
                f"mmviz.attribute does not know the layout of pixel_values with shape {shape}; "
                "attribute text only with sources=('text',)"
            )
        self.flat = flat.contiguous()
        self.offsets = np.concatenate([[0], np.cumsum([h * w for h, w in self.sizes])]).astype(np.int64)

    @property
    def total(self) -> int:
        """Number of pixels of all images."""
        return int(self.offsets[-1])

    def maps(self, values: torch.Tensor) -> list[np.ndarray]:
        """Sums element values into each image's pixels (over channels and temporal copies).

        Args:
            values: shaped like ``pixel_values``.

        Returns:
            One ``[H, W]`` float64 map per image.
        """
        total = torch.zeros(self.total, dtype=torch.float64)
        total.index_add_(0, self.flat.reshape(-1), values.detach().reshape(-1).to("cpu", torch.float64))
        out = total.numpy()
        return [out[a:b].reshape(h, w) for (a, b), (h, w) in zip(zip(self.offsets[:-1], self.offsets[1:]), self.sizes)]

    def cell_mask(self, image: int, row: int, col: int, grid: tuple[int, int]) -> torch.Tensor:
        """Elements of ``pixel_values`` inside one cell of an image's ``rows × cols`` patch grid.

        Returns:
            ``bool`` tensor shaped like ``pixel_values``.
        """
        h, w = self.sizes[image]
        rows, cols = grid
        ys = torch.arange(h) * rows // h
        xs = torch.arange(w) * cols // w
        cell = ((ys[:, None] == row) & (xs[None, :] == col)).reshape(-1)
        inside = torch.zeros(self.total, dtype=torch.bool)
        inside[int(self.offsets[image]) : int(self.offsets[image + 1])] = cell
        return inside[self.flat]


def cell_sums(pixel_map: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Sums an ``[H, W]`` map over the cells of a ``rows × cols`` grid (cells may be uneven).

    Returns:
        ``[rows, cols]`` float64.
    """
    h, w = pixel_map.shape
    rows, cols = grid
    ys = np.arange(h) * rows // h
    xs = np.arange(w) * cols // w
    out = np.zeros((rows, cols), dtype=np.float64)
    np.add.at(out, (ys[:, None], xs[None, :]), pixel_map)
    return out


def _flattened_patches(shape: tuple[int, ...], grid_thw: torch.Tensor, model: Any) -> tuple[list[tuple[int, int]], Any]:
    """Qwen2-VL: rows are raw patches in merge-window order, columns ``[C, temporal, P, P]``."""
    from mmviz.capture.layouts.qwen2_vl import window_order

    vc = getattr(model.config, "vision_config", model.config)
    patch = int(vc.patch_size)
    merge = int(getattr(vc, "spatial_merge_size", 1))
    temporal = int(getattr(vc, "temporal_patch_size", 1))
    channels = shape[1] // (temporal * patch * patch)
    sizes, pieces, offset = [], [], 0
    for t, h, w in grid_thw.tolist():
        rows, cols = window_order(h, w, merge)
        ys = torch.as_tensor(rows)[:, None, None] * patch + torch.arange(patch)[None, :, None]
        xs = torch.as_tensor(cols)[:, None, None] * patch + torch.arange(patch)[None, None, :]
        pix = offset + ys * (w * patch) + xs  # [h*w, P, P]
        per_row = pix[:, None, None].expand(h * w, channels, temporal, patch, patch).reshape(h * w, -1)
        pieces.append(per_row.repeat(t, 1))
        sizes.append((h * patch, w * patch))
        offset += h * patch * w * patch
    flat = torch.cat(pieces, 0)
    if tuple(flat.shape) != shape:
        raise ValueError(f"pixel_values {shape} do not match image_grid_thw {grid_thw.tolist()}")
    return sizes, flat
