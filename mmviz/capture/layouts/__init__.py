"""Image-token layouts: which sequence position is which image patch, per model family.

Text needs no model-specific code: any model whose attention goes through transformers'
AttentionInterface gets token tables from its inputs and tokenizer. Images do: each family places
image tokens differently (LLaVA expands a placeholder row-major, Qwen2-VL merges 2×2 patches, PaliGemma
puts the image first, BLIP-2 goes through a Q-Former). A layout is a function registered for one or
more ``config.model_type`` values::

    from mmviz.capture.layouts import LayoutContext, register_layout

    @register_layout("my_vlm")
    def my_vlm(ctx: LayoutContext) -> None:
        ctx.mark_image_tokens(image_token_id=ctx.config.image_token_id, grid=(24, 24))
        ctx.add_vision_tower("vision_tower", grid=(24, 24), prefix=1)

It edits ``ctx.tables`` (name → one TokenTable per batch item) and ``ctx.module_tables`` (stack name →
query and key table names). Stacks a layout leaves out are matched to tables by length.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmviz._hf.tokens import patch_table
from mmviz.data import TokenTable
from mmviz.data.display import patch_label

__all__ = ["LayoutContext", "register_layout", "resolve_layout"]

Layout = Callable[["LayoutContext"], None]
_LAYOUTS: dict[str, Layout] = {}
_BUILTIN = ("vision", "llava", "qwen2_vl", "paligemma", "blip2", "git")


def register_layout(*model_types: str) -> Callable[[Layout], Layout]:
    """Registers a layout function for the given ``config.model_type`` values."""

    def decorate(fn: Layout) -> Layout:
        for model_type in model_types:
            _LAYOUTS[model_type] = fn
        return fn

    return decorate


def resolve_layout(ctx: LayoutContext) -> None:
    """Runs the layout registered for the model's type; a vision-language model without one gets the derived layout.

    The derived layout (``mmviz.capture.layouts.derived``) runs the model once more with identity
    attention to see which pixels reach which position; if that forward fails, the stacks keep the
    tables matched by length and a warning says why.
    """
    for name in _BUILTIN:
        importlib.import_module(f"mmviz.capture.layouts.{name}")
    layout = _LAYOUTS.get(getattr(ctx.config, "model_type", ""))
    if layout is not None:
        layout(ctx)
        return
    from mmviz.capture.layouts.derived import PIXEL_INPUTS, derived_layout

    if "input_ids" in ctx.inputs and any(k in ctx.inputs for k in PIXEL_INPUTS):
        try:
            derived_layout(ctx)
        except Exception as err:  # a layout never costs the user the trace
            warnings.warn(
                f"mmviz could not derive the image layout of {type(ctx.model).__name__} ({type(err).__name__}: "
                f"{err}); image tokens are left unlabelled. Register a layout for model_type "
                f"{getattr(ctx.config, 'model_type', '')!r} (see docs/families.md).",
                stacklevel=2,
            )


@dataclass
class LayoutContext:
    """What a layout function sees and fills in.

    Attributes:
        model: the captured model.
        config: its config.
        processor: the processor or tokenizer given to the capture (may be ``None``).
        tokenizer: the tokenizer found in it (may be ``None``).
        inputs: the first forward call's tensor inputs, on CPU.
        shapes: recorded stack name → ``(batch, query length, key length)``.
        tables: table name → one TokenTable per batch item (``"text"`` is the input sequence).
        images: ``uint8 [H, W, 3]`` images recovered from ``pixel_values``, in input order.
        module_tables: stack name → ``(query table, key table)``.
    """

    model: Any
    config: Any
    processor: Any
    tokenizer: Any
    inputs: dict[str, Any]
    shapes: dict[str, tuple[int, int, int]]
    tables: dict[str, list[TokenTable]]
    images: list[np.ndarray] = field(default_factory=list)
    module_tables: dict[str, tuple[str, str]] = field(default_factory=dict)

    def vision_config(self) -> Any:
        """The vision sub-config (or the config itself for a vision-only model)."""
        return getattr(self.config, "vision_config", None) or self.config

    def vision_grid(self) -> tuple[int, int] | None:
        """``(rows, cols)`` of the vision tower's patch grid, from ``image_size`` and ``patch_size``."""
        vc = self.vision_config()
        size, patch = getattr(vc, "image_size", None), getattr(vc, "patch_size", None)
        if not size or not patch:
            return None
        h, w = (size, size) if isinstance(size, int) else tuple(size)[:2]
        ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)[:2]
        return int(h) // int(ph), int(w) // int(pw)

    def mark_image_tokens(
        self,
        image_token_id: int,
        grid: tuple[int, int] | Sequence[tuple[int, int]],
        table: str = "text",
    ) -> None:
        """Marks placeholder tokens as image patches, ``rows·cols`` per image, row-major.

        The k-th placeholder of an image is patch ``(k // cols, k % cols)``; images are taken in order
        across the batch (each image takes the next ``rows·cols`` placeholders).

        Args:
            image_token_id: the placeholder's vocabulary id.
            grid: ``(rows, cols)`` shared by every image, or one grid per image in input order
                (models with native-resolution images, e.g. Qwen2-VL).
            table: the table to edit.
        """
        shared = isinstance(grid[0], (int, np.integer))
        grids: list[Any] = [grid] if shared else list(grid)
        image_counter = 0
        new = []
        for tab in self.tables[table]:
            positions = np.flatnonzero(tab.token_id == image_token_id)
            kind, index = tab.kind.copy(), tab.image_index.copy()
            prow, pcol, text = tab.patch_row.copy(), tab.patch_col.copy(), tab.text.astype(object)
            images: list[np.ndarray] = []
            table_grids: list[tuple[int, int]] = []
            done = 0
            while done < len(positions):
                if not shared and image_counter >= len(grids):
                    raise ValueError(f"found more image tokens than the {len(grids)} image grids account for")
                rows, cols = (int(v) for v in grids[0 if shared else image_counter])
                if done + rows * cols > len(positions):
                    raise ValueError(
                        f"found {len(positions)} image tokens, which do not fill whole {rows}×{cols} patch grids"
                    )
                pos = positions[done : done + rows * cols]
                k = np.arange(rows * cols)
                kind[pos] = "image"
                index[pos] = len(images)
                prow[pos], pcol[pos] = k // cols, k % cols
                text[pos] = [patch_label(len(images), r, c) for r, c in zip(k // cols, k % cols)]
                images.append(self.image(image_counter))
                table_grids.append((rows, cols))
                image_counter += 1
                done += rows * cols
            new.append(
                TokenTable(
                    text=text.astype(str),
                    kind=kind,
                    word_id=_words_after_images(tab.word_id, positions),
                    image_index=index,
                    patch_row=prow,
                    patch_col=pcol,
                    token_id=tab.token_id,
                    generated=tab.generated,
                    images=tuple(images),
                    grids=tuple(table_grids),
                )
            )
        self.tables[table] = new

    def image(self, index: int) -> np.ndarray:
        """The ``index``-th input image (a grey placeholder when pixels were not seen)."""
        if index < len(self.images):
            return self.images[index]
        return np.full((32, 32, 3), 128, dtype=np.uint8)

    def add_vision_tower(self, group: str, grid: tuple[int, int], prefix: int = 0) -> None:
        """Describes a vision tower's self-attention: ``prefix`` special tokens, then the patch grid.

        Its batch axis runs over images, so ``batch_index`` of that stack picks the image.
        """
        if group not in self.shapes:
            return
        batch, q_len, _ = self.shapes[group]
        name = f"{group}.patches"
        self.tables[name] = [patch_table(q_len, grid, self.image(i)) for i in range(batch)]
        self.module_tables[group] = (name, name)


def _words_after_images(word_id: np.ndarray, image_positions: np.ndarray) -> np.ndarray:
    """Gives every image token a word of its own and renumbers words in order."""
    starts = np.ones(word_id.size, dtype=bool)
    starts[1:] = word_id[1:] != word_id[:-1]
    starts[image_positions] = True
    after = image_positions + 1
    starts[after[after < word_id.size]] = True
    return np.cumsum(starts) - 1
