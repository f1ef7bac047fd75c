"""Prompt token tables for diffusion captures, from the ids the pipeline fed its text encoders.

The denoiser's context is laid out per family: SD 1.x/2.x, SDXL and PixArt use the positions of
``text_encoder`` (SDXL concatenates its two CLIP towers along channels, so positions are the first
tower's); SD3 appends the T5 tokens (``text_encoder_3``) after the CLIP positions; Flux uses the T5 tokens
of ``text_encoder_2`` only (CLIP enters through the pooled vector, not through attention).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmviz._hf.tokens import text_table
from mmviz.data import TokenTable

__all__ = ["EncoderCall", "context_segments", "prompt_table", "prompt_tables"]

EncoderCall = tuple[torch.Tensor, "torch.Tensor | None"]
"""``(input_ids [prompts, positions], attention_mask or None)`` of one text-encoder call, on the CPU."""


def context_segments(denoiser: Any) -> list[str]:
    """Text-encoder attributes whose positions form the denoiser's context, in order."""
    name = type(denoiser).__name__
    if name.startswith("SD3"):
        return ["text_encoder", "text_encoder_3"]
    if name.startswith("Flux"):
        return ["text_encoder_2"]
    return ["text_encoder"]


def _padding_mask(ids: torch.Tensor, tokenizer: Any) -> torch.Tensor:
    """1 for real tokens, 0 for padding: everything after the first EOS (CLIP pads with EOS or ``!``)."""
    keep = torch.ones_like(ids)
    eos = getattr(tokenizer, "eos_token_id", None)
    pad = getattr(tokenizer, "pad_token_id", None)
    for row in range(ids.shape[0]):
        hits = (ids[row] == eos).nonzero().flatten() if eos is not None else torch.empty(0)
        if hits.numel():
            keep[row, int(hits[0]) + 1 :] = 0
        elif pad is not None:
            keep[row] = (ids[row] != pad).to(keep.dtype)
    return keep


def prompt_table(ids: torch.Tensor, mask: torch.Tensor | None, tokenizer: Any) -> TokenTable:
    """The table of one prompt: words merged, BOS/EOS ``special``, padding ``pad``.

    Args:
        ids: ``[positions]`` token ids.
        mask: ``[positions]`` attention mask (``None``: padding is what follows the first EOS).
        tokenizer: the tokenizer that made the ids (``None``: texts become ``#id``).
    """
    if mask is None and tokenizer is not None:
        mask = _padding_mask(ids[None], tokenizer)[0]
    table = text_table(ids, mask, tokenizer)
    if tokenizer is None:
        return table
    raw = [str(t) for t in tokenizer.convert_ids_to_tokens([int(i) for i in ids.tolist()])]
    if not any(t.endswith("</w>") for t in raw):
        return table
    # CLIP's BPE marks the *end* of a word with "</w>": a token continues the word of the previous one
    # unless that one ended a word.
    word_id = np.zeros(len(raw), dtype=np.int64)
    current = -1
    for i in range(len(raw)):
        kind = table.kind[i]
        starts = i == 0 or kind != "text" or table.kind[i - 1] != "text" or raw[i - 1].endswith("</w>")
        current += 1 if starts else 0
        word_id[i] = current
    texts = [t.strip() if k == "text" else t for t, k in zip(table.text.tolist(), table.kind.tolist())]
    return TokenTable.build(texts, kind=table.kind.tolist(), word_id=word_id, token_id=table.token_id)


def _anonymous(n: int, kind: str = "text", start: int = 0) -> TokenTable:
    return TokenTable.build([f"#{start + i}" if kind != "pad" else "" for i in range(n)], kind=[kind] * n)


def _segment_lengths(pipe: Any, segments: list[str], text_length: int) -> list[int]:
    if len(segments) == 1:
        return [text_length]
    first = int(getattr(pipe, "tokenizer_max_length", 0) or 77)
    return [min(first, text_length), max(0, text_length - first)]


def prompt_tables(
    pipe: Any,
    denoiser: Any,
    calls: dict[str, list[EncoderCall]],
    text_length: int,
    n_items: int,
    negative: bool = False,
) -> list[TokenTable]:
    """One table of ``text_length`` positions per batch item of the denoiser.

    Args:
        pipe: the pipeline (``None`` for a bare denoiser: positions are anonymous).
        denoiser: the UNet or transformer.
        calls: text-encoder calls of this pipeline call, by encoder attribute.
        text_length: positions of the denoiser's context.
        n_items: batch items recorded.
        negative: describe the negative prompt (the unconditional branch) instead of the prompt.

    Returns:
        ``n_items`` tables; item ``b`` shows prompt ``b // (n_items // prompts)``.
    """
    if pipe is None:
        return [_anonymous(text_length)] * n_items
    segments = context_segments(denoiser)
    lengths = _segment_lengths(pipe, segments, text_length)
    per_segment: list[list[TokenTable] | None] = []
    n_prompts = 0
    for attr, length in zip(segments, lengths):
        seg_calls = calls.get(attr, [])
        index = 1 if negative else 0
        if len(seg_calls) <= index or seg_calls[index][0].shape[-1] != length:
            per_segment.append(None)
            continue
        ids, mask = seg_calls[index]
        tokenizer = getattr(pipe, "tokenizer" + attr[len("text_encoder") :], None)
        rows = [prompt_table(ids[r], None if mask is None else mask[r], tokenizer) for r in range(ids.shape[0])]
        per_segment.append(rows)
        n_prompts = max(n_prompts, len(rows))
    n_prompts = max(n_prompts, 1)
    per = max(1, n_items // n_prompts)
    tables = []
    for b in range(n_items):
        prompt = min(b // per, n_prompts - 1)
        parts = []
        offset = 0
        for seg_rows, length in zip(per_segment, lengths):
            if seg_rows is None:
                kind = "pad" if offset and segments[-1] == "text_encoder_3" else "text"
                parts.append(_anonymous(length, kind, offset))
            else:
                parts.append(seg_rows[min(prompt, len(seg_rows) - 1)])
            offset += length
        table = parts[0]
        for part in parts[1:]:
            table = table.concat(part)
        tables.append(table)
    return tables
