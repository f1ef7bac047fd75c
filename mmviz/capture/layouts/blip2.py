"""BLIP-2 (and InstructBLIP): a Q-Former between the vision tower and the language model.

Three recorded stacks meet here:

* ``vision_model``: the ViT, ``[CLS] + (S/P)²`` patches row-major (batch axis = images);
* ``qformer`` (self-attention over the ``num_query_tokens`` learned queries) and
  ``qformer.cross_attention`` (queries × ``[CLS] + patches``), batch axis = images;
* ``language_model``: the query outputs sit at the ``image_token_index`` placeholders (or are prepended
  to the text when the config has none). They are **not spatial**: each is a learned query, so the
  language model's table marks them ``special`` with texts ``<query k>``.

``image_map`` chains language model → query → patch to get an image-space map of what a text
position attends to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mmviz.capture.layouts import LayoutContext, register_layout
from mmviz.data import TokenTable

__all__ = ["QUERY_TABLE", "blip2", "image_map", "query_positions"]

QUERY_TABLE = "qformer.queries"
"""Name of the table of the Q-Former's learned queries."""


def _query_texts(n: int) -> list[str]:
    return [f"<query {k}>" for k in range(n)]


def query_positions(table: TokenTable) -> np.ndarray:
    """Positions of the Q-Former query tokens in a language-model table, in query order."""
    return np.flatnonzero(np.char.startswith(table.text.astype(str), "<query "))


@register_layout("blip-2", "instructblip")
def blip2(ctx: LayoutContext) -> None:
    """Lays out the vision tower, the Q-Former's queries and the query tokens of the language model."""
    n_query = int(getattr(ctx.config, "num_query_tokens", 0) or 0)
    grid = ctx.vision_grid()
    if grid is not None:
        ctx.add_vision_tower("vision_model", grid)
    tower = ctx.module_tables.get("vision_model", (None, None))[0]
    for group in ("qformer", "qformer.cross_attention"):
        if group not in ctx.shapes:
            continue
        batch, q_len, k_len = ctx.shapes[group]
        if q_len != n_query:
            continue
        ctx.tables.setdefault(
            QUERY_TABLE, [TokenTable.build(_query_texts(n_query), kind=["special"] * n_query)] * batch
        )
        key = QUERY_TABLE
        if group.endswith("cross_attention"):
            if tower is not None and len(ctx.tables[tower][0]) == k_len:
                key = tower
            elif grid is not None and k_len >= grid[0] * grid[1]:
                key = f"{group}.patches"
                ctx.tables[key] = _patch_tables(ctx, k_len, grid, batch)
            else:
                continue
        ctx.module_tables[group] = (QUERY_TABLE, key)
    if "text" in ctx.tables and n_query:
        ctx.tables["text"] = [_with_queries(ctx, t, n_query) for t in ctx.tables["text"]]


def _patch_tables(ctx: LayoutContext, length: int, grid: tuple[int, int], batch: int) -> list[TokenTable]:
    from mmviz._hf.tokens import patch_table

    return [patch_table(length, grid, ctx.image(i)) for i in range(batch)]


def _with_queries(ctx: LayoutContext, table: TokenTable, n_query: int) -> TokenTable:
    image_token = getattr(ctx.config, "image_token_id", None)
    if image_token is None:
        image_token = getattr(ctx.config, "image_token_index", None)
    lm_len = ctx.shapes.get("language_model", (0, len(table), 0))[1]
    if image_token is not None and (table.token_id == int(image_token)).any():
        positions = np.flatnonzero(table.token_id == int(image_token))
        text, kind = table.text.copy().astype(object), table.kind.copy()
        text[positions] = [_query_texts(n_query)[k % n_query] for k in range(len(positions))]
        kind[positions] = "special"
        return TokenTable(
            text=text.astype(str), kind=kind, word_id=table.word_id, image_index=table.image_index,
            patch_row=table.patch_row, patch_col=table.patch_col, token_id=table.token_id,
            generated=table.generated, images=table.images, grids=table.grids,
        )  # fmt: skip
    if lm_len == len(table) + n_query:  # queries prepended to the text embeddings
        return TokenTable.build(_query_texts(n_query), kind=["special"] * n_query).concat(table)
    return table


def image_map(
    trace: Any,
    query: int | Sequence[int] = -1,
    batch_index: int = 0,
    lm_layers: int | Sequence[int] | None = None,
    cross_layers: int | Sequence[int] | None = None,
    normalize: bool = False,
) -> np.ndarray:
    """Image-space map of what language-model positions attend to, through the Q-Former.

    Chains the language model's attention from ``query`` to the query tokens with the Q-Former's
    cross-attention from each query to the patches: ``map[r, c] = Σ_k a[k] · x[k, (r, c)]``, where ``a``
    is the (layer- and head-mean) attention of the chosen position(s) to query token ``k`` and ``x`` the
    (layer- and head-mean) cross-attention of query ``k`` to patch ``(r, c)``. The Q-Former's own
    self-attention between queries is not traced through.

    Args:
        trace: an ``AttentionTrace`` of a BLIP-2 forward or ``generate`` call that
            recorded ``language_model`` and ``qformer.cross_attention``.
        query: language-model position(s) whose attention is mapped (negative counts from the end);
            several positions are averaged.
        batch_index: batch item (BLIP-2 has one image per item, so this also picks the image).
        lm_layers: language-model layers to average (default: all captured).
        cross_layers: cross-attention layers to average (default: all captured).
        normalize: divide the map by its sum (else it sums to the attention mass on the query tokens).

    Returns:
        ``[rows, cols]`` float32 map over the image's patch grid.
    """
    lm_table = trace.tokens("language_model", batch_index, "key")
    slots = query_positions(lm_table)
    if slots.size == 0:
        raise ValueError("the language model's table has no <query k> tokens; was this trace captured from BLIP-2?")
    lm = trace.probs("language_model", batch_index, layers=lm_layers).mean(axis=(0, 1))
    rows = np.atleast_1d(np.asarray(query, dtype=np.int64)) % lm.shape[0]
    weights = lm[rows][:, slots].mean(axis=0)
    cross = trace.probs("qformer.cross_attention", batch_index, layers=cross_layers).mean(axis=(0, 1))
    n_query = cross.shape[0]
    per_query = np.zeros(n_query, dtype=np.float64)
    np.add.at(per_query, np.arange(slots.size) % n_query, weights)
    patches = trace.tokens("qformer.cross_attention", batch_index, "key")
    if not patches.images:
        raise ValueError("the Q-Former's key table has no image grid (pixel_values were not seen)")
    grid = patches.image_positions(0)
    values = per_query @ cross.astype(np.float64)
    out = np.where(grid >= 0, values[np.maximum(grid, 0)], 0.0)
    if normalize and out.sum() > 0:
        out = out / out.sum()
    return out.astype(np.float32)
