"""Which pixels reach which sequence position: the measurement behind the derived layout.

A vision-language model turns pixels into language-model positions through a vision tower, a
projector (MLP, pixel shuffle, 2×2 merger, pooling) and a merge that scatters the image features into
the placeholder positions of the text. Only attention mixes positions; everything else (patch
embedding, norms, MLPs, pixel shuffle, merging) acts on one position or a small window. So with every
attention call replaced by the **identity** (each position keeps its own value), each position's
input to the first attention layer of a stack depends only on the pixels of the patch (or merged
block of patches) it comes from. ``trace_pixels`` runs the model that way once and measures:

* which positions change when the pixels change (a second forward with perturbed pixels): these are
  the positions the image reaches; placeholder positions it does not reach are separators (LLaVA-NeXT's
  newline tokens);
* which pixels each position owns: one backward pass per bit of the position index tells, for every
  pixel, the one position whose input it feeds (a pixel feeding several positions gives fractional
  ratios and is left out). A position that depends on pixels but owns none mixes the whole image
  (a learned query of a Q-Former or resampler) — unless no position of the stack owns any pixel:
  overlapping convolutions (Florence-2's DaViT) make every pixel feed several positions, and each
  position is placed by the centre of its receptive field instead (``mmviz.capture.layouts.overlap``,
  from forwards with bands of the pixels perturbed).

Pixels are addressed per *unit*: one entry of ``pixel_values`` (an image, or a tile of an image split
into tiles), in the order the tensor holds them; flattened patches (Qwen2-VL style ``[patches, C·T·P·P]``
with ``image_grid_thw``) are mapped back to each image's raw patch grid.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mmviz._hf.attention import register_implementation
from mmviz._hf.modules import attention_implementation, stack_names
from mmviz.capture.layouts.identity import KEY_INPUTS, legacy_identity
from mmviz.capture.layouts.overlap import place_by_receptive_field

__all__ = ["PixelLayout", "Provenance", "probe_stack", "trace_pixels"]

IDENTITY = "mmviz_identity"
"""Name of the identity attention registered with transformers while the pixels are traced."""

_PROBE: ContextVar[_Probe | None] = ContextVar("mmviz_pixel_probe", default=None)


class _Stop(Exception):
    """Ends the traced forward once every stack's first attention call has been seen."""


