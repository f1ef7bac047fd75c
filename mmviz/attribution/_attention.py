"""Attention probabilities that stay on the autograd graph, for gradient-weighted relevance.

``mmviz_relevance`` is registered in transformers' AttentionInterface (with the eager mask). Inside
``attention_with_grad`` every config of the model is switched to it; it runs the model's own eager
attention and keeps each call's probabilities, which are the tensors multiplied with the values, so
``∂f/∂A`` is the gradient Chefer et al. weight attention with. Everything is switched back on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch

from mmviz._hf.attention import additive_mask, model_eager_function, register_implementation
from mmviz._hf.modules import attention_implementation, stack_names

__all__ = ["Recorded", "attention_with_grad"]

IMPLEMENTATION = "mmviz_relevance"
_STORE: ContextVar[list[tuple[torch.nn.Module, torch.Tensor]] | None] = ContextVar("mmviz_relevance", default=None)


@dataclass
class Recorded:
    """Probabilities kept during the block: ``calls`` in call order, with their stack name and layer."""

    names: dict[int, tuple[str, int]]
    calls: list[tuple[torch.nn.Module, torch.Tensor]] = field(default_factory=list)

    def stacks(self) -> dict[str, list[torch.Tensor]]:
        """Stack name → ``[batch, heads, query, key]`` probabilities per layer, in layer order."""
        out: dict[str, list[tuple[int, torch.Tensor]]] = {}
        for module, probs in self.calls:
            group, layer = self.names.get(id(module), ("attention", 0))
            out.setdefault(group, []).append((layer, probs))
        return {g: [p for _, p in sorted(items, key=lambda x: x[0])] for g, items in out.items()}


def _relevance_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    mask = additive_mask(attention_mask, query, key, module, kwargs)
    out, probs = model_eager_function(module)(module, query, key, value, mask, **kwargs)
    store = _STORE.get()
    if store is not None and probs is not None:
        store.append((module, probs))
    return out, probs


@contextlib.contextmanager
def attention_with_grad(model: torch.nn.Module) -> Iterator[Recorded]:
    """Switches ``model`` to the recording implementation for the block; restores it, also on errors.

    Yields:
        A ``Recorded`` that fills while the model runs.
    """
    register_implementation(IMPLEMENTATION, _relevance_attention)
    recorded = Recorded(stack_names(model))
    token = _STORE.set(recorded.calls)
    try:
        with attention_implementation(model, IMPLEMENTATION):
            yield recorded
    finally:
        _STORE.reset(token)
