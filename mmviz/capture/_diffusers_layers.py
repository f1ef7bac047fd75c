"""The text-conditioned attention layers of a diffusers denoiser: finding them, choosing them, their grids."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from mmviz.errors import CaptureError

__all__ = ["find_layers", "layer_grid", "select_layers"]


def layer_grid(grid: tuple[int, int] | None, n: int, name: str) -> tuple[int, int]:
    """``(h, w)`` of a layer with ``n`` image positions, the latent being ``grid``."""
    if grid is not None:
        height, width = grid
        for k in range(8):
            h, w = math.ceil(height / 2**k), math.ceil(width / 2**k)
            if h * w == n:
                return h, w
    side = math.isqrt(n)
    if side * side == n:
        return side, side
    raise CaptureError(f"layer {name!r}: cannot lay {n} image positions out on a grid (latent {grid})")


def find_layers(denoiser: Any) -> list[tuple[str, Any]]:
    """Text-conditioned attention modules of a UNet / PixArt / SD3 / Flux denoiser, in module order."""
    found = []
    for name, module in denoiser.named_modules():
        processor = getattr(module, "processor", None)
        if processor is None or not hasattr(module, "set_processor") or not hasattr(module, "heads"):
            continue
        kind = type(processor).__name__
        if name.endswith("attn2") and getattr(module, "is_cross_attention", False):
            found.append((name, module))
        elif kind.startswith("Joint") and getattr(module, "add_k_proj", None) is not None:
            found.append((name, module))
        elif kind.startswith("Flux"):
            found.append((name, module))
    return found


def select_layers(candidates: list[tuple[str, Any]], layers: Sequence[int | str] | None) -> list[tuple[str, Any]]:
    """The ``layers=`` choice of ``mmviz.capture(pipe, layers=...)``: indices or (parts of) module names."""
    if layers is None:
        return candidates
    items = [layers] if isinstance(layers, (int, str)) else list(layers)
    chosen = set()
    names = [n for n, _ in candidates]
    for item in items:
        if isinstance(item, str):
            hits = [i for i, n in enumerate(names) if n == item] or [i for i, n in enumerate(names) if item in n]
            if not hits:
                raise CaptureError(f"no cross-attention layer matches {item!r}; layers: {names}")
            chosen.update(hits)
        else:
            if not -len(names) <= int(item) < len(names):
                raise CaptureError(f"layer index {item} is out of range: there are {len(names)} cross-attention layers")
            chosen.add(int(item) % len(names))
    return [candidates[i] for i in sorted(chosen)]
