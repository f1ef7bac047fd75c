"""The logit lens of language models, masked LMs and VLMs: every layer's residual stream read out as logits.

Hidden state ``l`` (0: the first block's input; ``l``: block ``l - 1``'s output) at every position goes through
the model's own final norm and output embedding (``mmviz._hf.residual.Readout``), so the last state's lens is
the model's own output distribution. The readout runs in chunks of rows (``_stats.chunked_stats``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mmviz._hf.residual import Readout, evaluating, find_readout, record_residual
from mmviz.capture import has_images, token_tables
from mmviz.data import TokenTable
from mmviz.data.lens import LensTrace
from mmviz.errors import MMVizError
from mmviz.lens._stats import chunked_stats

__all__ = ["lens_trace", "logit_lens_of_lm", "resolve_layers", "resolve_positions"]

CHECK_TOLERANCE = 1e-3
"""Largest gap, relative to the largest logit, between the last state's lens and the model's own logits."""


def resolve_layers(layers: Sequence[int] | None, n_states: int) -> list[int]:
    """Hidden-state indices from ``layers`` (``None``: all; negative counts from the last state)."""
    if layers is None:
        return list(range(n_states))
    out = []
    for layer in layers:
        index = int(layer) + n_states if int(layer) < 0 else int(layer)
        if not 0 <= index < n_states:
            raise ValueError(
                f"layer {layer} does not exist: this model has hidden states 0 (the first block's input) … "
                f"{n_states - 1} (the last block's output); negative layers count from the end"
            )
        out.append(index)
    if len(set(out)) != len(out):
        raise ValueError(f"layers {list(layers)} name a hidden state twice")
    return out


def resolve_positions(positions: Sequence[int] | None, length: int) -> np.ndarray:
    """Sequence positions from ``positions`` (``None``: all; negative counts from the end)."""
    if positions is None:
        return np.arange(length, dtype=np.int64)
    out = np.asarray([int(p) + length if int(p) < 0 else int(p) for p in positions], dtype=np.int64)
    bad = [int(p) for p, q in zip(positions, out) if not 0 <= q < length]
    if bad:
        raise ValueError(f"positions {bad} are outside the sequence of {length} positions")
    return out


def resolve_tokens(tokens: Sequence[str | int] | None, tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Names and ids of the named tokens: an id, or a text that is exactly one token (``" red"``)."""
    names: list[str] = []
    ids: list[int] = []
    for token in tokens or ():
        if isinstance(token, (int, np.integer)):
            token_id = int(token)
        elif isinstance(token, str):
            token_id = _one_token(token, tokenizer)
        else:
            raise TypeError(f"tokens must be strings or ids, not {type(token).__name__}")
        if not 0 <= token_id < vocab_size:
            raise ValueError(f"token id {token_id} is outside the vocabulary of {vocab_size}")
        names.append(token if isinstance(token, str) else str(token_id))
        ids.append(token_id)
    return names, ids


def _one_token(text: str, tokenizer: Any) -> int:
    if tokenizer is None:
        raise ValueError(f"the token {text!r} is a string, which needs processor= (or its tokenizer); or pass an id")
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) == 1:
        return int(ids[0])
    direct = tokenizer.convert_tokens_to_ids(text)
    unknown = getattr(tokenizer, "unk_token_id", None)
    if isinstance(direct, int) and direct != unknown:
        return direct
    pieces = tokenizer.convert_ids_to_tokens(ids)
    raise ValueError(
        f"{text!r} is {len(ids)} tokens for this tokenizer ({pieces}); a lens follows one token: name one of "
        "them (mind the leading space: ' red' and 'red' are different tokens in most vocabularies) or pass its id"
    )


def lens_trace(
    stats: Any,
    shape: tuple[int, int, int],
    names: Sequence[str],
    named_ids: Sequence[int],
    vocab_text: Any,
    layers: Sequence[int],
    positions: np.ndarray,
    tables: Sequence[TokenTable],
    method: str,
    info: dict[str, Any],
) -> LensTrace:
    """A ``LensTrace`` from the ``Stats`` of ``batch × layers × positions`` rows (flattened in that order).

    Args:
        stats: the rows' ``Stats``.
        shape: ``(batch, layers, positions)``.
        names: the named outputs' texts.
        named_ids: their ids.
        vocab_text: ``ids → texts`` for the ids that occur in the top-k or the named outputs.
        layers: the hidden state of each layer row.
        positions: the token-table row of each position column.
        tables: one token table per batch item.
        method: ``"logit_lens"`` or ``"text_lens"``.
        info: JSON-able facts for ``LensTrace.info``.
    """
    top_ids = stats.top_ids.numpy().reshape(*shape, -1)
    ids = np.unique(np.concatenate([top_ids.reshape(-1), np.asarray(named_ids, dtype=np.int64)]))
    return LensTrace(
        top_ids=top_ids,
        top_probs=stats.top_probs.numpy().reshape(*shape, -1),
        entropy=stats.entropy.numpy().reshape(shape),
        named_probs=stats.named_probs.numpy().reshape(*shape, len(names)),
        named_scores=stats.named_scores.numpy().reshape(*shape, len(names)),
        named=tuple(names),
        named_ids=np.asarray(named_ids, dtype=np.int64),
        vocab_ids=ids,
        vocab_text=vocab_text(ids.tolist()),
        layers=tuple(layers),
        positions=positions,
        tables=tuple(tables),
        method=method,
        info=info,
    )


