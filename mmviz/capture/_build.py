"""Turns one recorded run into an :class:`~mmviz.data.AttentionTrace`: arrays, token tables, layout."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmviz.capture._recorder import Run, Target, assemble_dense
from mmviz.capture._tokens import images_from_pixels, patch_table, position_table, text_table, tokenizer_of
from mmviz.capture.layouts import LayoutContext, resolve_layout
from mmviz.data import AttentionTrace, ModuleAttention, QKAttention, TokenTable


def build_trace(run: Run, model: torch.nn.Module, processor: Any, heads: list[int] | None = None) -> AttentionTrace:
    """Assembles the arrays of every recorded stack and lays out the positions they refer to.

    Args:
        run: what was recorded during one forward or ``generate`` call.
        model: the captured model.
        processor: its processor or tokenizer (or ``None``).
        heads: the model head indices that were kept (``None``: all).
    """
    arrays: dict[str, tuple[list[int], Any]] = {}
    stacked: Any
    packed = _packed_items(run)
    groups = sorted({t.group for t in [*run.dense, *run.qk]})
    for group in groups:
        if any(t.group == group for t in run.dense):
            targets = sorted((t for t in run.dense if t.group == group), key=lambda t: t.layer)
            layers, per_layer = _applications(targets, run, packed)
            stacked = _stack_dense(per_layer, group)
        else:
            targets = sorted((t for t in run.qk if t.group == group), key=lambda t: t.layer)
            layers = [t.layer for t in targets]
            stacked = _stack_qk([_join_chunks_qk(run.qk[t], packed) for t in targets])
        arrays[group] = (layers, stacked)

    shapes = {g: _shape(a) for g, (_, a) in arrays.items()}
    ctx = _context(run, model, processor, shapes)
    resolve_layout(ctx)
    _fill_unassigned(ctx)

    modules = {}
    for group, (layers, stacked) in arrays.items():
        q_name, k_name = ctx.module_tables[group]
        kept = tuple(heads) if heads is not None else tuple(range(stacked.shape[2]))
        dense, qk = (stacked, None) if isinstance(stacked, np.ndarray) else (None, stacked)
        if qk is not None:
            qk.head_index = np.asarray(kept, dtype=np.int64)
        modules[group] = ModuleAttention(group, tuple(layers), kept, q_name, k_name, dense=dense, qk=qk)
    used = {n for g in arrays for n in ctx.module_tables[g]}
    info = {
        "model": type(model).__name__,
        "model_type": getattr(model.config, "model_type", ""),
        "generate": run.generate,
    }
    return AttentionTrace(modules, {n: t for n, t in ctx.tables.items() if n in used}, info)


def _shape(stacked: Any) -> tuple[int, int, int]:
    b, _, _, q, k = stacked.shape
    return int(b), int(q), int(k)


def _packed_items(run: Run) -> int | None:
    """How many images the inputs pack into one sequence (``image_grid_thw`` rows), if any."""
    for call in run.calls:
        grid = call.get("image_grid_thw")
        if isinstance(grid, torch.Tensor) and grid.ndim == 2:
            return int(grid.shape[0])
    return None


def _chunked(lengths: list[tuple[int, int]], packed: int | None = None) -> bool:
    """Whether several calls of one layer are independent chunks of one sequence, not decoding steps.

    Some attention modules call the attention function once per chunk (Qwen2-VL's vision tower runs
    once per image through ``cu_seqlens``): each call sees its own keys only (key length = query length),
    while a decoding step with a KV cache sees every earlier key as well. Chunks of equal length are
    told apart from a module applied several times (shared layers) by the number of packed images.
    """
    if len(lengths) < 2 or any(k != q for q, k in lengths):
        return False
    if len(set(lengths)) == 1:
        return packed == len(lengths)
    # decoding without a cache recomputes the whole, one token longer, sequence at every step
    return any(lengths[i + 1][0] != lengths[i][0] + 1 for i in range(len(lengths) - 1))


def _block_diagonal(steps: list[torch.Tensor]) -> np.ndarray:
    b, h = steps[0].shape[:2]
    n = sum(s.shape[2] for s in steps)
    out = np.zeros((b, h, n, n), dtype=np.float16)
    start = 0
    for s in steps:
        end = start + s.shape[2]
        out[:, :, start:end, start:end] = s.numpy()
        start = end
    return out


def _split_calls(steps: list[torch.Tensor], packed: int | None, generate: bool) -> list[np.ndarray]:
    """The arrays of the calls one attention module made during a run, one per application.

    * one call, or (outside generation) the same probabilities computed twice, as DiffLlama does for
      its two value halves: one array;
    * independent chunks of one sequence (see :func:`_chunked`): one block-diagonal array;
    * outside generation, calls of equal shape: the module was applied several times (ALBERT's shared
      layer, recurrent blocks), one array each;
    * otherwise decoding steps, joined into one causal matrix.
    """
    shapes = [(int(s.shape[2]), int(s.shape[3])) for s in steps]
    same_shape = len({s.shape for s in steps}) == 1
    if len(steps) == 1 or (same_shape and not generate and all(torch.equal(steps[0], s) for s in steps[1:])):
        return [steps[0].numpy()]
    if _chunked(shapes, packed):
        return [_block_diagonal(steps)]
    if same_shape and not generate:
        return [s.numpy() for s in steps]
    return [assemble_dense(steps)]


def _applications(targets: list[Target], run: Run, packed: int | None) -> tuple[list[int], list[np.ndarray]]:
    """Layer labels and arrays of one stack; a module applied ``n`` times yields ``n`` layers.

    Repeated applications are numbered in the order a loop over the stack would run them: application
    ``r`` of layer ``l`` becomes layer ``r · (last layer + 1) + l``.
    """
    split = [_split_calls(run.dense[t], packed, run.generate) for t in targets]
    if all(len(a) == 1 for a in split):
        return [t.layer for t in targets], [a[0] for a in split]
    span = max(t.layer for t in targets) + 1
    labelled = sorted((r * span + t.layer, arr) for t, arrays in zip(targets, split) for r, arr in enumerate(arrays))
    return [label for label, _ in labelled], [arr for _, arr in labelled]


def _join_chunks_qk(steps: list[dict[str, Any]], packed: int | None = None) -> list[dict[str, Any]]:
    """Turns independent chunk calls (see :func:`_chunked`) into one call with a block-diagonal mask."""
    if not _chunked([(s["query"].shape[2], s["key"].shape[2]) for s in steps], packed):
        return steps
    b = steps[0]["query"].shape[0]
    n = sum(s["query"].shape[2] for s in steps)
    mask = torch.zeros(b, n, n, dtype=torch.bool)
    start = 0
    for s in steps:
        q = s["query"].shape[2]
        block = s["mask"] if s["mask"] is not None else torch.ones(b, q, q, dtype=torch.bool)
        if s["mask"] is None and s["causal"]:
            block = block.tril()
        mask[:, start : start + q, start : start + q] = block
        start += q
    joined = dict(steps[0])
    joined.update(
        query=torch.cat([s["query"] for s in steps], dim=2),
        key=torch.cat([s["key"] for s in steps], dim=2),
        mask=mask,
        causal=False,
    )
    return [joined]


def _stack_dense(per_layer: list[np.ndarray], group: str) -> np.ndarray:
    shapes = {p.shape for p in per_layer}
    if len(shapes) != 1:
        raise ValueError(f"layers of {group!r} recorded different shapes {sorted(shapes)}; capture one call at a time")
    return np.stack(per_layer, axis=1)


def _stack_qk(per_layer: list[list[dict[str, Any]]]) -> QKAttention:
    """Joins the calls of each layer (generation steps) and stacks layers into one QKAttention."""
    queries, keys, masks, scalings = [], [], [], []
    single = len(per_layer[0]) == 1
    any_mask = not single or any(s["mask"] is not None for steps in per_layer for s in steps)
    for steps in per_layer:
        queries.append(torch.cat([s["query"] for s in steps], dim=2))
        keys.append(steps[-1]["key"])
        scalings.append(steps[0]["scaling"])
        if any_mask:
            n_k = steps[-1]["key"].shape[2]
            rows = []
            for s in steps:
                b, q, k = s["query"].shape[0], s["query"].shape[2], s["key"].shape[2]
                m = s["mask"]
                if m is None:
                    full = torch.ones(q, k, dtype=torch.bool)
                    m = (full.tril(k - q) if s["causal"] else full).expand(b, q, k)
                rows.append(torch.nn.functional.pad(m, (0, n_k - k)))
            masks.append(torch.cat(rows, dim=1))
    first = per_layer[0][0]
    n_heads = first["heads"]
    kv_heads = first["key"].shape[1]
    query = torch.stack(queries, dim=1).numpy()
    mask = np.packbits(masks[0].numpy(), axis=-1) if any_mask else None
    head_index = np.arange(query.shape[2])
    return QKAttention(
        query=query,
        key=torch.stack(keys, dim=1).numpy(),
        scaling=np.asarray(scalings, dtype=np.float64),
        mask=mask,
        causal=bool(first["causal"]) and not any_mask,
        head_index=head_index,
        group=max(n_heads // kv_heads, 1),
        softcap=first["softcap"],
    )


def _context(
    run: Run, model: torch.nn.Module, processor: Any, shapes: dict[str, tuple[int, int, int]]
) -> LayoutContext:
    tokenizer = tokenizer_of(processor)
    config = model.config
    first = dict(run.calls[0]) if run.calls else {}
    forward_calls = run.calls[1:] if run.generate else run.calls
    for call in forward_calls[:1]:
        for k, v in call.items():
            first.setdefault(k, v)
    tables: dict[str, list[TokenTable]] = {}
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    main_key = "decoder_input_ids" if encoder_decoder else "input_ids"
    step_ids = [c[main_key] for c in forward_calls if main_key in c]
    ctx = LayoutContext(
        model=model, config=config, processor=processor, tokenizer=tokenizer, inputs=first, shapes=shapes, tables=tables
    )
    if encoder_decoder:
        if "input_ids" in first:
            tables["text"] = _text_tables([first["input_ids"]], first.get("attention_mask"), tokenizer)
        if step_ids:
            tables["decoder"] = _text_tables(step_ids, None, tokenizer, generated=run.generate)
    elif step_ids:
        mask = next(
            (c["attention_mask"] for c in reversed(forward_calls) if "attention_mask" in c), first.get("attention_mask")
        )
        tables["text"] = _text_tables(step_ids, mask, tokenizer, generated=run.generate)
    if "pixel_values" in first and first["pixel_values"].ndim in (4, 5):
        ctx.images = images_from_pixels(first["pixel_values"], processor)
    return ctx


def _text_tables(
    steps: list[torch.Tensor], mask: torch.Tensor | None, tokenizer: Any, generated: bool = False
) -> list[TokenTable]:
    ids = torch.cat(steps, dim=1)
    prompt = steps[0].shape[1]
    out = []
    for b in range(ids.shape[0]):
        m = mask[b, : ids.shape[1]] if mask is not None and mask.shape[1] >= ids.shape[1] else None
        out.append(text_table(ids[b], m, tokenizer, generated_from=prompt if generated and len(steps) > 1 else None))
    return out


def _fill_unassigned(ctx: LayoutContext) -> None:
    """Gives every stack without a layout a query and key table: text by length, vision grid, or positions."""
    for group, (batch, q_len, k_len) in ctx.shapes.items():
        if group in ctx.module_tables:
            continue
        names = []
        for side, length in (("query", q_len), ("key", k_len)):
            names.append(_table_for(ctx, group, side, batch, length))
        ctx.module_tables[group] = (names[0], names[1])


def _table_for(ctx: LayoutContext, group: str, side: str, batch: int, length: int) -> str:
    visual = "vision" in group or "visual" in group
    grid = ctx.vision_grid()
    if visual and ctx.images and len(ctx.images) == batch and grid is not None and grid[0] * grid[1] <= length:
        name = f"{group}.patches"
        ctx.tables[name] = [patch_table(length, grid, img) for img in ctx.images]
        return name
    decoder_side = group.startswith("decoder") and not (side == "key" and "cross" in group)
    preferred = ["decoder", "text"] if decoder_side else ["text", "decoder"]
    for name in [*preferred, *ctx.tables]:
        tabs = ctx.tables.get(name)
        if tabs is not None and len(tabs) == batch and all(len(t) == length for t in tabs):
            return name
    name = f"{group}.{length}"
    ctx.tables.setdefault(name, [position_table(length) for _ in range(batch)])
    return name


__all__ = ["Target", "build_trace"]
