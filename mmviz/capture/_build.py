"""Turns one recorded run into an ``AttentionTrace``: arrays, token tables, layout."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmviz._hf.tokens import images_from_pixels, patch_table, position_table, text_table, tokenizer_of
from mmviz.capture._recorder import Run, Target, assemble_dense
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
    groups = sorted({t.group for t in [*run.dense, *run.qk]})
    for group in groups:
        if any(t.group == group for t in run.dense):
            targets = sorted((t for t in run.dense if t.group == group), key=lambda t: t.layer)
            buffer = run.buffers.get(group)
            if buffer is not None and run.slots[group] == targets and buffer.shape[1] == len(targets):
                if all(len(run.dense[t]) == 1 for t in targets):  # written in place, one call per layer
                    arrays[group] = ([t.layer for t in targets], buffer)
                    continue
            layers, per_layer = _applications(targets, run)
            for name, run_layers, run_arrays in _shape_runs(group, layers, per_layer):
                arrays[name] = (run_layers, _stack_dense(run_arrays, name))
        else:
            targets = sorted((t for t in run.qk if t.group == group), key=lambda t: t.layer)
            layers = [t.layer for t in targets]
            stacked = _stack_qk([_join_pieces_qk(run.qk[t]) for t in targets])
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


def _pieces_joined(steps: list[torch.Tensor], pieces: list[bool]) -> list[torch.Tensor]:
    """Joins the calls that are pieces of one sequence (``Recorder.continues``) into block-diagonal calls.

    A module that splits its sequence into pieces (Qwen2-VL's images, Qwen2.5-VL's windows) attends within
    each piece only: the joined call holds each piece's probabilities on the diagonal and zeros elsewhere.
    """
    if len(pieces) != len(steps) or not any(pieces):
        return steps
    groups: list[list[torch.Tensor]] = []
    for step, piece in zip(steps, pieces):
        if piece and groups and groups[-1][-1].shape[:2] == step.shape[:2]:
            groups[-1].append(step)
        else:
            groups.append([step])
    return [g[0] if len(g) == 1 else torch.from_numpy(_block_diagonal(g)) for g in groups]


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


def _split_calls(steps: list[torch.Tensor], pieces: list[bool], forwards: int | None) -> list[np.ndarray]:
    """The arrays of the calls one attention module made during a run, one per application.

    * the pieces of one sequence (see ``_pieces_joined``) are first joined into one block-diagonal call;
    * one call: one array;
    * outside generation (``forwards`` is ``None``), calls of equal shape: the module was applied several
      times (ALBERT's shared layer, recurrent blocks), one array each;
    * during generation, a module applied ``a`` times per forward call (looped blocks such as HRM's, each
      application with its own cache) makes ``a`` calls per decoding step: call ``i`` belongs to application
      ``i % a``, and each application's steps are joined into one causal matrix (``forwards``: the forward
      calls of the captured model; 0 where ``generate`` called a sub-model only, taken as one application).

    (The same probabilities computed twice in one call, as DiffLlama does for its two value halves, are
    stored once by the recorder.)
    """
    steps = _pieces_joined(steps, pieces)
    if len(steps) == 1:
        return [steps[0].numpy()]
    if forwards is None:
        if len({s.shape for s in steps}) == 1 or len({s.shape[:2] for s in steps}) > 1:
            return [s.numpy() for s in steps]  # applications (of other batch sizes: split by shape later)
        return [assemble_dense(steps)]
    per_forward = len(steps) // forwards if forwards and len(steps) % forwards == 0 else 1
    return [assemble_dense(steps[a::per_forward]) for a in range(per_forward)]


def _applications(targets: list[Target], run: Run) -> tuple[list[int], list[np.ndarray]]:
    """Layer labels and arrays of one stack; a module applied ``n`` times yields ``n`` layers.

    Repeated applications are numbered in the order a loop over the stack would run them: application
    ``r`` of layer ``l`` becomes layer ``r · (last layer + 1) + l``.
    """
    forwards = len(run.calls) - 1 if run.generate else None  # 0: generate never called the model itself
    split = [_split_calls(run.dense[t], run.pieces.get(t, []), forwards) for t in targets]
    if all(len(a) == 1 for a in split):
        return [t.layer for t in targets], [a[0] for a in split]
    span = max(t.layer for t in targets) + 1
    labelled = sorted((r * span + t.layer, arr) for t, arrays in zip(targets, split) for r, arr in enumerate(arrays))
    return [label for label, _ in labelled], [arr for _, arr in labelled]


def _join_pieces_qk(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Turns the pieces of one sequence (``Recorder.continues``) into one call with a block-diagonal mask."""
    if len(steps) < 2 or not all(s.get("piece") for s in steps[1:]):
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


