"""Attention rollout (Abnar & Zuidema, 2020) of a capture, read at the positions the target reads.

The model runs once under ``mmviz.capture``; each self-attention stack whose positions are
attributed is rolled out with ``mmviz.data.reductions.rollout`` (head mean, residual identity,
layers multiplied in order) and the rows of the target's positions (as for ``relevance``) are summed.
Rollout does not depend on the target's value, only on where it is read.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmviz.attribution._problem import Problem
from mmviz.attribution.relevance import query_rows, stacks_on_table
from mmviz.data import AttentionTrace, reductions

__all__ = ["attention_rollout", "rollout_scores"]


def rollout_scores(
    trace: AttentionTrace, module: str, rows: list[list[int]] | None, residual: bool = True
) -> np.ndarray:
    """``[targets, positions]`` rollout rows of one stack of a trace.

    Args:
        trace: a captured trace (batch item 0).
        module: the stack.
        rows: per target, the query rows to sum; ``None``: the mean over rows.
        residual: add the identity for the residual stream.
    """
    roll = reductions.rollout(trace.probs(module), residual=residual)[-1]
    if rows is None:
        return roll.mean(0)[None]
    return np.stack([roll[[i for i in r if i < roll.shape[0]]].sum(0) for r in rows])


def attention_rollout(problem: Problem, residual: bool = True, **options: Any) -> dict[str, Any]:
    """Rollout of every attributed stack.

    Returns:
        ``scores`` ``[targets, positions]``.
    """
    from mmviz.capture import capture

    n_targets = len(problem.plan.labels)
    scores = np.zeros((n_targets, len(problem.table)), dtype=np.float64)
    for variant in problem.plan.variants[:1]:
        with torch.no_grad(), capture(problem.model, problem.processor, store="dense") as cap:
            problem.model(**variant.inputs)
        trace = cap.attention
        for stack, table, offset in stacks_on_table(problem):
            if stack not in trace.modules:
                continue
            m = trace.module(stack)
            if m.shape[3] != m.shape[4]:
                continue
            rows = query_rows(problem, table, m.shape[3])
            part = rollout_scores(trace, stack, rows, residual)
            width = min(part.shape[1], len(problem.table) - offset)
            if table == "text":
                width = min(width, problem.n_text)
            scores[:, offset : offset + width] += np.broadcast_to(part, (n_targets, part.shape[1]))[:, :width]
    return {"scores": scores.astype(np.float32), "pixel_maps": ()}
