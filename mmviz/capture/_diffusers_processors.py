"""Recording attention processors for diffusers denoisers.

Each processor computes its output exactly as the diffusers processor it replaces (same operations in the
same order, same kernel), so the generated image does not change; when the running
``DiffusionCapture`` asks for the current call, it also computes the
attention probabilities of the image positions over the prompt tokens for the recorded batch rows and hands
them over, reduced over heads unless heads are kept.

- ``CrossAttnRecorder`` replaces ``AttnProcessor2_0`` on ``attn2`` of UNet and PixArt blocks;
  ``WrappedCrossAttnRecorder`` wraps any other ``attn2`` processor (its output is the wrapped
  processor's; the probabilities are recomputed from ``to_q``/``to_k``).
- ``JointAttnRecorder`` replaces ``JointAttnProcessor2_0`` (SD3): image and text share one softmax,
  ``[image, text]``; the map is the image-query → text-key block of it.
- ``FluxAttnRecorder`` replaces ``FluxAttnProcessor``: ``[text, image]`` in double-stream blocks and
  in the joint sequence of single-stream blocks.

With ``capture(pipe, concepts=[...])`` the joint and PixArt recorders also hand their image keys, values and
attention outputs to the capture's ``ConceptStream`` (``mmviz.capture._concepts``), which only reads them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from mmviz.capture._diffusers import DiffusionCapture

__all__ = ["CrossAttnRecorder", "FluxAttnRecorder", "JointAttnRecorder", "WrappedCrossAttnRecorder"]

_CHUNK_ELEMENTS = 1 << 24
"""Largest score block (elements) computed at once for joint attention."""


def _masked_scores(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return scores
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, float("-inf"))
    return scores + mask.to(scores.dtype)


def _image_to_text(
    query: torch.Tensor,
    key: torch.Tensor,
    text: slice,
    keep: torch.Tensor,
    heads: bool,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Probabilities that image queries pay to the kept text keys, the softmax running over all keys.

    Args:
        query: ``[batch, heads, image, dim]`` image queries.
        key: ``[batch, heads, keys, dim]`` all keys of the softmax.
        text: the text keys within ``keys``.
        keep: ``[tokens]`` indices of the stored tokens within the text keys.
        heads: keep the heads (else mean over heads).
        mask: additive or boolean mask broadcastable to ``[batch, heads, image, keys]``.

    Returns:
        ``[batch, tokens, image]`` float32 (``[batch, heads, tokens, image]`` with ``heads``).
    """
    scale = 1.0 / math.sqrt(query.shape[-1])
    b, h, n, _ = query.shape
    chunk = max(1, _CHUNK_ELEMENTS // max(1, b * h * key.shape[2]))
    key_t = key.transpose(-1, -2)
    parts = []
    for start in range(0, n, chunk):
        q = query[:, :, start : start + chunk] * scale  # scaling the queries is cheaper than the scores
        scores = torch.matmul(q, key_t).float()
        if mask is not None:
            m = mask if mask.shape[-2] == 1 else mask[..., start : start + chunk, :]
            scores = _masked_scores(scores, m)
        probs = scores.softmax(dim=-1)[..., text].index_select(-1, keep)
        parts.append(probs if heads else probs.mean(dim=1))
    probs = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-2)
    return probs.transpose(-1, -2)


def _split_heads(attn: Any, x: torch.Tensor) -> torch.Tensor:
    """``[batch, n, heads * dim]`` -> ``[batch, heads, n, dim]``."""
    return x.view(x.shape[0], -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)


