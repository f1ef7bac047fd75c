"""Names of residual-stream sites: the dotted module path of each transformer block.

A site is the residual stream right after one block, named by the block's path in ``model.named_modules()``:
``model.language_model.layers.3`` (a VLM's language model), ``model.vision_tower.vision_model.encoder.layers.0``
(its vision tower), ``transformer.h.5`` (GPT-2). A name may leave out leading parts when what is left names one
block only: ``language_model.layers.3`` and ``layers.3`` (in a model with one stack) both work. Stacks are
found as ``mmviz._hf.residual`` finds them (lists of repeated blocks), so site ``<stack>.<i>`` is that
module's hidden state ``i + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmviz._hf.residual import _layer_lists

__all__ = ["Site", "describe_sites", "find_site", "site_names"]


@dataclass(frozen=True, eq=False)
class Site:
    """One residual-stream site.

    Attributes:
        name: the block's full dotted path.
        blocks: the stack the block belongs to.
        index: the block's index in it (the site is hidden state ``index + 1`` of the stack).
    """

    name: str
    blocks: torch.nn.ModuleList
    index: int

    @property
    def state(self) -> int:
        """The site as a hidden-state number of its stack (``mmviz._hf.residual`` numbering)."""
        return self.index + 1


def _sites(model: torch.nn.Module) -> list[Site]:
    return [
        Site(f"{path}.{i}" if path else str(i), blocks, i)
        for path, blocks in _layer_lists(model)
        for i in range(len(blocks))
    ]


def site_names(model: torch.nn.Module) -> list[str]:
    """Every residual-stream site of ``model``, stack by stack, in block order."""
    return [site.name for site in _sites(model)]


def describe_sites(model: torch.nn.Module) -> str:
    """The sites of ``model`` in a short form for messages: ``stack.0 … stack.N`` per stack."""
    parts = [f"{path}.0 … {path}.{len(blocks) - 1}" for path, blocks in _layer_lists(model)]
    return "; ".join(parts) or "none (no stack of repeated blocks found)"


def find_site(model: torch.nn.Module, name: str) -> Site:
    """The site called ``name`` (a block's dotted path, or a unique tail of it).

    Raises:
        ValueError: no block, or several blocks, answer to ``name``; the message lists the valid names.
    """
    sites = _sites(model)
    exact = [s for s in sites if s.name == name]
    matches = exact or [s for s in sites if s.name.endswith(f".{name}")]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(
            f"site {name!r} is ambiguous in {type(model).__name__}: it names {', '.join(s.name for s in matches)}; "
            "give more of the path"
        )
    raise ValueError(
        f"{type(model).__name__} has no residual-stream site {name!r}. Sites are block paths: "
        f"{describe_sites(model)} (leading parts may be left out when the rest is unique)"
    )
