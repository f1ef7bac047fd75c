"""Concept maps for diffusion transformers: ConceptAttention (Helbling et al., 2025), re-implemented.

``mmviz.capture(pipe, concepts=["cat", "sky"])`` adds, for every recorded denoising step, a small stream
of concept tokens beside the prompt's tokens:

- **Encoding.** Each concept is encoded by the pipeline's own ``encode_prompt`` (its text encoders, the
  prompt's sequence length) and represented by **one context vector: its first token** — the first T5
  token for Flux and PixArt (as ConceptAttention does for Flux), the first T5 token for SD3 (the first
  CLIP word token after BOS when the pipeline has no T5). The vector enters the denoiser through the same
  projection as the prompt (``context_embedder``; PixArt: ``caption_projection``).
- **Joint attention (SD3, Flux double-stream blocks).** In every joint block the concept tokens are
  normalised and modulated by the block's text-stream norm (``norm1_context``, with the block's own
  ``temb``: timestep and pooled prompt vector, as the prompt's tokens get; ConceptAttention's Flux code
  gives the concepts a zero pooled vector), projected by the text stream's ``add_q/k/v_proj`` (and
  ``norm_added_q/k``), and their queries attend to the concept keys and the image keys (one way: no
  image or prompt token reads them; Flux's concept positions have rotary id 0, so no rotation, as in
  ConceptAttention). Their attention output updates the concept residual stream with the text stream's
  weights (``to_add_out``, the gates, ``norm2_context``, ``ff_context``), layer by layer, like the
  prompt's tokens.
- **The map**, per step and layer, is taken in attention-output space (heads concatenated, before the
  output projection): the dot product between each image token's attention output (the real one, over
  prompt and image) and each concept's attention output, **softmaxed over the concepts** (as the paper
  does); at every image position the concepts sum to one.
- **PixArt (cross-attention).** Its prompt is not updated from block to block, so the concepts are not
  either; in each ``attn2`` the map compares the image's cross-attention output (before ``to_out``) with
  each concept's value vector through the same ``to_v`` (the space that output is a mixture of),
  softmaxed over the concepts. It needs diffusers' default ``attn2`` processor: a layer whose custom
  processor is wrapped (``WrappedCrossAttnRecorder``) gets word maps only.
- Flux's single-stream blocks have no concept map: the concept stream stops after the double-stream
  blocks (as in ConceptAttention).

Nothing of this feeds back into the denoiser, so the generated image is the uncaptured one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from mmviz.errors import CaptureError

if TYPE_CHECKING:
    from mmviz.capture._diffusers import DiffusionCapture

__all__ = ["MAX_CONCEPTS", "ConceptStream", "check_concepts"]

MAX_CONCEPTS = 32
"""Most concepts one capture accepts (each adds a map per step and layer)."""

_FAMILIES = {"SD3": "joint", "Flux": "joint", "PixArt": "cross"}


def check_concepts(concepts: Any) -> tuple[str, ...]:
    """The concept words, validated: a list of 2 to ``MAX_CONCEPTS`` distinct non-empty strings."""
    if isinstance(concepts, str) or not isinstance(concepts, Sequence):
        raise TypeError(f"concepts= takes a list of words, e.g. concepts=['cat', 'sky'], not {concepts!r}")
    bad = [c for c in concepts if not isinstance(c, str)]
    if bad:
        raise TypeError(f"concepts must be strings; got {bad!r}")
    words = tuple(c.strip() for c in concepts)
    if any(not w for w in words):
        raise ValueError(f"concepts must be non-empty words; got {list(concepts)!r}")
    if len(words) < 2:
        raise ValueError(
            "concept maps are a softmax over the concepts, so one concept alone would be 1 everywhere: give at "
            "least two (e.g. add 'background')"
        )
    if len(words) > MAX_CONCEPTS:
        raise ValueError(
            f"{len(words)} concepts is more than the {MAX_CONCEPTS} one capture takes; capture them in several runs"
        )
    lowered = [w.lower() for w in words]
    twice = sorted({w for w in lowered if lowered.count(w) > 1})
    if twice:
        raise ValueError(f"concepts must be distinct; repeated: {twice}")
    return words


def _family(pipe: Any, denoiser: Any) -> str:
    name = type(denoiser).__name__
    for prefix in _FAMILIES:
        if name.startswith(prefix):
            if pipe is None:
                raise CaptureError(
                    "concepts= needs the pipeline (its text encoders encode the concepts): pass the pipeline, not "
                    f"its {name}"
                )
            return prefix
    if hasattr(denoiser, "down_blocks"):
        raise CaptureError(
            f"concept maps (ConceptAttention) need a diffusion transformer (SD3, Flux or PixArt); {name} is a UNet. "
            "For SD 1.x/2.x or SDXL, put the word in the prompt and read its cross-attention map with "
            "cap.cross_attention.heatmap(word)"
        )
    raise CaptureError(f"concept maps are implemented for SD3, Flux and PixArt transformers, not for {name}")


def encode_concepts(pipe: Any, family: str, concepts: Sequence[str], text_length: int, device: Any) -> torch.Tensor:
    """``[concepts, context_dim]``: each concept's first-token context vector, encoded as the prompt is.

    Args:
        pipe: the pipeline (its ``encode_prompt``).
        family: ``"SD3"``, ``"Flux"`` or ``"PixArt"``.
        concepts: the words.
        text_length: context positions of the running denoiser call (sets the T5 length).
        device: where the denoiser runs.
    """
    words = list(concepts)
    if family == "SD3":
        clip_length = int(getattr(pipe, "tokenizer_max_length", 77) or 77)
        embeds = pipe.encode_prompt(
            words, None, None, device=device, do_classifier_free_guidance=False,
            clip_skip=getattr(pipe, "_clip_skip", None), max_sequence_length=max(1, text_length - clip_length),
        )[0]  # fmt: skip
        position = clip_length if getattr(pipe, "text_encoder_3", None) is not None else 1
    elif family == "Flux":
        embeds = pipe.encode_prompt(words, None, device=device, max_sequence_length=text_length)[0]
        position = 0
    else:
        embeds = pipe.encode_prompt(
            words, do_classifier_free_guidance=False, device=device, max_sequence_length=text_length
        )[0]
        position = 0
    return embeds[:, position]


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[b, n, heads * dim]`` -> ``[b, heads, n, dim]``."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


class ConceptStream:
    """The concept tokens of one capture: encoded per pipeline call, carried through the joint blocks.

    Args:
        session: the capture (it stores the maps and knows the recorded rows).
        concepts: validated concept words.
        pipe: the pipeline.
        denoiser: its transformer.
    """

    def __init__(self, session: DiffusionCapture, concepts: tuple[str, ...], pipe: Any, denoiser: Any) -> None:
        self.session = session
        self.concepts = concepts
        self.family = _family(pipe, denoiser)
        self.pipe = pipe
        self.denoiser = denoiser
        self.encoding = False
        """True while the concepts are being encoded (the capture's encoder hooks ignore those calls)."""
        self._embeds: torch.Tensor | None = None
        self._rows = slice(None)
        self._n_rows = 0
        self._fresh = False
        """A recorded call began and the stream is not projected yet (done inside the denoiser's forward,
        where offloading hooks have put its weights on their device)."""
        self._states: torch.Tensor | None = None
        self._block: tuple[Any, tuple[torch.Tensor, ...]] | None = None
        self._output: torch.Tensor | None = None

    @property
    def info(self) -> str:
        """How the concepts were encoded, for the trace's ``info``."""
        if self.family == "SD3" and getattr(self.pipe, "text_encoder_3", None) is None:
            return "first CLIP word token, in the joint blocks"
        where = "cross-attention value space" if self.family == "PixArt" else "the joint blocks"
        return f"first T5 token, in {where}"

    def maps_layer(self, name: str, module: Any) -> bool:
        """Whether the recorded layer ``name`` gets concept maps.

        PixArt's ``attn2`` needs diffusers' default processor (replaced by ``CrossAttnRecorder``, which hands
        over the output before ``to_out``); a wrapped custom processor gets word maps only.
        """
        if self.family == "PixArt":
            kind = type(getattr(module, "processor", None)).__name__
            return name.endswith("attn2") and kind in ("AttnProcessor2_0", "CrossAttnRecorder")
        return name.startswith("transformer_blocks.") and getattr(module, "add_q_proj", None) is not None

    def install(self, layers: Sequence[tuple[str, Any]]) -> list[Callable[[], None]]:
        """Hooks the blocks of the joint layers (their text-stream norm and update); returns the undo calls."""
        undo: list[Callable[[], None]] = []
        if self.family == "PixArt":
            return undo
        for name, module in layers:
            if not self.maps_layer(name, module):
                continue
            block = self.denoiser.get_submodule(name.rsplit(".", 1)[0])
            undo.append(block.register_forward_pre_hook(self._before_block, with_kwargs=True).remove)
            undo.append(block.register_forward_hook(self._after_block).remove)
        return undo

    # -- one denoiser call ----------------------------------------------------------------------------
    def start(self, first_step: bool, rows: slice, context: torch.Tensor) -> None:
        """A recorded denoiser call begins: (re-)encodes at a pipeline call's first step, resets the stream."""
        if first_step or self._embeds is None:
            self.encoding = True
            try:
                with torch.no_grad():
                    embeds = encode_concepts(
                        self.pipe, self.family, self.concepts, int(context.shape[1]), context.device
                    )
            finally:
                self.encoding = False
            self._embeds = embeds.to(context.dtype)
        self._rows = rows
        self._n_rows = len(range(context.shape[0])[rows])
        self._states, self._block, self._output, self._fresh = None, None, None, True

    def stop(self) -> None:
        """The denoiser call ended."""
        self._states, self._block, self._output, self._fresh = None, None, None, False

    def _stream(self) -> torch.Tensor | None:
        """The concept states ``[rows, concepts, dim]``, projected into the denoiser at the call's first use."""
        if self._fresh and self._embeds is not None:
            self._fresh = False
            project = self.denoiser.caption_projection if self.family == "PixArt" else self.denoiser.context_embedder
            with torch.no_grad():
                states = project(self._embeds.to(next(project.parameters()).device))
            self._states = states[None].expand(self._n_rows, *states.shape).contiguous()
        return self._states

    def _before_block(self, block: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._block, self._output = None, None
        temb = kwargs.get("temb", args[2] if len(args) > 2 else None)
        states = self._stream()
        if states is None or not isinstance(temb, torch.Tensor):
            return
        temb = temb[self._rows]
        with torch.no_grad():
            if getattr(block, "context_pre_only", False):
                mods: tuple[torch.Tensor, ...] = (block.norm1_context(states, temb),)
            else:
                mods = tuple(block.norm1_context(states, emb=temb))
        self._block = (block, mods)

    def _after_block(self, block: Any, args: Any, output: Any) -> None:
        if self._block is None or self._block[0] is not block or self._output is None or self._states is None:
            return
        mods, out = self._block[1], self._output
        self._block, self._output = None, None
        if len(mods) == 1 or getattr(block.attn, "to_add_out", None) is None:
            self._states = None  # the last SD3 block updates no text stream: the concept stream ends there
            return
        _, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        with torch.no_grad():
            states = self._states + gate_msa.unsqueeze(1) * block.attn.to_add_out(out)
            normed = block.norm2_context(states) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
            states = states + gate_mlp.unsqueeze(1) * block.ff_context(normed)
            if states.dtype == torch.float16:
                states = states.clip(-65504, 65504)
        self._states = states

    # -- called by the recording processors ----------------------------------------------------------
    def joint(self, slot: int, attn: Any, key: torch.Tensor, value: torch.Tensor, image_out: torch.Tensor) -> None:
        """A joint block's attention ran: the concepts attend to the image; their map is stored.

        Args:
            slot: the layer's index in the capture.
            attn: the block's attention module.
            key: ``[batch, heads, image, dim]`` the image keys (normed, rotated) of the call.
            value: ``[batch, heads, image, dim]`` the image values.
            image_out: ``[batch, image, heads * dim]`` the image tokens' attention output, before ``to_out``.
        """
        if self._block is None or self._block[0].attn is not attn:
            return
        rows = self._rows
        with torch.no_grad():
            normed = self._block[1][0]
            if getattr(attn, "fused_projections", False) and hasattr(attn, "to_added_qkv"):
                q, k, v = attn.to_added_qkv(normed).chunk(3, dim=-1)
            else:
                q, k, v = attn.add_q_proj(normed), attn.add_k_proj(normed), attn.add_v_proj(normed)
            heads = key.shape[1]
            q, k, v = _heads(q, heads), _heads(k, heads), _heads(v, heads)
            if getattr(attn, "norm_added_q", None) is not None:
                q = attn.norm_added_q(q)
            if getattr(attn, "norm_added_k", None) is not None:
                k = attn.norm_added_k(k)
            keys = torch.cat([k, key[rows]], dim=2)
            values = torch.cat([v, value[rows]], dim=2)
            out = F.scaled_dot_product_attention(q, keys, values).transpose(1, 2).flatten(2)  # [b, concepts, h*d]
            self._output = out.to(q.dtype)
            if self.session.records(slot):
                self._store(slot, image_out[rows], out)

    def cross(self, slot: int, attn: Any, image_out: torch.Tensor) -> None:
        """PixArt's ``attn2`` ran: the image's attention output against each concept's value vector.

        Args:
            slot: the layer's index in the capture.
            attn: the ``attn2`` module.
            image_out: ``[batch, image, heads * dim]`` its output before ``to_out``.
        """
        context = self._stream()
        if context is None or not self.session.records(slot):
            return
        with torch.no_grad():
            if getattr(attn, "norm_cross", None):
                context = attn.norm_encoder_hidden_states(context)
            self._store(slot, image_out[self._rows], attn.to_v(context))

    def _store(self, slot: int, image: torch.Tensor, concepts: torch.Tensor) -> None:
        """Stores ``softmax_concepts(concepts · image)``: ``[batch, concepts, image]``."""
        scores = torch.einsum("bcd,bpd->bcp", concepts.float(), image.float())
        self.session.store_concepts(slot, scores.softmax(dim=1))
