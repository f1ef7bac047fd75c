"""Where a transformers model keeps the activations patching restores: blocks, attention, MLP, heads.

A *point* is one hooked activation of one block:

* ``residual`` — the hidden state entering the block (``hidden_states[layer]`` of
  ``output_hidden_states``; layer 0 is the embeddings, image features already merged for a VLM);
* ``attention`` — the output of the block's attention module, as the model defines it (for post-norm
  models such as BERT that output already holds the residual and the norm);
* ``mlp`` — the output of the block's MLP module;
* ``head`` — the input of the attention's output projection, ``[batch, seq, heads × head_dim]``: one head
  is one slice of its last axis.

The stack is the model's main stack of blocks: the language model's for a VLM, the encoder's for an
encoder, the vision tower's for a vision-only model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from mmviz._hf.residual import (
    _block_input,
    _layer_lists,
    _with_block_input,
    block_hidden,
    find_readout,
    with_block_hidden,
)

__all__ = ["SITE_KINDS", "Point", "Stack", "find_stack"]

SITE_KINDS = ("residual", "attention", "mlp", "head")
"""The site names ``mmviz.patch`` accepts."""

_VISION_WORDS = ("vision", "visual", "image", "img")
_ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention", "selfattention", "mixer")
_MLP_NAMES = ("mlp", "feed_forward", "ffn", "feedforward", "block_sparse_moe")
_OUT_PROJ_NAMES = ("o_proj", "out_proj", "c_proj", "dense", "wo", "out_lin", "proj")
_HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_head", "n_heads")


@dataclasses.dataclass(frozen=True)
class Point:
    """One hooked activation: ``kind`` of block ``layer``, read at ``module`` (input if ``pre``, else output)."""

    kind: str
    layer: int
    module: torch.nn.Module
    pre: bool

    def read(self, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> torch.Tensor:
        """The activation, ``[batch, seq, features]``, from what a hook receives."""
        try:
            value = _block_input(args, kwargs) if self.pre else block_hidden(output)
        except TypeError:
            value = None
        if not isinstance(value, torch.Tensor) or value.ndim != 3:
            where = "input" if self.pre else "output"
            raise RuntimeError(
                f"patching expects the {where} of {type(self.module).__name__} ({self.kind}, layer {self.layer}) "
                f"to hold a [batch, seq, features] tensor, got {getattr(value, 'shape', type(value))}"
            )
        return value

    def write(self, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any, value: torch.Tensor) -> Any:
        """What the hook returns so that the module sees (``pre``) or gives (else) ``value`` instead."""
        return _with_block_input(args, kwargs, value) if self.pre else with_block_hidden(output, value)

    def hook(self, fn: Any) -> torch.utils.hooks.RemovableHandle:
        """Registers ``fn(args, kwargs, output) -> replacement or None`` on the module."""
        if self.pre:
            return self.module.register_forward_pre_hook(lambda _m, a, k: fn(a, k, None), with_kwargs=True)
        return self.module.register_forward_hook(lambda _m, a, k, o: fn(a, k, o), with_kwargs=True, prepend=True)


@dataclasses.dataclass(frozen=True)
class Stack:
    """The blocks of a model's main stack and how many attention heads each has."""

    name: str
    blocks: tuple[torch.nn.Module, ...]
    heads: int | None

    def __len__(self) -> int:
        return len(self.blocks)

    def point(self, kind: str, layer: int) -> Point:
        """The hooked activation of ``kind`` at block ``layer``.

        Raises:
            ValueError: the block has no such module (e.g. no single MLP module in BERT's blocks).
        """
        block = self.blocks[layer]
        if kind == "residual":
            return Point(kind, layer, block, pre=True)
        if kind in ("attention", "head"):
            attention = _child(block, _ATTENTION_NAMES)
            if attention is None:
                raise ValueError(_missing(block, "attention", _ATTENTION_NAMES, self.name, layer))
            if kind == "attention":
                return Point(kind, layer, attention, pre=False)
            proj = _out_projection(attention)
            if proj is None:
                raise ValueError(
                    f"cannot patch single heads of {self.name}.{layer}: its attention module "
                    f"{type(attention).__name__} has no output projection named one of {_OUT_PROJ_NAMES}; "
                    "patch sites='attention' instead"
                )
            return Point(kind, layer, proj, pre=True)
        if kind == "mlp":
            mlp = _child(block, _MLP_NAMES)
            if mlp is None:
                raise ValueError(_missing(block, "MLP", _MLP_NAMES, self.name, layer))
            return Point(kind, layer, mlp, pre=False)
        raise ValueError(f"unknown site {kind!r}; use one of {SITE_KINDS}")


def find_stack(model: torch.nn.Module) -> Stack:
    """The model's main stack of blocks.

    A language model's (or a VLM's language model's) blocks are the ones the logit lens reads
    (``mmviz._hf.residual.find_readout``), so layer ``l`` means the same in both. A model without an output
    embedding (a classifier, a vision model) uses its lists of repeated blocks: stacks inside a vision tower
    are dropped when another exists, and of the rest the one holding the most parameters wins.

    Raises:
        ValueError: the model has no list of blocks.
    """
    try:
        readout = find_readout(model)
    except ValueError:
        readout = None
    if readout is not None:
        name, blocks = readout.blocks_path, readout.blocks
    else:
        candidates = [
            (any(word in path.lower() for word in _VISION_WORDS), -sum(p.numel() for p in m.parameters()), path, m)
            for path, m in _layer_lists(model)
        ]
        if not candidates:
            raise ValueError(
                f"{type(model).__name__} has no list of transformer blocks (a ModuleList of one block class); "
                "mmviz.patch works on transformers models whose blocks are kept in one"
            )
        if any(not c[0] for c in candidates):
            candidates = [c for c in candidates if not c[0]]
        _, _, name, blocks = min(candidates, key=lambda c: (c[1], c[2]))
    return Stack(name=name, blocks=tuple(blocks), heads=_heads(blocks[0]))


def _child(block: torch.nn.Module, names: tuple[str, ...]) -> torch.nn.Module | None:
    children = dict(block.named_children())
    lowered = {k.lower(): v for k, v in children.items()}
    for name in names:
        if name in lowered:
            return lowered[name]
    return None


def _missing(block: torch.nn.Module, what: str, names: tuple[str, ...], stack: str, layer: int) -> str:
    children = [n for n, _ in block.named_children()]
    return (
        f"cannot find the {what} module of {stack}.{layer} ({type(block).__name__}): its children are {children}, "
        f"none named one of {names}; patch sites='residual' (or another site this model has) instead"
    )


def _out_projection(attention: torch.nn.Module) -> torch.nn.Module | None:
    for name, module in attention.named_modules():
        if name and name.rsplit(".", 1)[-1].lower() in _OUT_PROJ_NAMES and not list(module.children()):
            return module
    return None


def _heads(block: torch.nn.Module) -> int | None:
    attention = _child(block, _ATTENTION_NAMES)
    for module in [] if attention is None else list(attention.modules()):
        for attr in _HEAD_ATTRS:
            value = getattr(module, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        config = getattr(module, "config", None)
        value = getattr(config, "num_attention_heads", None)
        if isinstance(value, int) and value > 0:
            return value
    return None