def _shape_runs(
    group: str, layers: list[int], per_layer: list[np.ndarray]
) -> list[tuple[str, list[int], list[np.ndarray]]]:
    """Splits a stack whose layers have different shapes into runs of equal shape.

    Hierarchical encoders change heads, windows or sequence length from block to block (Hiera, SAM 2);
    each run becomes a stack of its own, named after its layers: ``backbone.0-1``, ``backbone.2``, ...
    """
    runs: list[tuple[list[int], list[np.ndarray]]] = []
    for layer, arr in zip(layers, per_layer):
        if runs and runs[-1][1][0].shape == arr.shape:
            runs[-1][0].append(layer)
            runs[-1][1].append(arr)
        else:
            runs.append(([layer], [arr]))
    if len(runs) == 1:
        return [(group, layers, per_layer)]
    named = []
    for run_layers, arrays in runs:
        span = f"{run_layers[0]}" if len(run_layers) == 1 else f"{run_layers[0]}-{run_layers[-1]}"
        named.append((f"{group}.{span}", run_layers, arrays))
    return named


def _stack_dense(per_layer: list[np.ndarray], group: str) -> np.ndarray:
    shapes = {p.shape for p in per_layer}
    if len(shapes) != 1:
        raise ValueError(f"layers of {group!r} recorded different shapes {sorted(shapes)}; capture one call at a time")
    return np.stack(per_layer, axis=1)


def _stack_qk(per_layer: list[list[dict[str, Any]]]) -> QKAttention:
    """Joins the calls of each layer (generation steps) and stacks layers into one QKAttention.

    Queries and keys stay in the model's dtype (bfloat16, which numpy lacks, becomes float32). Layers
    whose calls are all causal (or single decoding rows) store no mask; otherwise the mask is packed
    to bits, a chunk of rows at a time, once for all layers when they share it.
    """
    first = per_layer[0][0]
    query = np.stack([_numpy(torch.cat([s["query"] for s in steps], dim=2)) for steps in per_layer], axis=1)
    key = np.stack([_numpy(_full_key(steps)) for steps in per_layer], axis=1)
    kinds = [_mask_kind(steps) for steps in per_layer]
    mask = None
    if any(k == "mask" for k in kinds) or len(set(kinds)) > 1:
        packed: list[np.ndarray] = []
        for steps in per_layer:
            same = next((p for p, other in zip(packed, per_layer) if _same_masks(steps, other)), None)
            packed.append(same if same is not None else _pack_mask(steps, key.shape[3]))
        if all(p is packed[0] or np.array_equal(p, packed[0]) for p in packed[1:]):
            mask = packed[0]
        else:
            mask = np.stack(packed, axis=1)
    n_heads, kv_heads = first["heads"], first["key"].shape[1]
    return QKAttention(
        query=query,
        key=key,
        scaling=np.asarray([steps[0]["scaling"] for steps in per_layer], dtype=np.float64),
        mask=mask,
        causal=mask is None and kinds[0] == "causal",
        head_index=np.arange(query.shape[2]),
        group=max(n_heads // kv_heads, 1),
        softcap=first["softcap"],
    )


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def _full_key(steps: list[dict[str, Any]]) -> torch.Tensor:
    """The last step's keys: the last full key tensor plus the new keys of the decoding steps after it."""
    base = max(i for i, s in enumerate(steps) if "key_new" not in s)
    parts = [steps[base]["key"], *(s["key_new"] for s in steps[base + 1 :])]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


def _mask_kind(steps: list[dict[str, Any]]) -> str:
    """``"causal"``, ``"full"`` (every query sees every key) or ``"mask"`` for the joined calls of one layer."""
    if any(s["mask"] is not None for s in steps):
        return "mask"
    if len(steps) == 1:
        return "causal" if steps[0]["causal"] else "full"
    n_k = steps[-1]["key"].shape[2]
    total_q = sum(s["query"].shape[2] for s in steps)
    row_end = 0
    for s in steps:
        q, k = s["query"].shape[2], s["key"].shape[2]
        row_end += q
        # a step is a piece of one causal matrix when its keys end where the causal diagonal puts them
        if not (s["causal"] or q == 1) or k - row_end != n_k - total_q:
            return "mask"
    return "causal"


def _same_masks(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Whether two layers' calls used the same mask tensors (layers of one type share the model's mask)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        mx, my = x["mask"], y["mask"]
        if (mx is None) != (my is None) or x["causal"] != y["causal"] or x["key"].shape != y["key"].shape:
            return False
        if mx is not None and (mx.data_ptr(), mx.shape, mx.stride()) != (my.data_ptr(), my.shape, my.stride()):
            return False
    return True


_PACK_ROWS = 1024


def _pack_mask(steps: list[dict[str, Any]], n_k: int) -> np.ndarray:
    """``[batch, query, ceil(n_k / 8)]`` bit-packed mask of the joined calls of one layer."""
    b = steps[0]["query"].shape[0]
    total_q = sum(s["query"].shape[2] for s in steps)
    out = np.zeros((b, total_q, (n_k + 7) // 8), dtype=np.uint8)
    row = 0
    for s in steps:
        q, k = s["query"].shape[2], s["key"].shape[2]
        m = s["mask"]
        for r in range(0, q, _PACK_ROWS):
            rows = slice(r, min(r + _PACK_ROWS, q))
            if m is not None:
                bits = m[:, rows].numpy()
            elif s["causal"]:
                bits = np.broadcast_to(
                    np.arange(k)[None, :] <= np.arange(rows.start, rows.stop)[:, None] + k - q,
                    (b, rows.stop - rows.start, k),
                )
            else:
                bits = np.ones((b, rows.stop - rows.start, k), dtype=bool)
            out[:, row + rows.start : row + rows.stop, : (k + 7) // 8] = np.packbits(bits, axis=-1)
        row += q
    return out


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
    if run.generate and not step_ids:
        step_ids = _generated_steps(first.get(main_key), run.sequences)
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
        fed = sum(s.shape[1] for s in step_ids)
        if mask is not None and mask.shape[1] < fed:  # generated tokens are never padding
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], fed - mask.shape[1])], dim=1)
        tables["text"] = _text_tables(step_ids, mask, tokenizer, generated=run.generate)
    elif run.generate and run.sequences is not None:
        _sub_model_decoder_text(ctx, run.sequences, first, shapes)
    if "decoder" not in tables and not run.generate and isinstance(first.get("decoder_input_ids"), torch.Tensor):
        # a decoder of a model that is not marked encoder-decoder (BLIP's question answering)
        tables["decoder"] = _text_tables([first["decoder_input_ids"]], first.get("decoder_attention_mask"), tokenizer)
    if "pixel_values" in first and first["pixel_values"].ndim in (4, 5):
        ctx.images = images_from_pixels(first["pixel_values"], processor)
    return ctx


