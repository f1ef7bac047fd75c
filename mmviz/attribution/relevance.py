"""Gradient-weighted attention relevance (Chefer, Gur & Wolf, ICCV 2021).

The method of "Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
Transformers".

For each self-attention stack, relevance starts as the identity and each layer adds what its
attention, weighted by the target's gradient, moves between positions::

    Ā_l = mean_heads (∇A_l ⊙ A_l)⁺          R ← R + Ā_l · R        (layers in order)

A position's score is the row of ``R`` for the position(s) the target reads: the position predicting
the next token (or each answer token) for language models and VLMs, ``[CLS]`` for classifiers, the
pooled EOS token for CLIP's text tower and the mean over positions for pooled towers without a CLS
(SigLIP's vision tower).

Bi-modal rules: a VLM's language model holds text and image tokens in one sequence, so the
self-attention rule over the joint sequence gives both the text–text and text–image relevance
(``R^{tt}``, ``R^{ti}``); CLIP and SigLIP keep two towers joined only at the similarity, so each
tower's ``R^{tt}`` and ``R^{ii}`` follows from the gradient of that one similarity and the two are laid
side by side (text positions, then the vision tower's positions).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmviz.attribution._attention import attention_with_grad
from mmviz.attribution._problem import Problem

__all__ = ["relevance", "relevance_matrix"]


def relevance_matrix(probs: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
    """Chefer et al.'s self-attention relevance of one stack.

    Args:
        probs: per layer ``[heads, n, n]`` attention probabilities (layers in order).
        grads: per layer ``[heads, n, n]`` gradient of the target w.r.t. those probabilities.

    Returns:
        ``[n, n]`` float64 relevance ``R`` (row: query position, column: source position).
    """
    n = probs[0].shape[-1]
    r = torch.eye(n, dtype=torch.float64, device=probs[0].device)
    for a, g in zip(probs, grads):
        cam = (g.double() * a.double()).clamp(min=0).mean(0)
        r = r + cam @ r
    return r


def query_rows(problem: Problem, table_name: str, n: int) -> list[list[int]] | None:
    """Rows of a stack's relevance to read for each target (``None``: use the mean over rows)."""
    if table_name == "text":
        return problem.plan.text_rows
    tokens = problem.table
    start = problem.table_offsets.get(table_name, 0)
    if start < len(tokens) and tokens.kind[start] == "special":
        return [[0] for _ in problem.plan.labels]
    return None


def stacks_on_table(problem: Problem) -> list[tuple[str, str, int]]:
    """``(stack, table, offset)`` for each captured stack whose positions are columns of ``problem.table``."""
    out = []
    for stack, table in problem.stack_tables.items():
        if table in problem.table_offsets:
            out.append((stack, table, problem.table_offsets[table]))
    return out


def relevance(problem: Problem, **options: Any) -> dict[str, Any]:
    """Relevance of every attributed position for every target (one forward, one backward per target).

    Returns:
        ``scores`` ``[targets, positions]`` (and no pixel maps: relevance lives on tokens and patches).
    """
    stacks = stacks_on_table(problem)
    if not stacks:
        raise ValueError(
            f"relevance needs attention recorded through transformers' AttentionInterface; none of "
            f"{type(problem.model).__name__}'s attention stacks lines up with the attributed positions"
        )
    n_targets = len(problem.plan.labels)
    scores = np.zeros((n_targets, len(problem.table)), dtype=np.float64)
    problem_variants = problem.plan.variants
    for variant in problem_variants:
        inputs = dict(variant.inputs)
        if problem.x_pixels is not None:  # a leaf upstream of every layer, whatever the parameters' flags
            inputs["pixel_values"] = inputs["pixel_values"].detach().clone().requires_grad_(True)
        emb = None if problem.x_embed is None else problem.x_embed.clone().requires_grad_(True)
        with torch.enable_grad(), attention_with_grad(problem.model) as rec, problem._embedding_hook(emb):
            out = variant.weight * variant.objective(problem.model(**inputs, **variant.kwargs))
            by_stack = rec.stacks()
            wanted = {s: by_stack[s] for s, _, _ in stacks if s in by_stack}
            flat = [p for probs in wanted.values() for p in probs]
            for t in range(n_targets):
                grads = torch.autograd.grad(out[0, t], flat, retain_graph=t < n_targets - 1, allow_unused=True)
                it = iter(grads)
                for stack, table, offset in stacks:
                    if stack not in wanted:
                        continue
                    probs = wanted[stack]
                    g = [next(it) for _ in probs]
                    g = [torch.zeros_like(p) if gi is None else gi for p, gi in zip(probs, g)]
                    r = relevance_matrix([p[0].detach() for p in probs], [gi[0] for gi in g])
                    n = r.shape[0]
                    rows = query_rows(problem, table, n)
                    row = r.mean(0) if rows is None else r[[i for i in rows[t] if i < n]].sum(0)
                    width = min(n, len(problem.table) - offset)
                    if table == "text":
                        width = min(width, problem.n_text)
                    scores[t, offset : offset + width] += row[:width].cpu().numpy()
    return {"scores": scores.astype(np.float32), "pixel_maps": ()}
