"""Checks of ``mmviz.capture``'s ``layers=``, ``heads=`` and ``modules=`` against the model, before it runs.

Layer and head indices are the model's own numbers, from 0. Negative indices are refused (not read
as "from the end"): a trace labels each stored layer and head with its model index, so ``-1`` could
only be stored under a number the user did not write. Stack names (``"language_model"``,
``"vision_tower"``, ...) must be ones the model has; a typo is refused with the names it has.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch

from mmviz._hf.modules import named_stacks
from mmviz.errors import CaptureError

_HEAD_ATTRIBUTES = ("num_heads", "num_attention_heads", "n_heads", "n_head")


def attention_stacks(model: torch.nn.Module) -> dict[str, dict[int, int | None]]:
    """The model's attention stacks: stack name → {layer index → its number of query heads (or ``None``)}.

    An attention module is a submodule whose class name says so (``...Attention``, ``...Attn``); the
    stack name and layer come from its path (``mmviz._hf.modules.named_stacks``).
    """
    stacks: dict[str, dict[int, int | None]] = {}
    for _, sub, (group, layer) in named_stacks(model):
        name = type(sub).__name__.lower()
        if "attention" not in name and not name.endswith("attn"):
            continue
        layers = stacks.setdefault(group, {})
        heads = _head_count(sub)
        if layers.get(layer) is None:
            layers[layer] = heads
    return stacks


def _head_count(module: torch.nn.Module) -> int | None:
    for source in (module, getattr(module, "config", None)):
        for attribute in _HEAD_ATTRIBUTES:
            value = getattr(source, attribute, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def _indices(value: Any, what: str) -> list[int]:
    """A list of non-negative ints from an int or a sequence of them, else a ``CaptureError``."""
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if isinstance(items, (str, bytes)) or (not isinstance(items, Sequence) and not hasattr(items, "__iter__")):
        raise CaptureError(f"{what}={value!r}: give a list of integer indices, e.g. {what}=[0, 3]")
    out = []
    for item in list(items):
        if isinstance(item, bool) or (not isinstance(item, (int, torch.Tensor)) and not hasattr(item, "__index__")):
            raise CaptureError(f"{what}={value!r}: {item!r} is not an integer index; give e.g. {what}=[0, 3]")
        index = int(item)
        if index < 0:
            raise CaptureError(
                f"{what}={value!r}: negative indices are not accepted (mmviz stores and labels the model's own "
                f"{what[:-1]} numbers, from 0); write the index itself, e.g. the last of 12 is 11"
            )
        out.append(index)
    if not out:
        raise CaptureError(f"{what}={value!r} selects nothing; give at least one index, or None for all")
    return out


def _stack_name(name: Any, stacks: dict[str, Any], what: str) -> str:
    if not isinstance(name, str):
        raise CaptureError(f"{what}: stack names are strings like 'language_model', not {name!r}")
    if stacks and name not in stacks:
        near = difflib.get_close_matches(name, list(stacks), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise CaptureError(
            f"{what}: the model has no attention stack {name!r}{hint}; its stacks are {', '.join(sorted(stacks))}"
        )
    return name


def _span(layers: dict[int, int | None]) -> str:
    keys = sorted(layers)
    return f"{keys[0]}–{keys[-1]}" if keys == list(range(keys[0], keys[-1] + 1)) and len(keys) > 1 else str(keys)


def check_selection(
    model: torch.nn.Module,
    layers: Any,
    heads: Any,
    modules: Any,
) -> tuple[list[int] | dict[str, list[int]] | None, list[int] | None, list[str] | None]:
    """Validates and normalises the selection arguments of ``mmviz.capture`` for a transformers model.

    Args:
        model: the model.
        layers: ``None``, an index, a list of indices (every stack), or ``{stack: indices}``.
        heads: ``None``, an index or a list of indices.
        modules: ``None`` or stack names.

    Returns:
        ``(layers, heads, modules)`` as lists (and a dict of lists).

    Raises:
        CaptureError: a negative or non-integer index, a layer no stack has, a head past a recorded stack's
            count, an unknown stack name (the message lists the model's stacks).
    """
    stacks = attention_stacks(model)
    names = None if modules is None else [_stack_name(m, stacks, "modules=") for m in _names(modules)]
    recorded = {k: v for k, v in stacks.items() if names is None or k in names}
    picked: list[int] | dict[str, list[int]] | None = None
    if isinstance(layers, dict):
        picked = {}
        for stack, wanted in layers.items():
            _stack_name(stack, stacks, f"layers={{{stack!r}: ...}}")
            picked[stack] = _indices(wanted, "layers")
            have = stacks.get(stack) or {}
            missing = [i for i in picked[stack] if have and i not in have]
            if missing:
                raise CaptureError(
                    f"layers={{{stack!r}: {picked[stack]}}}: {stack!r} has no layer {missing[0]} "
                    f"(its layers are {_span(have)})"
                )
    elif layers is not None:
        picked = _indices(layers, "layers")
        if recorded:
            missing = [i for i in picked if not any(i in have for have in recorded.values())]
            if missing:
                spans = ", ".join(f"{k} {_span(v)}" for k, v in sorted(recorded.items()))
                raise CaptureError(f"layers={picked}: no attention stack has layer {missing[0]} (layers: {spans})")
    kept = None if heads is None else sorted(set(_indices(heads, "heads")))
    if kept is not None:
        for stack, have in recorded.items():
            chosen = picked.get(stack) if isinstance(picked, dict) else picked
            counts = [c for layer, c in have.items() if c is not None and (chosen is None or layer in chosen)]
            if counts and kept[-1] >= min(counts):
                raise CaptureError(
                    f"heads={kept}: {stack!r} has {min(counts)} heads (0–{min(counts) - 1}), so head {kept[-1]} "
                    f"does not exist there; pick heads below {min(counts)}, or record other stacks with modules=[...]"
                )
    return picked, kept, names


def _names(modules: Any) -> list[Any]:
    if isinstance(modules, str):
        return [modules]
    return list(modules)


class DenseEstimate:
    """A lower bound of a dense capture's size, from the input's length, before the model runs.

    It counts the stack that reads the token input: ``language_model`` when recorded, else the recorded
    stack with the most layers. Other stacks (a vision tower, cross-attention) only add to it, and are
    charged as they are recorded.

    Args:
        model: the model.
        layers: the checked ``layers=`` (``check_selection``).
        heads: the checked ``heads=``.
        modules: the checked ``modules=``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        layers: list[int] | dict[str, list[int]] | None,
        heads: list[int] | None,
        modules: list[str] | None,
    ) -> None:
        stacks = {k: v for k, v in attention_stacks(model).items() if modules is None or k in modules}
        self.stack: tuple[int, int] | None = None
        if not stacks:
            return
        name = "language_model" if "language_model" in stacks else max(stacks, key=lambda k: len(stacks[k]))
        have = stacks[name]
        chosen = layers.get(name) if isinstance(layers, dict) else layers
        recorded = [layer for layer in have if chosen is None or layer in chosen]
        counts = [c for layer, c in have.items() if c is not None and layer in recorded]
        n_heads = len(heads) if heads is not None else (min(counts) if counts else 0)
        if recorded and n_heads:
            self.stack = (len(recorded), n_heads)

    def bytes(self, batch: int, queries: int, keys: int) -> tuple[int, int, int] | None:
        """``(float16 bytes, layers, heads)`` of the main stack's probabilities, or ``None`` if unknown."""
        if self.stack is None:
            return None
        layers, heads = self.stack
        return 2 * batch * layers * heads * queries * keys, layers, heads