def _text_tables(
    sequences: torch.Tensor | None, mask: torch.Tensor | None, tokenizer: Any, length: int, generated: bool
) -> list[TokenTable]:
    """One text table per batch row of the ``length`` positions run (prompt, then generated tokens)."""
    from mmviz._hf.tokens import position_table, text_table

    if not isinstance(sequences, torch.Tensor):  # inputs_embeds: nothing names the positions
        return [position_table(length)]
    prompt = mask.shape[1] if mask is not None else sequences.shape[1]
    if mask is not None and length > prompt:
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], length - prompt)], dim=1)
    ids = sequences[:, :length].cpu()
    masks = [None if mask is None else mask[b, :length].cpu() for b in range(ids.shape[0])]
    start = prompt if generated else None
    return [text_table(ids[b], masks[b], tokenizer, start) for b in range(ids.shape[0])]


def _last_logits_only(model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """``logits_to_keep=1`` where the model takes it: the lens makes every layer's logits itself."""
    import inspect

    if "logits_to_keep" in inputs:
        return {}
    try:
        accepted = "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"logits_to_keep": 1} if accepted else {}


def _check_readout(readout: Readout, last: torch.Tensor, out: Any) -> None:
    """The last state's lens must reproduce the model's own last logits (a readout found wrongly fails here).

    Args:
        readout: the readout found.
        last: ``[batch, dim]`` the last block's output at the last position.
        out: the model's output (checked when it holds ``logits [batch, positions, vocab]``).
    """
    logits = getattr(out, "logits", None)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3 or logits.shape[0] != last.shape[0]:
        return
    logits = logits[:, -1]
    mine = readout.logits(last).float()
    theirs = logits.float()
    gap = float((mine - theirs).abs().max())
    if gap > CHECK_TOLERANCE * max(1.0, float(theirs.abs().max())):
        raise MMVizError(
            f"the logit lens of the last layer differs from the model's own logits by {gap:.3g}: mmviz did not find "
            f"how {type(readout.head).__name__} reads out this model (final norm "
            f"{type(readout.norm).__name__}, blocks {readout.blocks_path!r}). Please report the model class"
        )


def logit_lens_of_lm(
    model: Any,
    inputs: dict[str, Any],
    processor: Any,
    *,
    tokens: Sequence[str | int] | None,
    layers: Sequence[int] | None,
    positions: Sequence[int] | None,
    top_k: int,
    generate: dict[str, Any] | None,
    chunk: int | None,
) -> LensTrace:
    """``mmviz.logit_lens`` for a model with an output embedding (see there)."""
    from mmviz._hf.tokens import token_texts, tokenizer_of

    readout = find_readout(model)
    tokenizer = tokenizer_of(processor)
    vocab_size = readout.vocab_size
    names, named_ids = resolve_tokens(tokens, tokenizer, vocab_size)
    states = resolve_layers(layers, readout.n_states)
    last = readout.n_states - 1
    wanted = sorted(set(states) | {last})
    recording = token_tables(model, processor, modules=["language_model"], enabled=has_images(inputs))
    with evaluating(model), recording as run:
        with record_residual(readout.blocks, wanted) as seen:
            if generate is None:
                out = model(**inputs, **_last_logits_only(model, inputs))
                sequences = inputs.get("input_ids")
            else:
                out = model.generate(**inputs, **{"return_dict_in_generate": True, **generate})
                sequences = out.sequences
        hidden = {s: torch.cat(seen[s], dim=1) for s in wanted}
        if generate is None:
            _check_readout(readout, hidden[last][:, -1], out)
        batch, length = hidden[last].shape[:2]
        columns = resolve_positions(positions, length)
        index = torch.as_tensor(columns, device=hidden[last].device)
        rows = torch.stack([hidden[s].index_select(1, index) for s in states], dim=1)  # [batch, layers, pos, dim]
        stats = chunked_stats(
            rows.flatten(0, 2),
            readout.logits,
            top_k,
            torch.as_tensor(named_ids, dtype=torch.long),
            n_outputs=vocab_size,
            chunk=chunk,
        )
    tables = run.tables.get("text", [])
    if len(tables) != batch or any(len(t) != length for t in tables):
        tables = _text_tables(sequences, inputs.get("attention_mask"), tokenizer, length, generate is not None)

    def vocab_text(ids: list[int]) -> list[str]:
        known = len(tokenizer) if tokenizer is not None else 0  # tiny models: ids past the tokenizer's vocabulary
        texts = token_texts([i for i in ids if i < known], tokenizer)[0] if known else []
        named = dict(zip([i for i in ids if i < known], texts))
        return [named.get(i, f"#{i}") for i in ids]

    info = {
        "model": type(model).__name__,
        "blocks": readout.blocks_path,
        "norm": type(readout.norm).__name__ if readout.norm is not None else None,
        "head": type(readout.head).__name__,
        "generated": generate is not None,
    }
    shape = (batch, len(states), len(columns))
    return lens_trace(stats, shape, names, named_ids, vocab_text, states, columns, tables, "logit_lens", info)
