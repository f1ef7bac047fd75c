"""Steering: add a direction to (or project it out of) a residual stream while the model runs.

``with mmviz.steer(model, direction, site="language_model.layers.3", alpha=4.0): model.generate(...)`` edits
the hidden state after one block in every forward call inside the block; ``mmviz.direction(model, a, b,
site=...)`` finds a direction as the mean difference of two sets of activations at a site. Sites are the
dotted paths of the model's transformer blocks (``mmviz.steering.sites(model)`` lists them). The model is
left as it was on exit, also after an exception. See ``docs/steering.md``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MODES", "Steering", "direction", "sites", "steer"]

MODES = ("add", "ablate")
"""What ``steer`` does with the direction: add ``alpha · direction``, or remove ``alpha ×`` its component."""


@dataclass
class Steering:
    """What ``steer`` yields: the site steered and how many forward calls it changed so far.

    Attributes:
        site: the block's full dotted path.
        mode: ``"add"`` or ``"ablate"``.
        alpha: the strength.
        calls: forward calls that went through the site inside the block.
    """

    site: str
    mode: str
    alpha: float
    calls: int = 0


def sites(model: Any) -> list[str]:
    """Every residual-stream site of ``model`` (the dotted paths of its transformer blocks), in order.

    Example::

        mmviz.steering.sites(llava)[:2]   # ['model.language_model.layers.0', 'model.language_model.layers.1']
    """
    from mmviz._hf.sites import site_names

    return site_names(model)


def _positions(positions: int | Sequence[int] | None) -> list[int] | None:
    if positions is None:
        return None
    return [int(positions)] if isinstance(positions, (int, np.integer)) else [int(p) for p in positions]


@contextlib.contextmanager
def steer(
    model: Any,
    direction: Any,
    *,
    site: str,
    positions: int | Sequence[int] | None = None,
    alpha: float = 1.0,
    mode: str = "add",
) -> Iterator[Steering]:
    """Adds a direction to, or projects it out of, the residual stream after one block while the model runs.

    Example::

        red = mmviz.direction(vlm, red_inputs, blue_inputs, site="language_model.layers.1")
        with mmviz.steer(vlm, red, site="language_model.layers.1", alpha=2.0):
            out = vlm.generate(**inputs, max_new_tokens=3)

    Args:
        model: a transformers model (any model with a stack of blocks; VLMs have one per tower).
        direction: ``[d]`` vector (numpy, torch or a list), ``d`` the hidden size at the site.
        site: the block after which to steer: its dotted path (``mmviz.steering.sites(model)``), or a
            unique tail of it (``"language_model.layers.3"``).
        positions: sequence positions to steer in each forward call (ints, negative from the end);
            ``None`` steers all. Positions a call does not have are left alone (the cached steps of
            ``generate`` see one position each, so ``positions=[-1]`` steers every new token).
        alpha: ``add``: the multiple of ``direction`` added; ``ablate``: the fraction of the hidden
            state's component along ``direction`` removed (1: all of it, leaving the state ⟂ direction).
        mode: ``"add"`` or ``"ablate"``.

    Yields:
        A ``Steering`` record (``calls`` counts the forward calls steered). A block whose calls never
        reached the site warns on exit.

    Raises:
        ValueError: unknown site (the message lists the sites), unknown mode, a direction that is not
            one vector, or one whose size differs from the hidden size at the site.
    """
    import torch

    from mmviz._hf.residual import edit_residual
    from mmviz._hf.sites import find_site

    if mode not in MODES:
        raise ValueError(f"unknown steering mode {mode!r}; use one of {', '.join(MODES)}")
    found = find_site(model, site)
    vector = torch.as_tensor(np.asarray(direction.detach().cpu() if torch.is_tensor(direction) else direction))
    if vector.ndim != 1 or vector.numel() == 0:
        raise ValueError(f"steer: direction must be one vector [d], got shape {tuple(vector.shape)}")
    if mode == "ablate" and float(vector.norm()) == 0.0:
        raise ValueError("steer: cannot ablate a zero direction")
    chosen = _positions(positions)
    record = Steering(found.name, mode, float(alpha))

    def edit(hidden: torch.Tensor) -> torch.Tensor:
        if hidden.shape[-1] != vector.shape[0]:
            raise ValueError(
                f"steer: the direction has {vector.shape[0]} entries but the hidden state at {found.name} has "
                f"{hidden.shape[-1]}; take the direction at this site (mmviz.direction(..., site={found.name!r}))"
            )
        v = vector.to(device=hidden.device, dtype=hidden.dtype)
        n = hidden.shape[-2]
        rows = list(range(n)) if chosen is None else sorted({p % n for p in chosen if -n <= p < n})
        record.calls += 1
        if not rows:
            return hidden
        out = hidden.clone()
        part = out[..., rows, :]
        if mode == "add":
            part = part + alpha * v
        else:
            unit = v / v.norm()
            part = part - alpha * (part @ unit)[..., None] * unit
        out[..., rows, :] = part
        return out

    with edit_residual(found.blocks, found.state, edit):
        yield record
    if record.calls == 0:
        warnings.warn(
            f"mmviz.steer: no forward call reached {found.name} inside the block, so nothing was steered",
            stacklevel=3,
        )


def direction(
    model: Any,
    inputs_a: Any,
    inputs_b: Any,
    *,
    site: str,
    positions: int | Sequence[int] | None = None,
) -> np.ndarray:
    """The mean difference of the hidden states after one block between two sets of inputs.

    Each set is averaged over its examples and over the positions chosen (padding left out where the
    inputs carry an ``attention_mask``); the result is ``mean(a) − mean(b)``.

    Args:
        model: a transformers model.
        inputs_a: a batch of model inputs (a processor's output) or a list of such batches.
        inputs_b: the same for the other set.
        site: the block's dotted path or a unique tail of it (see ``steer``).
        positions: positions to average (ints, negative from the end); ``None``: every non-padding position.

    Returns:
        ``[d]`` float32 numpy vector, ``d`` the hidden size at the site.
    """
    from mmviz._hf.sites import find_site

    found = find_site(model, site)
    mean_a = _mean_state(model, inputs_a, found, _positions(positions))
    mean_b = _mean_state(model, inputs_b, found, _positions(positions))
    return (mean_a - mean_b).astype(np.float32)


def _mean_state(model: Any, inputs: Any, found: Any, positions: list[int] | None) -> np.ndarray:
    import torch

    from mmviz._hf.residual import evaluating, record_residual

    batches = [inputs] if isinstance(inputs, Mapping) or hasattr(inputs, "keys") else list(inputs)
    if not batches:
        raise ValueError("direction: a set of inputs is empty")
    total: torch.Tensor | None = None
    count = 0.0
    for batch in batches:
        with record_residual(found.blocks, [found.state]) as seen, evaluating(model):
            model(**batch)
        if len(seen[found.state]) != 1:
            raise ValueError(f"direction: the model ran {found.name} {len(seen[found.state])} times for one batch")
        hidden = seen[found.state][0].double()  # [batch, positions, d]
        weights = torch.ones(hidden.shape[:2], dtype=hidden.dtype, device=hidden.device)
        mask = batch.get("attention_mask") if hasattr(batch, "get") else None
        if mask is not None and tuple(mask.shape) == tuple(hidden.shape[:2]):
            weights = mask.to(hidden)
        if positions is not None:
            n = hidden.shape[1]
            bad = [p for p in positions if not -n <= p < n]
            if bad:
                raise ValueError(f"direction: positions {bad} do not exist at {found.name}, which has {n} positions")
            keep = torch.zeros(n, dtype=hidden.dtype, device=hidden.device)
            keep[[p % n for p in positions]] = 1.0
            weights = weights * keep
        part = (hidden * weights[..., None]).sum(dim=(0, 1))
        total = part if total is None else total + part
        count += float(weights.sum())
    assert total is not None
    if count == 0:
        raise ValueError("direction: no position was averaged (all padding, or positions empty)")
    return (total / count).cpu().numpy()
