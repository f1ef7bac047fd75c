"""The derived layout: image tokens laid out from what the model does, with no family-specific code.

Families without a registered layout fall back to this one. It measures (see
``mmviz.capture.layouts.provenance``) which pixels reach each position of every recorded stack and
turns that into token tables:

* a position that owns the pixels of one patch (or merged block of patches) of one unit — an image, or
  a tile of an image split into tiles — is an ``image`` token ``(unit, row, col)``; the unit's grid
  is its size divided by the spacing of the owned blocks, so pixel shuffle, 2×2 mergers and pooling
  give the coarser grid the language model sees, and every tile is an image of its own;
* a position that depends on the pixels but owns none mixes the whole image (a Q-Former or resampler
  query): a ``special`` token ``<query k>``;
* an image placeholder the pixels do not reach, inside an image's run of tokens, is a separator: a
  ``special`` token ``<image newline>`` when it follows the last column of a row (LLaVA-NeXT), else
  ``<image separator>``;
* in a vision tower's own sequence, positions the pixels do not reach (CLS, registers) are ``special``.

A stack whose positions are the input tokens (the language model) edits the ``"text"`` table; one
whose positions are the input tokens with image features inserted (GIT, Florence-2's encoder) gets a
table of its own with the text in order; any other stack (a vision tower) gets a table of its own.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmviz._hf.tokens import images_from_pixels
from mmviz.capture.layouts import LayoutContext, _words_after_images
from mmviz.capture.layouts.provenance import PixelLayout, Provenance, trace_pixels
from mmviz.capture.layouts.tiles import Box, tile_boxes
from mmviz.data import TokenTable

__all__ = ["PIXEL_INPUTS", "derived_layout", "forward_inputs", "unit_grids", "unit_images"]

PIXEL_INPUTS = ("pixel_values", "pixel_values_images", "flattened_patches")
"""Input names that may hold the pixels, in order of preference."""


def forward_inputs(model: torch.nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
    """The recorded inputs the model's ``forward`` accepts by name (all of them if it takes ``**kwargs``).

    Inputs of a ``generate`` call may lack the ``decoder_input_ids`` a forward needs (BLIP's question
    answering): the decoder then starts from its start token, one position.
    """
    params = inspect.signature(model.forward).parameters
    named = {k for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    out = {k: v for k, v in inputs.items() if k in named and k != "inputs_embeds"}
    ids = out.get("input_ids")
    if "decoder_input_ids" in named and "decoder_input_ids" not in out and isinstance(ids, torch.Tensor):
        out["decoder_input_ids"] = torch.full((ids.shape[0], 1), _start_token(model.config), dtype=ids.dtype)
    return out


def _start_token(config: Any) -> int:
    """The token a decoder starts from: ``decoder_start_token_id``, else ``bos_token_id`` (of the text config)."""
    for cfg in (config, getattr(config, "text_config", None)):
        for name in ("decoder_start_token_id", "bos_token_id"):
            value = getattr(cfg, name, None) if cfg is not None else None
            if isinstance(value, int):
                return value
    return 0


def unit_grids(prov: Provenance, layout: PixelLayout) -> dict[int, tuple[float, float, int, int]]:
    """Per unit, the spacing of the blocks one stack's positions own and the grid it gives.

    Returns ``unit → (step_y, step_x, rows, cols)``. The step is the smallest gap between distinct block
    centres (or the block size when there is one row or column); a position's cell is its block centre
    divided by the step. Each stack has its own grid: a tower sees patches, its language model merged
    blocks of them.
    """
    out = {}
    units = prov.unit.reshape(-1)
    boxes = prov.box.reshape(-1, 4)
    for u in np.unique(units[units >= 0]).tolist():
        b = boxes[units == u]
        steps = []
        for lo, hi, size in ((b[:, 0], b[:, 1], layout.sizes[u][0]), (b[:, 2], b[:, 3], layout.sizes[u][1])):
            centres = np.unique((lo + hi) / 2)
            gaps = np.diff(centres)
            step = float(gaps.min()) if gaps.size else float(np.median(hi - lo + 1))
            steps.append((step, max(int(np.ceil(size / step - 1e-6)), int(((lo + hi) / 2 // step).max()) + 1)))
        out[int(u)] = (steps[0][0], steps[1][0], steps[0][1], steps[1][1])
    return out


def _cells(prov: Provenance, grids: dict[int, tuple[float, float, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    rows = np.full(prov.unit.shape, -1, dtype=np.int64)
    cols = np.full(prov.unit.shape, -1, dtype=np.int64)
    for u, (sy, sx, _, _) in grids.items():
        at = prov.unit == u
        rows[at] = ((prov.box[..., 0][at] + prov.box[..., 1][at]) / 2 // sy).astype(np.int64)
        cols[at] = ((prov.box[..., 2][at] + prov.box[..., 3][at]) / 2 // sx).astype(np.int64)
    return rows, cols


def unit_images(pixels: torch.Tensor, grid_thw: Any, vision_config: Any, processor: Any) -> list[np.ndarray]:
    """``uint8 [H, W, 3]`` images of the units of ``pixels`` (images or tiles), in the tensor's order.

    Args:
        pixels: ``[..., C, H, W]`` pixels, or flattened patches with ``grid_thw``.
        grid_thw: ``image_grid_thw`` for flattened patches (else ``None``).
        vision_config: the vision config (patch and merge sizes of flattened patches).
        processor: the processor, whose mean and std undo the normalisation.
    """
    if pixels.ndim >= 4:
        return images_from_pixels(pixels.reshape(-1, *pixels.shape[-3:]), processor)
    from mmviz.capture.layouts.qwen2_vl import images_from_patches

    return images_from_patches(pixels, torch.as_tensor(grid_thw).reshape(-1, 3), vision_config, processor)


@dataclass
class _Units:
    """The units of the pixels (images or tiles): their images, boxes on their source image, placeholder ids."""

    images: list[np.ndarray]
    boxes: dict[int, Box]
    placeholders: set[int]

    def placed(self, order: list[int]) -> tuple[Box, ...]:
        """Tile boxes of ``order``'s units, sources renumbered by appearance.

        Empty unless every unit is placed and some unit is a tile (not a whole image).
        """
        boxes = [self.boxes.get(u) for u in order]
        if not boxes or any(b is None for b in boxes) or all(b[1:] == (0.0, 0.0, 1.0, 1.0) for b in boxes if b):
            return ()
        sources = {s: i for i, s in enumerate(dict.fromkeys(b[0] for b in boxes if b))}
        return tuple((sources[b[0]], *b[1:]) for b in boxes if b)


def _image_token_ids(config: Any) -> set[int]:
    ids = set()
    for cfg in (config, getattr(config, "text_config", None)):
        for name in ("image_token_id", "image_token_index", "image_token", "img_token_id"):
            value = getattr(cfg, name, None) if cfg is not None else None
            if isinstance(value, int):
                ids.add(value)
    return ids


def derived_layout(ctx: LayoutContext) -> bool:
    """Lays out every recorded stack from the pixels that reach its positions (see the module docstring).

    Returns:
        Whether any position was found to depend on the pixels (``False``: nothing was changed).
    """
    pixel_key = next((k for k in PIXEL_INPUTS if k in ctx.inputs), None)
    if pixel_key is None or not ctx.shapes:
        return False
    merge = int(getattr(ctx.vision_config(), "spatial_merge_size", 2) or 2)
    traced = trace_pixels(ctx.model, forward_inputs(ctx.model, ctx.inputs), ctx.shapes, pixel_key, merge)
    if traced is None:
        return False
    provenance, layout = traced
    pixels = ctx.inputs[pixel_key]
    images = unit_images(pixels, ctx.inputs.get("image_grid_thw"), ctx.vision_config(), ctx.processor)
    # the prompt's tokens only: generated tokens are no markers of the prompt's tiles
    texts = [[w for w, new in zip(t.tokens, t.generated) if not new] for t in ctx.tables.get("text", [])] or None
    boxes = tile_boxes(ctx.config, {**ctx.inputs, pixel_key: pixels}, texts, ctx.processor)
    units = _Units(images, boxes, _image_token_ids(ctx.config))
    prompt = ctx.inputs["input_ids"].shape[-1] if "input_ids" in ctx.inputs else -1
    text_done = False
    # query sides first: the encoder of an encoder-decoder edits the text, its decoder's cross-attention keys reuse it
    for (group, side), prov in sorted(provenance.items(), key=lambda item: (item[0][1] != "query", item[0])):
        if not prov.depends.any():
            continue
        grids = unit_grids(prov, layout)
        rows, cols = _cells(prov, grids)
        text = ctx.tables.get("text")
        batch, length = prov.depends.shape
        if text is not None and len(text) == batch and length == prompt and (side == "key" or not text_done):
            if not text_done:
                ctx.tables["text"] = [_labelled(tab, prov, rows, cols, b, grids, units) for b, tab in enumerate(text)]
                text_done = True
            continue  # keys over the laid-out text are matched to it by length
        if length != ctx.shapes[group][1 if side == "query" else 2]:
            continue  # e.g. generate called a sub-model's generate: the recorded sequence is longer
        if not (prov.unit >= 0).any():
            continue  # every position mixes the image: attention of its own that identity cannot switch off
        name = f"{group}.pixels" if side == "query" else f"{group}.keys"
        inserted = text is not None and len(text) == batch and (~prov.depends).sum(axis=1).tolist() == [prompt] * batch
        tables = []
        for b in range(batch):
            base = _with_text(text[b], prov.depends[b]) if inserted and text is not None else _blank(prov.unit[b])
            tables.append(_labelled(base, prov, rows, cols, b, grids, units))
        ctx.tables[name] = tables
        q_name, k_name = ctx.module_tables.get(group, (None, None))
        if side == "query":
            ctx.module_tables[group] = (name, k_name if k_name is not None and "cross" in group else name)
        else:
            ctx.module_tables[group] = (q_name or _query_table(ctx, group), name)
    return True


def _query_table(ctx: LayoutContext, group: str) -> str:
    """The queries of a stack whose keys hold the image: the text (a decoder's), or learned queries (a resampler)."""
    batch, q_len, _ = ctx.shapes[group]
    for name in ("decoder", "text") if "decoder" in group else ("text", "decoder"):
        text = ctx.tables.get(name)
        if text is not None and len(text) == batch and all(len(t) == q_len for t in text):
            return name
    name = f"{group}.queries"
    queries = TokenTable.build([f"<query {k}>" for k in range(q_len)], kind=["special"] * q_len)
    ctx.tables[name] = [queries] * batch
    return name


def _blank(unit: np.ndarray) -> TokenTable:
    """A table for a tower's own sequence: positions the pixels do not reach are special.

    One right before the first patch of an image or tile is its ``[CLS]``; others (registers, padding)
    are named by position.
    """
    texts = []
    for p in range(unit.size):
        opens = p + 1 < unit.size and unit[p + 1] >= 0 and unit[p] < 0 and not (unit[:p] == unit[p + 1]).any()
        texts.append("[CLS]" if opens else f"[{p}]")
    return TokenTable.build(texts, kind=["special"] * unit.size)


def _with_text(text: TokenTable, depends: np.ndarray) -> TokenTable:
    """The text's positions in order, with blank slots where image features were inserted."""
    slots = np.flatnonzero(depends)
    rows = np.arange(depends.size) - np.searchsorted(slots, np.arange(depends.size), side="right")
    rows = np.where(depends, 0, rows)
    picked = text.select(rows)
    kind = np.where(depends, "special", picked.kind)
    return TokenTable(
        text=picked.text, kind=kind, word_id=picked.word_id, image_index=picked.image_index,
        patch_row=picked.patch_row, patch_col=picked.patch_col, token_id=np.where(depends, -1, picked.token_id),
        generated=picked.generated & ~depends, images=(), grids=(),
    )  # fmt: skip


def _labelled(
    tab: TokenTable,
    prov: Provenance,
    rows: np.ndarray,
    cols: np.ndarray,
    b: int,
    grids: dict[int, tuple[float, float, int, int]],
    units: _Units,
) -> TokenTable:
    """``tab`` with the first ``positions`` of batch item ``b`` labelled from the provenance."""
    n = prov.depends.shape[1]
    kind, text = tab.kind.copy(), tab.text.astype(object)
    index, prow, pcol = tab.image_index.copy(), tab.patch_row.copy(), tab.patch_col.copy()
    owned = np.flatnonzero(prov.unit[b] >= 0)
    order = list(dict.fromkeys(prov.unit[b][owned].tolist()))
    local = {u: i for i, u in enumerate(order)}
    for p in owned:
        u = int(prov.unit[b, p])
        kind[p], index[p], prow[p], pcol[p] = "image", local[u], rows[b, p], cols[b, p]
        text[p] = f"<img{local[u]} {rows[b, p]},{cols[b, p]}>"
    mixed = np.flatnonzero(prov.depends[b] & (prov.unit[b] < 0))
    for k, p in enumerate(mixed):
        kind[p], text[p] = "special", f"<query {k}>"
    dep = np.flatnonzero(prov.depends[b])
    trailing = int(dep[-1]) + 1 if dep.size else n
    while trailing < n and int(tab.token_id[trailing]) in units.placeholders:
        trailing += 1
    if dep.size:
        for pos in range(int(dep[0]) + 1, trailing):
            if prov.depends[b, pos] or int(tab.token_id[pos]) not in units.placeholders:
                continue
            before = owned[owned < pos]
            last = int(before[-1]) if before.size else -1
            newline = last >= 0 and pcol[last] == grids[int(prov.unit[b, last])][3] - 1
            kind[pos], text[pos] = "special", "<image newline>" if newline else "<image separator>"
    image_positions = np.flatnonzero(kind == "image")
    return TokenTable(
        text=text.astype(str), kind=kind, word_id=_words_after_images(tab.word_id, image_positions),
        image_index=index, patch_row=prow, patch_col=pcol, token_id=tab.token_id, generated=tab.generated,
        images=tuple(units.images[u] for u in order), grids=tuple(grids[u][2:] for u in order),
        tiles=units.placed(order),
    )  # fmt: skip
