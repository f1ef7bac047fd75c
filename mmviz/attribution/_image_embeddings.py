"""The image tokens' embeddings a VLM's language model reads, as an attributed input (``sources=["image_embeddings"]``).

A VLM turns its pixels into image tokens (vision tower, then projector) and writes them into the language
model's ``inputs_embeds`` at the image placeholders' positions. Attributing those rows explains the answer by
what the language model was given, not by the pixels: for integrated gradients the path runs from the image
tokens of a baseline image (or zero vectors) to the input's, and completeness holds over them,
``Σ IG = f(z) − f(z₀)``.

The attributed tensor is the language model's whole ``inputs_embeds`` over the prompt (``[1, tokens, dim]``),
replaced through a forward pre-hook on the language model; text rows are held as given unless ``"text"`` is
attributed too, and their scores are zero.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["image_token_id", "language_model", "lm_inputs", "replacing_lm_inputs", "supported"]


def language_model(model: Any) -> torch.nn.Module:
    """The module a VLM calls with ``inputs_embeds`` (LLaVA-style ``model.model.language_model``).

    Raises:
        ValueError: the model has no separate language model (not a VLM).
    """
    for owner in (getattr(model, "model", None), model):
        module = getattr(owner, "language_model", None)
        if isinstance(module, torch.nn.Module):
            return module
    raise ValueError(
        f"sources=['image_embeddings'] needs a VLM whose language model reads image tokens from inputs_embeds; "
        f"{type(model).__name__} has no language_model. Attribute the pixels instead: sources=['image']"
    )


def image_token_id(model: Any) -> int:
    """The placeholder id whose positions hold the image tokens.

    Raises:
        ValueError: the config names none.
    """
    config = model.config
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ValueError(
        f"sources=['image_embeddings'] needs the image placeholder's token id; {type(config).__name__} has no "
        "image_token_id. Attribute the pixels instead: sources=['image']"
    )


def supported(model: Any, inputs: Any) -> bool:
    """Whether ``model`` reads image tokens through its language model's ``inputs_embeds`` for these inputs."""
    try:
        language_model(model)
        token = image_token_id(model)
    except ValueError:
        return False
    ids = inputs.get("input_ids") if hasattr(inputs, "get") else None
    return isinstance(ids, torch.Tensor) and bool((ids == token).any()) and inputs.get("pixel_values") is not None


def lm_inputs(model: Any, inputs: dict[str, Any], kwargs: dict[str, Any] | None = None) -> torch.Tensor:
    """The language model's ``inputs_embeds`` ``[batch, tokens, dim]`` for ``inputs`` (one forward, detached)."""
    module = language_model(model)
    seen: list[torch.Tensor] = []

    def record(_: Any, args: Any, kw: dict[str, Any]) -> None:
        embeds = kw.get("inputs_embeds")
        if isinstance(embeds, torch.Tensor) and not seen:
            seen.append(embeds.detach())

    handle = module.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs, **(kwargs or {}))
    finally:
        handle.remove()
    if not seen:
        raise ValueError(
            f"{type(model).__name__}'s language model was not called with inputs_embeds, so its image tokens "
            "cannot be attributed; attribute the pixels instead: sources=['image']"
        )
    return seen[0]


@contextlib.contextmanager
def replacing_lm_inputs(model: Any, rows: torch.Tensor) -> Iterator[None]:
    """Within the block, the language model reads ``rows`` ``[k, n, dim]`` as its first ``n`` input embeddings.

    Calls whose batch is not ``k`` or whose sequence is shorter than ``n`` are left alone.
    """
    module = language_model(model)
    n = rows.shape[1]

    def replace(_: Any, args: Any, kw: dict[str, Any]) -> tuple[Any, dict[str, Any]] | None:
        embeds = kw.get("inputs_embeds")
        if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3:
            return None
        if embeds.shape[0] != rows.shape[0] or embeds.shape[1] < n:
            return None
        kw = dict(kw)
        kw["inputs_embeds"] = torch.cat([rows.to(embeds.dtype), embeds[:, n:]], dim=1)
        return args, kw

    handle = module.register_forward_pre_hook(replace, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