@dataclass
class _Probe:
    names: dict[int, tuple[str, int]]
    wanted: set[str]
    first_layer: dict[str, int] = field(default_factory=dict)
    calls: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    stop: bool = True
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per stack, the ``[batch, positions, width]`` input of its first layer (for attention of its own)."""
    key_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per legacy cross-attention stack, the ``[batch, keys, width]`` states its first layer attends to."""

    def entered(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Forward pre-hook: keeps the sequence entering a stack's first layer."""
        group, layer = self.names.get(id(module), ("", -1))
        if group not in self.wanted or group in self.inputs or self.first_layer.get(group, layer) != layer:
            return
        states = kwargs.get("hidden_states")
        if not isinstance(states, torch.Tensor):
            states = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if states is not None and states.ndim == 3 and states.is_floating_point():
            self.inputs[group] = states
            keys = next((kwargs[k] for k in KEY_INPUTS if isinstance(kwargs.get(k), torch.Tensor)), None)
            if keys is not None and keys.ndim == 3 and keys.is_floating_point():
                self.key_inputs[group] = keys

    def see(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor) -> None:
        group, layer = self.names.get(id(module), ("", -1))
        if group not in self.wanted:
            return
        first = self.first_layer.setdefault(group, layer)
        if layer == first and group not in self.done:
            self.calls.setdefault(group, []).append((query, key))
        else:
            self.done.add(group)
        if self.stop and self.done >= self.wanted:
            raise _Stop


def _identity_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *args: Any,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Every query keeps its own value (self-attention) or the mean value (other lengths): no mixing."""
    probe = _PROBE.get()
    if probe is not None:
        probe.see(module, query, key)
    b, heads, q_len, _ = query.shape
    if value.shape[1] != heads:
        value = value.repeat_interleave(heads // value.shape[1], dim=1)
    if value.shape[2] != q_len:
        value = value.mean(dim=2, keepdim=True).expand(b, heads, q_len, value.shape[-1])
    return value.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers.masking_utils import sdpa_mask

    register_implementation(IDENTITY, _identity_attention, sdpa_mask)


@dataclass
class PixelLayout:
    """Where each element of a ``pixel_values`` tensor sits: its unit (image or tile) and pixel ``(y, x)``.

    Attributes:
        unit: ``[elements]`` unit of each element of the flattened tensor.
        y: ``[elements]`` pixel row within the unit (raw patch row for flattened patches).
        x: ``[elements]`` pixel column within the unit.
        sizes: ``(height, width)`` of each unit in those coordinates.
    """

    unit: np.ndarray
    y: np.ndarray
    x: np.ndarray
    sizes: list[tuple[int, int]]

    @classmethod
    def of(cls, pixels: torch.Tensor, grid_thw: torch.Tensor | None, merge: int) -> PixelLayout | None:
        """The layout of ``[..., C, H, W]`` pixels, or of flattened patches with their ``image_grid_thw``."""
        if pixels.ndim >= 4:
            h, w = int(pixels.shape[-2]), int(pixels.shape[-1])
            n_units = int(np.prod(pixels.shape[:-3]))
            unit, _, y, x = np.unravel_index(np.arange(pixels.numel()), (n_units, pixels.shape[-3], h, w))
            return cls(unit, y, x, [(h, w)] * n_units)
        if pixels.ndim == 2 and grid_thw is not None:
            from mmviz.capture.layouts.qwen2_vl import window_order

            units, ys, xs, sizes = [], [], [], []
            for i, (t, h, w) in enumerate(torch.as_tensor(grid_thw).reshape(-1, 3).tolist()):
                rows, cols = window_order(h, w, merge)
                units.append(np.full(t * h * w, i))
                ys.append(np.tile(rows, t))
                xs.append(np.tile(cols, t))
                sizes.append((h, w))
            if sum(u.size for u in units) != pixels.shape[0]:
                return None
            per_patch = pixels.shape[1]
            return cls(
                np.repeat(np.concatenate(units), per_patch),
                np.repeat(np.concatenate(ys), per_patch),
                np.repeat(np.concatenate(xs), per_patch),
                sizes,
            )
        return None


@dataclass
class Provenance:
    """Where the positions of one side (queries or keys) of one recorded stack take their pixels from.

    Attributes:
        depends: ``[batch, positions]`` whether the position changes with the pixels.
        unit: ``[batch, positions]`` the unit whose pixels the position owns, ``-1`` if none.
        box: ``[batch, positions, 4]`` ``(y0, y1, x0, x1)`` bounding box of the owned pixels (inclusive); for
            positions placed by their receptive field, their cell of the grid the fields imply (floats).
    """

    depends: np.ndarray
    unit: np.ndarray
    box: np.ndarray


@contextlib.contextmanager
def _traced(model: torch.nn.Module, probe: _Probe) -> Iterator[None]:
    _register()
    token = _PROBE.set(probe)
    training = model.training
    model.eval()
    hooks = [
        sub.register_forward_pre_hook(probe.entered, with_kwargs=True)
        for sub in model.modules()
        if probe.names.get(id(sub), ("", -1))[0] in probe.wanted
    ]
    try:
        with attention_implementation(model, IDENTITY), legacy_identity(model, probe.names):
            yield
    finally:
        for hook in hooks:
            hook.remove()
        model.train(training)
        _PROBE.reset(token)


def _forward(model: torch.nn.Module, inputs: dict[str, Any], probe: _Probe) -> None:
    with _traced(model, probe):
        try:
            model(**inputs)
        except _Stop:
            pass


def _side_states(
    probe: _Probe, shapes: dict[str, tuple[int, int, int]]
) -> dict[tuple[str, str], tuple[torch.Tensor, tuple[int, ...]]]:
    """Per stack and side, ``([batch, positions, features] states, shape of their projection weights)``.

    The states are the recorded queries and keys (``[batch, heads, positions, dim]`` joined over heads), or
    the first layer's input for attention of its own; the shape is ``(heads, dim)`` or ``(width,)``.
    """
    out: dict[tuple[str, str], tuple[torch.Tensor, tuple[int, ...]]] = {}
    for group, states in probe.inputs.items():
        if group in probe.calls:
            continue
        # attention of its own (legacy): the states its first layer attends from, and to (cross-attention)
        keys = probe.key_inputs.get(group)
        for side, side_states, length in (("query", states, shapes[group][1]), ("key", keys, shapes[group][2])):
            if side_states is not None and side_states.shape[1] == length:
                out[(group, side)] = (side_states.float(), (side_states.shape[-1],))
    for group, calls in probe.calls.items():
        _, q_len, k_len = shapes[group]
        self_attention = all(q.shape[2] == k.shape[2] for q, k in calls) and "cross" not in group
        for side, index, length in (("query", 0, q_len), ("key", 1, k_len)):
            if side == "key" and self_attention:
                continue
            parts = [c[index] for c in calls]
            joined = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
            if joined.shape[2] != length and len(parts) > 1:
                joined = parts[0]
            b, heads, n, dim = joined.shape
            out[(group, side)] = (joined.float().transpose(1, 2).reshape(b, n, heads * dim), (heads, dim))
    return out


def _sides(probe: _Probe, shapes: dict[str, tuple[int, int, int]]) -> dict[tuple[str, str], torch.Tensor]:
    """Per stack and side, ``[batch, positions]`` scalar functions of the recorded queries and keys."""
    out: dict[tuple[str, str], torch.Tensor] = {}
    gen = torch.Generator().manual_seed(0)
    for key, (states, shape) in _side_states(probe, shapes).items():
        weights = torch.randn(*shape, generator=gen).reshape(-1).to(states.device, torch.float32)
        out[key] = states @ weights
    return out


def _responder(
    model: torch.nn.Module,
    rest: dict[str, Any],
    pixel_key: str,
    names: dict[int, tuple[str, int]],
    shapes: dict[str, tuple[int, int, int]],
    key: tuple[str, str],
) -> Callable[[list[torch.Tensor]], list[torch.Tensor]]:
    """A function from pixel tensors to the ``[positions, features]`` states of ``key`` each gives, one forward.

    The tensors run as one batch (every tensor input repeated once per pixel tensor); a model whose
    inputs do not batch that way raises ``ValueError`` (the caller then runs them one at a time).
    """
    wanted = {key[0]: shapes[key[0]]}

    def respond(batch: list[torch.Tensor]) -> list[torch.Tensor]:
        k = len(batch)
        run = {n: torch.cat([v] * k) if isinstance(v, torch.Tensor) and v.ndim else v for n, v in rest.items()}
        probe = _Probe(names, set(wanted))
        with torch.no_grad():
            _forward(model, {**run, pixel_key: torch.cat(batch) if k > 1 else batch[0]}, probe)
        states = _side_states(probe, wanted).get(key)
        if states is None or states[0].shape[0] % k:
            raise ValueError(f"the forward of {k} pixel tensors gave no batch of {key[0]!r} {key[1]} states")
        return list(states[0].reshape(k, -1, states[0].shape[-1]))

    return respond


def trace_pixels(
    model: torch.nn.Module,
    inputs: dict[str, Any],
    shapes: dict[str, tuple[int, int, int]],
    pixel_key: str = "pixel_values",
    merge: int = 2,
) -> tuple[dict[tuple[str, str], Provenance], PixelLayout] | None:
    """Measures which pixels reach which position of each recorded stack (see the module docstring).

    Args:
        model: the vision-language model.
        inputs: its forward inputs (tensors on any device; moved to the model's device).
        shapes: recorded stack name → ``(batch, query length, key length)``.
        pixel_key: the input holding the pixels.
        merge: spatial merge size, for flattened patches with ``image_grid_thw``.

    Returns:
        ``(provenance per (stack, side), pixel layout)``, or ``None`` when the pixels have a layout this
        does not know or no stack's input depends on them.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    pixels = inputs[pixel_key].to(device)
    layout = PixelLayout.of(pixels.cpu(), inputs.get("image_grid_thw"), merge)
    if layout is None or not pixels.is_floating_point():
        return None
    rest = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items() if k != pixel_key}
    rest["use_cache"] = False
    names = stack_names(model)

    # 1. which positions the pixels reach: a forward with perturbed pixels (zeros, e.g. padding tiles, stay)
    with torch.no_grad():
        base = _probe_sides(model, {**rest, pixel_key: pixels}, names, shapes)
        noise = torch.empty_like(pixels).uniform_(0.2, 0.6, generator=torch.Generator(device).manual_seed(1))
        moved = _probe_sides(model, {**rest, pixel_key: pixels * (1 + noise)}, names, shapes)
    depends = {}
    for key, value in base.items():
        if key not in moved or moved[key].shape != value.shape:
            continue
        scale = value.abs().amax().clamp_min(1e-12)
        depends[key] = ((moved[key] - value).abs() > 1e-5 * scale).cpu().numpy()
    if not any(d.any() for d in depends.values()):
        return None

    # 2. which pixels each position owns, stack by stack (a pixel feeds one position of each stack):
    # one backward pass for all positions, then one per bit of the position index
    out = {}
    placed: dict[tuple[Any, bytes], tuple[np.ndarray, np.ndarray]] = {}
    with torch.enable_grad():
        leaf = pixels.detach().clone().requires_grad_(True)
        sides = {k: v for k, v in _probe_sides(model, {**rest, pixel_key: leaf}, names, shapes).items() if k in depends}
        for k, values in sides.items():
            flat = values.reshape(-1)
            index = torch.arange(flat.numel(), device=flat.device)
            bits = max(int(flat.numel() - 1).bit_length(), 1)
            grads = []
            for bit in range(-1, bits):
                weight = torch.ones_like(flat) if bit < 0 else ((index >> bit) & 1).to(flat.dtype)
                (grad,) = torch.autograd.grad((flat * weight).sum(), leaf, retain_graph=True, allow_unused=True)
                grads.append(torch.zeros_like(leaf) if grad is None else grad)
            owner = _owners([g.detach().float().reshape(-1).cpu() for g in grads])
            unit, box = _boxes(owner, layout, flat.numel())
            lost = depends[k].reshape(-1) & (unit < 0)
            if lost.any() and not (unit >= 0).any():  # overlapping convolutions: no pixel has one position
                seen = (depends[k].shape, depends[k].tobytes())  # the same sequence again (an encoder's output)
                if seen not in placed:
                    respond = _responder(model, rest, pixel_key, names, shapes, k)
                    placed[seen] = place_by_receptive_field(flat, leaf, layout, lost, unit, box, respond)
                unit, box = placed[seen]
            out[k] = Provenance(
                depends[k].reshape(values.shape), unit.reshape(values.shape), box.reshape(*values.shape, 4)
            )
    return out, layout


def _probe_sides(
    model: torch.nn.Module, inputs: dict[str, Any], names: dict[int, tuple[str, int]], shapes: dict[str, Any]
) -> dict[tuple[str, str], torch.Tensor]:
    probe = _Probe(names, set(shapes))
    _forward(model, inputs, probe)
    return _sides(probe, shapes)


def probe_stack(
    model: torch.nn.Module,
    inputs: dict[str, Any],
    names: dict[int, tuple[str, int]],
    stack: str,
    pixel_key: str,
    pixels: torch.Tensor,
    side: str = "query",
) -> torch.Tensor:
    """``[batch, positions]`` projection of ``stack``'s first queries or keys, from a forward with identity attention.

    Args:
        model: the model.
        inputs: its forward inputs without the pixels.
        names: ``id(module)`` → ``(stack, layer)`` (``mmviz._hf.modules.stack_names``).
        stack: the stack whose queries are projected.
        pixel_key: the input name of the pixels.
        pixels: the pixels to run with.
        side: ``"query"`` or ``"key"`` (the keys of a cross-attention).
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    run = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items() if k != pixel_key}
    with torch.no_grad():
        probe = _Probe(names, {stack})
        _forward(model, {**run, "use_cache": False, pixel_key: pixels.to(device)}, probe)
    if stack in probe.calls:
        calls = probe.calls[stack]
        query, key = calls[0]
        shape = (query.shape[0], query.shape[2], key.shape[2])
        if len(calls) > 1 and all(q.shape[2] == k.shape[2] for q, k in calls):  # pieces of one sequence
            length = sum(q.shape[2] for q, _ in calls)
            shape = (query.shape[0], length, length)
    elif stack in probe.inputs:
        states = probe.inputs[stack]
        keys = probe.key_inputs.get(stack, states)
        shape = (states.shape[0], states.shape[1], keys.shape[1])
    else:
        raise ValueError(f"the model ran no attention of stack {stack!r} (stacks seen: {sorted(probe.first_layer)})")
    sides = _sides(probe, {stack: shape})
    if (stack, side) not in sides:
        raise ValueError(f"stack {stack!r} has no {side} side of its own (self-attention: use 'query')")
    return sides[(stack, side)].cpu()


def _owners(grads: list[torch.Tensor]) -> np.ndarray:
    """For every pixel element, the one position index whose input it feeds (``-1``: none or several)."""
    total = grads[0]
    live = total.abs() > total.abs().max() * 1e-6
    owner = torch.zeros_like(total, dtype=torch.int64)
    consistent = live.clone()
    safe = torch.where(live, total, torch.ones_like(total))
    for bit, grad in enumerate(grads[1:]):
        ratio = grad / safe
        rounded = ratio.round()
        consistent &= ((ratio - rounded).abs() < 1e-3) & ((rounded == 0) | (rounded == 1))
        owner |= rounded.clamp(0, 1).to(torch.int64) << bit
    return torch.where(consistent, owner, torch.full_like(owner, -1)).numpy()


def _boxes(owner: np.ndarray, layout: PixelLayout, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per position ``0 … n-1``: its unit (the one it owns most pixels of) and the box there."""
    unit = np.full(n, -1, dtype=np.int64)
    box = np.full((n, 4), -1, dtype=np.int64)
    hit = np.flatnonzero((owner >= 0) & (owner < n))
    if hit.size == 0:
        return unit, box
    pos = owner[hit]
    units = layout.unit[hit]
    n_units = len(layout.sizes)
    counts = np.zeros((n, n_units), dtype=np.int64)
    np.add.at(counts, (pos, units), 1)
    best = counts.argmax(axis=1)
    owned = counts.max(axis=1) > 0
    keep = units == best[pos]
    pos, ys, xs = pos[keep], layout.y[hit][keep], layout.x[hit][keep]
    y0 = np.full(n, np.iinfo(np.int64).max)
    x0 = np.full(n, np.iinfo(np.int64).max)
    y1 = np.full(n, -1)
    x1 = np.full(n, -1)
    np.minimum.at(y0, pos, ys)
    np.minimum.at(x0, pos, xs)
    np.maximum.at(y1, pos, ys)
    np.maximum.at(x1, pos, xs)
    unit[owned] = best[owned]
    box[owned] = np.stack([y0, y1, x0, x1], axis=1)[owned]
    return unit, box
