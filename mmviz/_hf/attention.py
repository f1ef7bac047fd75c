"""Attention maths that capture and attribution share: each model's own eager function and its mask.

Both recording implementations (``mmviz_record`` in capture, ``mmviz_relevance`` in attribution) call
the eager attention function of the file that defines the attention class, with an additive float mask,
so what they record equals ``attn_implementation="eager"`` with ``output_attentions=True``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

_eager_cache: dict[str, Callable[..., Any]] = {}
_registered: set[str] = set()


def register_implementation(name: str, attention: Callable[..., Any], mask: Callable[..., Any] | None = None) -> None:
    """Registers an attention function (and its mask builder, default eager's) with transformers, once per name.

    Without a mask function of the same name, transformers' mask builders return no mask for an
    implementation they do not know.
    """
    if name in _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, mask or eager_mask)
    _registered.add(name)


def model_eager_function(module: torch.nn.Module) -> Callable[..., Any]:
    """The eager attention function of the file that defines ``module``'s class.

    Models bring their own eager function (soft-capping, sinks, position bias, ...); using it keeps the
    recorded probabilities identical to ``attn_implementation="eager"``.
    """
    owner = type(module).__module__
    fn = _eager_cache.get(owner)
    if fn is None:
        fn = getattr(sys.modules.get(owner), "eager_attention_forward", None) or generic_eager_attention
        _eager_cache[owner] = fn
    return fn


def generic_eager_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention with grouped-query support, for attention classes without their own."""
    from transformers.integrations.sdpa_attention import repeat_kv

    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    weights = torch.matmul(query, key.transpose(2, 3)) * scale
    if attention_mask is not None:
        weights = weights + attention_mask[:, :, :, : key.shape[-2]]
    weights = torch.nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


def additive_mask(
    mask: torch.Tensor | None,
    query: torch.Tensor,
    key: torch.Tensor,
    module: torch.nn.Module,
    kwargs: dict[str, Any],
    eager_model: bool = False,
) -> torch.Tensor | None:
    """Turns a boolean (sdpa-style) or absent mask into the additive float mask eager functions expect.

    An absent mask means causal where sdpa would apply its causal rule; for a model that ran eager before
    the capture (``eager_model``), only where the module says it is causal, since eager adds no mask
    of its own.
    """
    if mask is not None and mask.dtype != torch.bool:
        return mask
    if mask is None:
        causal = getattr(module, "is_causal", False) and query.shape[2] > 1 if eager_model else None
        if not (causal if causal is not None else causal_without_mask(module, query, kwargs)):
            return None
        mask = causal_bool(query.shape[2], key.shape[2], query.device)[None, None]
    zero = torch.zeros((), dtype=query.dtype, device=query.device)
    return torch.where(mask, zero, torch.finfo(query.dtype).min)


def causal_without_mask(module: torch.nn.Module, query: torch.Tensor, kwargs: dict[str, Any]) -> bool:
    """Whether sdpa would apply a causal mask to a call that passed no mask (sdpa's own rule)."""
    is_causal = kwargs.get("is_causal")
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    return bool(is_causal) and query.shape[2] > 1


def causal_bool(q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    """``[q_len, k_len]`` bool, ``True`` where query ``i`` may see key ``j`` (keys end with the queries)."""
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)
