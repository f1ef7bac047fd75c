"""The recording attention function registered in transformers' attention interface.

``mmviz_record`` is registered once, with a matching mask function. A model is switched to it only
inside a ``with mmviz.capture(...)`` block. The function looks up the active recorder in a
``ContextVar``:

* for a layer being recorded densely it calls the model's *own* eager attention function (found in the
  module that defines the attention class), so outputs and probabilities are exactly those of
  ``attn_implementation="eager"`` with ``output_attentions=True``;
* for every other layer it calls the implementation the model had before the capture (sdpa or eager),
  so layers that are not recorded keep their speed;
* with ``store="qk"`` it calls the original implementation and keeps the queries, keys and mask.

Outside a capture (no active recorder) the function behaves like sdpa, so a registration left in the
global table changes nothing for models that were never switched to it.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import torch

from mmviz._hf.attention import additive_mask, model_eager_function, register_implementation

if TYPE_CHECKING:
    from mmviz.capture._recorder import Recorder

IMPLEMENTATION = "mmviz_record"
ACTIVE: ContextVar[list[Recorder] | None] = ContextVar("mmviz_active_recorders", default=None)


def active_recorder() -> Recorder | None:
    """The innermost active recorder, or ``None`` outside captures."""
    stack = ACTIVE.get()
    return stack[-1] if stack else None


def register() -> None:
    """Registers ``mmviz_record`` with transformers' attention and mask interfaces (idempotent)."""
    register_implementation(IMPLEMENTATION, record_attention, _record_mask)


def _record_mask(*args: Any, **kwargs: Any) -> Any:
    """Builds the 4D mask: float additive (as for eager) when dense, boolean (as for sdpa) for ``qk``.

    Dense captures take eager's mask, which is never left out for causal attention, so recorded layers
    see exactly what ``attn_implementation="eager"`` sees (an sdpa mask may be ``None`` and leave
    causality to a flag that eager does not read). Unrecorded sdpa layers accept the float mask.
    """
    from transformers.masking_utils import eager_mask, sdpa_mask

    recorder = active_recorder()
    if recorder is not None and recorder.wants_qk(kwargs.get("kv_length", args[2] if len(args) > 2 else 0)):
        return sdpa_mask(*args, **kwargs)
    return eager_mask(*args, **kwargs)


CHUNK_FROM = 4 << 20
"""Recorded layers whose float32 scores take more bytes than this are computed in blocks of query rows."""
CHUNKS = 64
"""Blocks per such layer: the transient scores stay near 1/64 of the layer (3% of its float16 store)."""


def chunk_rows(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, kwargs: dict[str, Any]) -> int | None:
    """Query rows per block for a recorded layer, or ``None`` to compute the layer in one call.

    Softmax attention is computed row by row, so calling the model's own eager function on blocks of
    query rows gives the same outputs and probabilities. Layers whose scores take at most
    ``CHUNK_FROM`` bytes run whole, as do calls whose extra arguments carry per-query tensors
    (position biases) that would need slicing too, and calls whose probabilities go back to the caller
    (``output_attentions=True``), who gets them exactly as eager computes them.
    """
    batch, heads, n, _ = query.shape
    if n < 2 or batch * heads * n * key.shape[2] * 4 <= CHUNK_FROM or attentions_returned():
        return None
    if mask is not None and (mask.ndim != 4 or mask.shape[2] not in (1, n)):
        return None
    if any(isinstance(v, torch.Tensor) and v.ndim >= 3 for v in kwargs.values()):
        return None
    return -(-n // CHUNKS)


def attentions_returned() -> bool:
    """Whether the running forward hands attention probabilities back (``output_attentions=True``).

    Read from transformers' output collector; where there is none (a model that does not collect its
    outputs that way) the answer is yes, so nothing changes for it.
    """
    try:
        from transformers.utils.output_capturing import _active_collector

        collected = _active_collector.get()
    except Exception:  # another transformers layout: assume the caller wants them
        return True
    return not isinstance(collected, dict) or any("attentions" in key for key in collected)


def call_original(
    implementation: str,
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Runs the implementation the model had before the capture (sdpa for kernels that need other masks)."""
    if implementation == "eager":
        mask = additive_mask(attention_mask, query, key, module, kwargs, eager_model=True)
        return model_eager_function(module)(module, query, key, value, mask, **kwargs)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def record_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The ``mmviz_record`` attention function (see the module docstring).

    Args:
        module: the attention module calling.
        query: ``[batch, heads, query, dim]``.
        key: ``[batch, kv_heads, key, dim]``.
        value: ``[batch, kv_heads, key, dim]``.
        attention_mask: 4D mask built by the registered mask function, or ``None``.
        **kwargs: ``scaling``, ``dropout`` and model-specific arguments, passed through.

    Returns:
        ``(output [batch, query, heads, dim], probabilities [batch, heads, query, key] or None)``.
    """
    stack = ACTIVE.get() or []
    wanted = [(r, t) for r in reversed(stack) if (t := r.target(module)) is not None]
    owner = next((r for r in reversed(stack) if r.owns(module)), None)
    implementation = owner.original_implementation(module) if owner is not None else "sdpa"
    dense = []
    for r, t in wanted:
        if r.wants_qk(key.shape[2]):
            r.add_qk(t, module, query, key, attention_mask, kwargs)
        else:
            dense.append((r, t))
    if not dense:
        return call_original(implementation, module, query, key, value, attention_mask, **kwargs)
    mask = additive_mask(attention_mask, query, key, module, kwargs, eager_model=implementation == "eager")
    eager = model_eager_function(module)
    rows = chunk_rows(query, key, mask, kwargs)
    if rows is None:
        whole, probs = eager(module, query, key, value, mask, **kwargs)
        for r, t in dense:
            r.add_dense(t, probs, query=query)
        return whole, probs
    # a big layer: its query rows in blocks, each written into the float16 store as it comes, so the
    # eager function's float32 scores never exist for the whole layer at once
    n = query.shape[2]
    out: torch.Tensor | None = None
    stored: torch.Tensor | None = None
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        block_mask = mask if mask is None or mask.shape[2] == 1 else mask[:, :, start:stop]
        block, probs = eager(module, query[:, :, start:stop], key, value, block_mask, **kwargs)
        if out is None:  # [batch, query, heads, dim], filled block by block
            out = block.new_empty((block.shape[0], n, *block.shape[2:]))
        out[:, start:stop] = block
        stores = [r.add_dense(t, probs, rows=(start, stop, n), query=query) for r, t in dense]  # every recorder writes
        stored = stores[0]
        del block, probs
    assert out is not None
    return out, stored