def _sub_model_decoder_text(
    ctx: LayoutContext, sequences: torch.Tensor, first: dict[str, Any], shapes: dict[str, tuple[int, int, int]]
) -> None:
    """Text tables of a ``generate`` whose sub-model decoded a sequence that does not continue the prompt.

    BLIP's captioning drops the prompt's last token (``[SEP]``) before its text decoder generates; its
    question answering decodes an answer of its own. The prompt is then the ``"text"`` and the sequence
    fed to the decoder — the returned one without its last token, where some stack recorded that length —
    the ``"decoder"``, generated after the prefix it shares with the prompt. Without a prompt the fed
    sequence is the ``"text"``.
    """
    fed = sequences[:, :-1]
    if fed.ndim != 2 or fed.shape[1] == 0 or not any(q == fed.shape[1] for _, q, _ in shapes.values()):
        return
    prompt = first.get("input_ids")
    if not isinstance(prompt, torch.Tensor) or prompt.ndim != 2 or prompt.shape[0] != fed.shape[0]:
        ctx.tables["text"] = [text_table(row, None, ctx.tokenizer) for row in fed]
        return
    same = (prompt[:, : fed.shape[1]] == fed[:, : prompt.shape[1]]).all(dim=0).tolist()
    shared = next((i for i, s in enumerate(same) if not s), len(same))
    ctx.tables["text"] = _text_tables([prompt], first.get("attention_mask"), ctx.tokenizer)
    ctx.tables["decoder"] = [text_table(row, None, ctx.tokenizer, generated_from=shared) for row in fed]


def _generated_steps(prompt: torch.Tensor | None, sequences: torch.Tensor | None) -> list[torch.Tensor]:
    """The token ids a ``generate`` call fed its model when the captured model's own forward never ran.

    Some models' ``generate`` runs a sub-model's ``generate`` (Kosmos-2 its text model's), so no forward
    call of the captured model shows the ids. They are then the prompt and the tokens ``generate``
    returned after it, but the last one (it was never fed back). Returns no steps when either is missing.
    """
    if prompt is None or sequences is None or prompt.ndim != 2 or sequences.ndim != 2:
        return []
    if sequences.shape[1] <= prompt.shape[1] or not torch.equal(sequences[:, : prompt.shape[1]], prompt):
        return []  # generate returned only the new tokens: their ids follow the prompt
    return [prompt, sequences[:, prompt.shape[1] : -1]]


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
    decoder_side = any("decoder" in part.split("_") for part in group.split(".")) and not (
        side == "key" and "cross" in group
    )
    preferred = ["decoder", "text"] if decoder_side else ["text", "decoder"]
    for name in [*preferred, *ctx.tables]:
        tabs = ctx.tables.get(name)
        if tabs is not None and len(tabs) == batch and all(len(t) == length for t in tabs):
            return name
    name = f"{group}.{length}"
    ctx.tables.setdefault(name, [position_table(length) for _ in range(batch)])
    return name


__all__ = ["Target", "build_trace"]
