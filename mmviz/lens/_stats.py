"""The statistics a lens keeps of each distribution, computed in chunks of rows.

A lens reads ``rows`` hidden states (layers × positions, flattened) through a readout into scores over
``outputs`` (a vocabulary, or captions). The ``[rows, outputs]`` score matrix is never held whole: it is made
``chunk`` rows at a time, and only the top-k, the entropy and the named outputs' columns of each chunk are kept,
so memory is ``O(chunk × outputs + rows × (k + named))``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["CHUNK_ELEMENTS", "Stats", "chunked_stats"]

CHUNK_ELEMENTS = 1 << 23
"""Scores held at once (8 M float32: 32 MB; 166 rows of a 50k vocabulary): rows per chunk = this // outputs.

Smaller chunks re-read the unembedding matrix more often; larger ones fall out of the caches between the
passes over each chunk (top-k, softmax, entropy). Measured on CPU at d256 and 50k outputs: 128 rows best."""


@dataclass
class Stats:
    """What a lens keeps of ``rows`` distributions (all on the CPU).

    Attributes:
        top_ids: ``[rows, k]`` int64 the most probable outputs, most probable first.
        top_probs: ``[rows, k]`` float32 their probabilities.
        entropy: ``[rows]`` float32 entropy of the softmax over all outputs, in nats.
        named_probs: ``[rows, named]`` float32 probabilities of the named outputs.
        named_scores: ``[rows, named]`` float32 their scores (the logits, or what ``scores_of`` returns).
    """

    top_ids: torch.Tensor
    top_probs: torch.Tensor
    entropy: torch.Tensor
    named_probs: torch.Tensor
    named_scores: torch.Tensor


def chunked_stats(
    hidden: torch.Tensor,
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    k: int,
    named_ids: torch.Tensor,
    *,
    probs_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
    scores_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    n_outputs: int | None = None,
    chunk: int | None = None,
) -> Stats:
    """Top-k, entropy and named outputs of ``logits_of(hidden)``, ``chunk`` rows at a time.

    Args:
        hidden: ``[rows, dim]`` states to read out.
        logits_of: ``[n, dim]`` → ``[n, outputs]`` logits (the readout: final norm, unembedding, ...).
        k: how many top outputs to keep (at most ``outputs``).
        named_ids: ``[named]`` int64 outputs whose probability and score are kept at every row.
        probs_of: ``[n, outputs]`` logits → probabilities when they are not the softmax (SigLIP's sigmoid).
        scores_of: ``(hidden chunk, logits chunk)`` → ``[n, named]`` scores to keep instead of the named logits.
        n_outputs: size of the output axis (found from the first chunk when ``None``).
        chunk: rows per chunk (default ``CHUNK_ELEMENTS // outputs``).

    Returns:
        ``Stats`` on the CPU.
    """
    rows = hidden.shape[0]
    if rows == 0:
        empty = torch.zeros(0, k)
        none = torch.zeros(0, named_ids.numel())
        return Stats(empty.long(), empty, torch.zeros(0), none, none)
    if chunk is None:
        outputs = n_outputs if n_outputs is not None else logits_of(hidden[:1]).shape[-1]
        chunk = max(1, CHUNK_ELEMENTS // max(1, outputs))
    named = named_ids.to(hidden.device)
    parts: list[tuple[torch.Tensor, ...]] = []
    buffer: torch.Tensor | None = None
    for start in range(0, rows, chunk):
        h = hidden[start : start + chunk]
        logits = logits_of(h).float()  # [n, outputs]
        top_logits, top_ids = logits.topk(min(k, logits.shape[-1]), dim=-1)
        if buffer is None:
            buffer = torch.empty(min(chunk, rows), logits.shape[-1], dtype=logits.dtype, device=logits.device)
        softmax = _softmax_into(logits, buffer[: logits.shape[0]])
        # logsumexp from the most probable output (p = exp(z − lse) ≥ 1/outputs there: no underflow)
        lse = top_logits[:, 0] - softmax.gather(1, top_ids[:, :1]).squeeze(1).log()
        entropy = lse - torch.linalg.vecdot(softmax, logits)  # H = lse − Σ p·z
        masked = entropy.isnan()  # outputs at z = −inf (p = 0) make 0·(−inf): they add nothing
        if masked.any():
            entropy[masked] = lse[masked] - torch.nansum(softmax[masked] * logits[masked], dim=-1)
        named_logits = logits[:, named]
        if probs_of is None:
            top_probs = (top_logits - lse[:, None]).exp()
            named_probs = (named_logits - lse[:, None]).exp()
        else:
            top_probs, named_probs = probs_of(top_logits), probs_of(named_logits)
        scores = named_logits if scores_of is None else scores_of(h, logits).float()
        parts.append((top_ids, top_probs, entropy, named_probs, scores))
    columns = [torch.cat([p[i] for p in parts]).cpu() for i in range(5)]
    return Stats(*columns)


def _softmax_into(logits: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``softmax(logits, -1)`` written into ``out``, one buffer for every chunk.

    No chunk pays for fresh pages: on CPU that was half the softmax's time.
    """
    try:
        return torch.ops.aten._softmax.out(logits, -1, False, out=out)
    except (RuntimeError, AttributeError, NotImplementedError):  # a backend without the out= variant
        return torch.softmax(logits, dim=-1)
