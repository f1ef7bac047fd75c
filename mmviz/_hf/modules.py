"""Where a model keeps its attention: stack names for attention modules and the configs that pick the implementation.

``module_group`` names the stack of an attention module from its dotted path (the names every trace and
view use; ``named_stacks`` / ``stack_names`` name every module of a model that way);
``attention_implementation`` switches every config of a model (the top level and each sub-model's) to a
registered implementation for a ``with`` block and restores them, also on errors.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from typing import Any

import torch

_CONTAINERS = {"model", "layers", "layer", "h", "block", "blocks", "transformer", "resblocks"}
_CROSS = re.compile(r"cross|encdec|encoder_attn", re.IGNORECASE)
_SELF_ATTENTION = {"self_attn", "attn", "attention", "self_attention", "selfattention", "layer", "mixer", "attn_layer"}
_NAMED_LIST = re.compile(r"\w+_(layers|blocks)")
_ATTENTION_WORD = re.compile(r"attn|attention", re.IGNORECASE)
_HALVES = ("encoder", "decoder")
_GENERIC_CROSS = re.compile(r"(cross_?attn|cross_?attention|encoder_?attn|enc_?dec_?attention|layer)(_layer)?", re.I)


def module_group(path: str, base_prefix: str = "", halves: frozenset[str] = frozenset()) -> tuple[str, int]:
    """Names the stack an attention module belongs to and its layer index, from its dotted path.

    ``model.language_model.layers.3.self_attn`` → ``("language_model", 3)``;
    ``decoder.block.1.layer.1.EncDecAttention`` → ``("decoder.cross_attention", 1)``;
    ``transformer.h.0.attn`` → ``("language_model", 0)``;
    ``encoder.layers.2.blocks.1.attention`` (stages of blocks) → ``("encoder.stage2", 1)``;
    ``mask_decoder.transformer.layers.0.cross_attn_token_to_image`` →
    ``("mask_decoder.cross_attn_token_to_image", 0)`` (a layer with several kinds of cross-attention);
    ``mask_decoder.transformer.final_attn_token_to_image`` (outside any numbered stack) →
    ``("mask_decoder.final_attn_token_to_image", 0)``;
    ``layers.1.mlp_input`` (an attention beside the layer's ``self_attn``) → ``("language_model.mlp_input", 1)``;
    ``video_model.vision_model.temporal_layers.1.attention`` (one of a sub-model's named lists of layers) →
    ``("video_model.temporal_layers", 1)``;
    ``encoder.cross_attention.attention.self`` (a single cross-attention, Perceiver) →
    ``("encoder.cross_attention", 0)``;
    ``layers.4.self_attn.1`` (the second of a layer's list of attentions, LongCat-Flash) →
    ``("language_model.self_attn1", 4)``, the first keeping the stack's name;
    ``model.language_model.decoder.layers.0.encoder_attn`` where ``model.language_model`` is in ``halves``
    (a sub-model with an encoder and a decoder, Florence-2) → ``("language_model.decoder.cross_attention", 0)``,
    its encoder's layers → ``("language_model.encoder", 0)``.

    Args:
        path: the module's name in ``model.named_modules()``.
        base_prefix: the model's ``base_model_prefix`` (``"bert"``, ``"vit"``, ...), dropped from names.
        halves: paths of sub-models that hold both an ``encoder`` and a ``decoder`` (``encoder_decoder_paths``):
            their halves are stacks of their own, named after the sub-model. A top-level model's halves are
            ``encoder`` and ``decoder`` anyway.
    """
    parts = path.split(".")
    digits = [i for i, p in enumerate(parts) if p.isdigit()]
    first = digits[0] if digits else len(parts)
    container, layer = parts[:first], int(parts[first]) if digits else 0
    rest = parts[first + 1 :]
    words = [p for p in container if p not in _CONTAINERS and p != base_prefix]
    words = [w for i, w in enumerate(words) if not (w == "encoder" and i > 0)]
    half = next((p for i, p in enumerate(container) if p in _HALVES and ".".join(parts[:i]) in halves), None)
    if half is not None and words and words[0] != half:  # the encoder or decoder of a sub-model
        words = [f"{words[0]}.{half}", *(w for w in words[1:] if w != half)]
    name = words[0] if words else "language_model"
    cross = next((w for w in words[1:] if _CROSS.search(w)), None) if not digits else None
    if cross is not None:  # a single cross-attention outside any list (Perceiver's encoder)
        name = f"{words[0]}.cross_attention" if _GENERIC_CROSS.fullmatch(cross) else f"{words[0]}.{cross}"
    elif len(words) > 1 and (not digits or _NAMED_LIST.fullmatch(words[-1])):
        name = f"{words[0]}.{words[-1]}"  # one of several named stacks (VideoPrism's spatial_layers, ...)
    inner = [i for i, p in enumerate(rest) if p.isdigit()]
    if len(rest) == 2 and inner == [1] and _ATTENTION_WORD.search(rest[0]):  # a layer's list of attentions
        index = int(rest[1])
        name = name if index == 0 else f"{name}.{rest[0]}{index}"
        return name, layer
    if inner and (inner[0] == 0 or rest[inner[0] - 1] != "layer"):  # "layer.N" is T5's sub-layer slot
        name, layer, rest = f"{name}.stage{layer}", int(rest[inner[0]]), rest[inner[0] + 1 :]
    suffix = ".".join(rest)
    attribute = rest[0] if rest else ""
    if _CROSS.search(suffix):
        name += ".cross_attention" if _GENERIC_CROSS.fullmatch(attribute) else f".{attribute}"
    elif attribute and attribute.lower() not in _SELF_ATTENTION:  # a second attention of the layer
        name += f".{attribute}"
    return name, layer


def all_configs(model: torch.nn.Module) -> list[Any]:
    """Every config object a model and its sub-models read their attention implementation from."""
    seen: dict[int, Any] = {}
    pending = [m.config for m in model.modules() if hasattr(m, "config") and hasattr(m.config, "sub_configs")]
    while pending:
        config = pending.pop()
        if id(config) in seen:
            continue
        seen[id(config)] = config
        for key in getattr(config, "sub_configs", {}) or {}:
            sub = getattr(config, key, None)
            if sub is not None and hasattr(sub, "_attn_implementation_internal"):
                pending.append(sub)
    return list(seen.values())


@contextlib.contextmanager
def attention_implementation(model: torch.nn.Module, name: str) -> Iterator[dict[int, str | None]]:
    """Switches every config of ``model`` to the attention implementation ``name`` for the block.

    Yields:
        ``id(config)`` → the implementation it had before, for callers that fall back to it.
    """
    configs = all_configs(model)
    saved = [(c, c._attn_implementation_internal) for c in configs]
    try:
        for config, _ in saved:
            config._attn_implementation_internal = name
        yield {id(c): value for c, value in saved}
    finally:
        for config, value in saved:
            config._attn_implementation_internal = value


def encoder_decoder_paths(paths: Iterable[str]) -> frozenset[str]:
    """The paths among ``paths`` (module names) of sub-models that hold both an ``encoder`` and a ``decoder``.

    ``model.language_model`` for Florence-2, whose language model is a BART encoder-decoder;
    a top-level model's ``encoder`` and ``decoder`` have no parent path and are not counted.
    """
    known = set(paths)
    return frozenset(
        p.rsplit(".", 1)[0] for p in known if p.endswith(".encoder") and p.rsplit(".", 1)[0] + ".decoder" in known
    )


def named_stacks(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module, tuple[str, int]]]:
    """``(path, module, (stack, layer))`` for every named submodule of ``model`` (see ``module_group``)."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    named = [(path, sub) for path, sub in model.named_modules() if path]
    halves = encoder_decoder_paths(path for path, _ in named)
    for path, sub in named:
        yield path, sub, module_group(path, prefix, halves)


def stack_names(model: torch.nn.Module) -> dict[int, tuple[str, int]]:
    """``id(module)`` → ``(stack, layer)`` for every named submodule of ``model`` (see ``module_group``)."""
    return {id(sub): group for _, sub, group in named_stacks(model)}
