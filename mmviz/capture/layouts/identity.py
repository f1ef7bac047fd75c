"""Identity attention inside attention modules that compute attention themselves (BLIP, GOT-OCR2, ...).

The pixel measurements (``mmviz.capture.layouts.provenance``) run the model with every attention call
replaced by the identity, so that positions do not mix. Models whose attention goes through
transformers' AttentionInterface get that from a registered implementation; a *legacy* module (see
``mmviz.capture._legacy``) computes its probabilities itself, with a softmax or a fused kernel. While
such a module runs, ``legacy_identity`` answers those calls instead (a torch function mode):

* a softmax over the last axis of ``[..., query, key]`` scores gives identity probabilities (each
  query keeps its own key) for self-attention, uniform ones (the mean over keys) for a cross-attention
  or where queries and keys differ in length, as the registered identity implementation does;
* ``scaled_dot_product_attention`` gives the values themselves, or their mean likewise.

A module is a cross-attention when its stack's name says so or it is called with encoder states.
Softmaxes outside legacy attention modules (the model's head, routers) are left alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from mmviz.capture._legacy import computes_attention

__all__ = ["KEY_INPUTS", "legacy_identity"]

KEY_INPUTS = ("encoder_hidden_states", "key_value_states")
"""Keyword arguments that hold a cross-attention's keys (the encoder's or the image's states)."""

_SOFTMAX = (torch.softmax, torch.nn.functional.softmax, torch.Tensor.softmax)


def _identity_probabilities(probs: torch.Tensor, cross: bool) -> torch.Tensor:
    """``[..., query, key]`` probabilities with no mixing: the identity, or uniform over keys."""
    q_len, k_len = probs.shape[-2], probs.shape[-1]
    if cross or q_len != k_len:
        return torch.full_like(probs, 1.0 / k_len)
    eye = torch.eye(q_len, dtype=probs.dtype, device=probs.device)
    return eye.expand(probs.shape).contiguous()


def _identity_values(query: torch.Tensor, value: torch.Tensor, cross: bool) -> torch.Tensor:
    """``[..., heads, query, dim]`` attention output with no mixing: each query's own value, or the mean value."""
    if value.ndim >= 3 and query.ndim >= 3 and value.shape[-3] != query.shape[-3]:  # grouped keys and values
        value = value.repeat_interleave(query.shape[-3] // value.shape[-3], dim=-3)
    if cross or value.shape[-2] != query.shape[-2]:
        return value.mean(dim=-2, keepdim=True).expand(*query.shape[:-1], value.shape[-1])
    return value


class _IdentityMode(TorchFunctionMode):
    """Answers attention softmaxes and fused kernels while a legacy attention module is in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.inside: list[bool] = []
        """Per legacy attention module in flight (innermost last): whether it is a cross-attention."""

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.inside:
            return out
        cross = self.inside[-1]
        if func in _SOFTMAX and isinstance(out, torch.Tensor) and out.ndim >= 2:
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if isinstance(dim, int) and dim % out.ndim == out.ndim - 1:
                return _identity_probabilities(out, cross)
        elif func is torch.nn.functional.scaled_dot_product_attention:
            query = args[0] if args else kwargs["query"]
            value = args[2] if len(args) > 2 else kwargs["value"]
            return _identity_values(query, value, cross).to(out.dtype)
        return out


@contextlib.contextmanager
def legacy_identity(model: torch.nn.Module, names: dict[int, tuple[str, int]]) -> Iterator[None]:
    """Identity attention in ``model``'s legacy attention modules for the block (see the module docstring).

    Args:
        model: the model.
        names: ``id(module)`` → ``(stack, layer)`` (``mmviz._hf.modules.stack_names``).
    """
    legacy = [sub for sub in model.modules() if computes_attention(sub)]
    if not legacy:
        yield
        return
    mode = _IdentityMode()

    def enter(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        named_cross = "cross" in names.get(id(module), ("", 0))[0]
        mode.inside.append(named_cross or any(kwargs.get(k) is not None for k in KEY_INPUTS))

    def leave(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if mode.inside:
            mode.inside.pop()

    hooks = []
    try:
        for sub in legacy:
            hooks.append(sub.register_forward_pre_hook(enter, with_kwargs=True))
            hooks.append(sub.register_forward_hook(leave))
        with mode:
            yield
    finally:
        for hook in hooks:
            hook.remove()