def _image_states(attn: Any, hidden_states: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
    """What ``AttnProcessor2_0`` projects: spatial norm, ``[b, c, h, w]`` -> ``[b, h*w, c]``, group norm."""
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    if hidden_states.ndim == 4:
        hidden_states = hidden_states.flatten(2).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    return hidden_states


def _context(attn: Any, states: torch.Tensor, encoder_hidden_states: torch.Tensor | None) -> torch.Tensor:
    """The keys' source: the prompt states (cross-normed where the block norms them), else the image states."""
    if encoder_hidden_states is None:
        return states
    if attn.norm_cross:
        return attn.norm_encoder_hidden_states(encoder_hidden_states)
    return encoder_hidden_states


def _query_key(
    attn: Any, states: torch.Tensor, context: torch.Tensor, added: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head queries of ``states`` and keys of ``context``, with the block's ``norm_q`` / ``norm_k``.

    With ``added``, the joint block's projections and norms of the text stream (``add_q_proj``,
    ``add_k_proj``, ``norm_added_q``, ``norm_added_k``).
    """
    if added:
        to_q, to_k, norm_q, norm_k = attn.add_q_proj, attn.add_k_proj, attn.norm_added_q, attn.norm_added_k
    else:
        to_q, to_k, norm_q, norm_k = attn.to_q, attn.to_k, attn.norm_q, attn.norm_k
    query = _split_heads(attn, to_q(states))
    key = _split_heads(attn, to_k(context))
    if norm_q is not None:
        query = norm_q(query)
    if norm_k is not None:
        key = norm_k(key)
    return query, key


class CrossAttnRecorder:
    """``AttnProcessor2_0`` (diffusers 0.42) that also records ``attn2`` probabilities.

    Args:
        session: the capture that receives the maps.
        slot: this layer's index in the capture.
    """

    def __init__(self, session: DiffusionCapture, slot: int) -> None:
        self.session = session
        self.slot = slot

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        residual = hidden_states
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
        states = _image_states(attn, hidden_states, temb)
        batch_size = states.shape[0]
        context = _context(attn, states, encoder_hidden_states)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        query, key = _query_key(attn, states, context)
        value = _split_heads(attn, attn.to_v(context))
        head_dim = key.shape[-1]

        request = self.session.request(self.slot, key.shape[2])
        if request is not None:
            rows, keep = request
            mask = None if attention_mask is None else attention_mask[rows]
            probs = _image_to_text(query[rows], key[rows], slice(None), keep, self.session.heads, mask)
            self.session.store(self.slot, probs, attn.heads)

        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        if self.session.concepts is not None and encoder_hidden_states is not None:
            self.session.concepts.cross(self.slot, attn, hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        hidden_states = hidden_states / attn.rescale_output_factor
        return hidden_states


class WrappedCrossAttnRecorder:
    """Wraps any other ``attn2`` processor: its output is the wrapped processor's own.

    The probabilities are recomputed from ``to_q`` and ``to_k`` (costing one more query projection), with
    the text keys only (extra keys a processor appends, e.g. IP-Adapter image tokens, are not seen).
    """

    def __init__(self, session: DiffusionCapture, slot: int, original: Any) -> None:
        self.session = session
        self.slot = slot
        self.original = original

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        out: torch.Tensor = self.original(
            attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask,
            temb=temb, **kwargs,
        )  # fmt: skip
        context = encoder_hidden_states
        if context is None:
            return out
        request = self.session.request(self.slot, self.session.text_length or context.shape[1])
        if request is None:
            return out
        rows, keep = request
        with torch.no_grad():
            states = _image_states(attn, hidden_states, temb)
            context = _context(attn, states, context[:, : self.session.text_length or context.shape[1]])
            query, key = _query_key(attn, states[rows], context[rows])
            mask = None
            if attention_mask is not None:
                full = attn.prepare_attention_mask(attention_mask, key.shape[2], hidden_states.shape[0])
                mask = full.view(hidden_states.shape[0], attn.heads, -1, full.shape[-1])[rows][..., : key.shape[2]]
            probs = _image_to_text(query, key, slice(None), keep, self.session.heads, mask)
        self.session.store(self.slot, probs, attn.heads)
        return out


class JointAttnRecorder:
    """``JointAttnProcessor2_0`` (SD3, diffusers 0.42) that also records the image → text block."""

    def __init__(self, session: DiffusionCapture, slot: int) -> None:
        self.session = session
        self.slot = slot

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        residual = hidden_states
        batch_size = hidden_states.shape[0]
        query, key = _query_key(attn, hidden_states, hidden_states)
        value = _split_heads(attn, attn.to_v(hidden_states))
        head_dim = key.shape[-1]
        image_key, image_value = key, value
        if encoder_hidden_states is not None:
            c_query, c_key = _query_key(attn, encoder_hidden_states, encoder_hidden_states, added=True)
            c_value = _split_heads(attn, attn.add_v_proj(encoder_hidden_states))
            n_image = query.shape[2]
            query = torch.cat([query, c_query], dim=2)
            key = torch.cat([key, c_key], dim=2)
            value = torch.cat([value, c_value], dim=2)
            request = self.session.request(self.slot, c_key.shape[2])
            if request is not None:
                rows, keep = request
                probs = _image_to_text(
                    query[rows][:, :, :n_image], key[rows], slice(n_image, None), keep, self.session.heads
                )
                self.session.store(self.slot, probs, attn.heads)

        hidden_states = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = (
                hidden_states[:, : residual.shape[1]],
                hidden_states[:, residual.shape[1] :],
            )
            if self.session.concepts is not None:
                self.session.concepts.joint(self.slot, attn, image_key, image_value, hidden_states)
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if encoder_hidden_states is not None:
            return hidden_states, encoder_hidden_states
        return hidden_states


class FluxAttnRecorder:
    """``FluxAttnProcessor`` (diffusers 0.42) that also records the image → text block.

    Double-stream blocks get the text as ``encoder_hidden_states``; single-stream blocks get the joint
    ``[text, image]`` sequence, and the text length comes from the capture (the denoiser's context).
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self, session: DiffusionCapture, slot: int, original: Any) -> None:
        self.session = session
        self.slot = slot
        self._attention_backend = getattr(original, "_attention_backend", None)
        self._parallel_config = getattr(original, "_parallel_config", None)

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.embeddings import apply_rotary_emb
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections

        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states
        )
        query = query.unflatten(-1, (-1, attn.head_dim))
        key = key.unflatten(-1, (-1, attn.head_dim))
        value = value.unflatten(-1, (-1, attn.head_dim))
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        if attn.added_kv_proj_dim is not None:
            encoder_query = encoder_query.unflatten(-1, (-1, attn.head_dim))
            encoder_key = encoder_key.unflatten(-1, (-1, attn.head_dim))
            encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))
            encoder_query = attn.norm_added_q(encoder_query)
            encoder_key = attn.norm_added_k(encoder_key)
            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        n_text = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else self.session.text_length
        if n_text:
            request = self.session.request(self.slot, n_text)
            if request is not None:
                rows, keep = request
                q = query[rows][:, n_text:].transpose(1, 2)  # [b, heads, image, dim]
                k = key[rows].transpose(1, 2)
                mask = None
                if attention_mask is not None:
                    mask = attention_mask[rows] if attention_mask.shape[0] == query.shape[0] else attention_mask
                    if mask.ndim == 4 and mask.shape[-2] > 1:
                        mask = mask[..., n_text:, :]
                probs = _image_to_text(q, k, slice(0, n_text), keep, self.session.heads, mask)
                self.session.store(self.slot, probs, query.shape[2])

        hidden_states = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        hidden_states = hidden_states.flatten(2, 3)
        hidden_states = hidden_states.to(query.dtype)
        if encoder_hidden_states is not None:
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1
            )
            if self.session.concepts is not None:
                n = encoder_hidden_states.shape[1]
                self.session.concepts.joint(
                    self.slot, attn, key[:, n:].transpose(1, 2), value[:, n:].transpose(1, 2), hidden_states
                )
            hidden_states = attn.to_out[0](hidden_states.contiguous())
            hidden_states = attn.to_out[1](hidden_states)
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
            return hidden_states, encoder_hidden_states
        return hidden_states
