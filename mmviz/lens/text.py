"""The text lens of a CLIP/SigLIP vision tower: each layer's patch and pooled states scored against captions.

Hidden state ``l`` of the vision tower goes through the tower's final norm and projection into the joint
embedding space (``mmviz._hf.residual.VisionReadout``) and is compared with the captions' text embeddings as the
model compares its image embedding: ``scale · cosine (+ bias)``, then a softmax over captions (CLIP) or a
sigmoid per caption (SigLIP). Column 0 is the pooled image embedding (CLIP's CLS position; SigLIP's attention
pooling of the layer's whole sequence); the patches follow, row-major. At the last layer column 0 is the
model's own ``logits_per_image``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from mmviz._hf.residual import VisionReadout, evaluating, find_vision_readout, record_residual
from mmviz.data import TokenTable
from mmviz.data.lens import LensTrace
from mmviz.errors import MMVizError
from mmviz.lens._stats import chunked_stats
from mmviz.lens.logit import lens_trace, resolve_layers, resolve_positions

__all__ = ["text_lens"]


def _caption_inputs(model: Any, inputs: dict[str, Any], processor: Any, texts: Sequence[str]) -> dict[str, Any]:
    """The captions' token inputs: those in ``inputs`` when they hold one row per caption, else tokenized here."""
    ids = inputs.get("input_ids")
    if isinstance(ids, torch.Tensor):
        if ids.shape[0] != len(texts):
            raise ValueError(
                f"inputs hold {ids.shape[0]} tokenized caption(s) but texts names {len(texts)}: pass the processor's "
                "output for images=... and text=texts, or the images only"
            )
        return {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
    if processor is None:
        raise ValueError("the text lens tokenizes the captions: pass processor= (or its tokenizer)")
    from mmviz._hf.tokens import tokenizer_of

    tokenizer = tokenizer_of(processor)
    if tokenizer is None:
        raise ValueError(f"{type(processor).__name__} holds no tokenizer to tokenize the captions with")
    if "siglip" in str(getattr(model.config, "model_type", "")):  # SigLIP was trained on max-length padding
        length = int(model.config.text_config.max_position_embeddings)
        batch = tokenizer(list(texts), padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    else:
        batch = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
    device = inputs["pixel_values"].device
    return {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}


def _tables(vision: VisionReadout, pixels: torch.Tensor, processor: Any, length: int) -> list[TokenTable]:
    from mmviz._hf.tokens import images_from_pixels, patch_table

    n_patches = length - vision.n_prefix
    side = math.isqrt(n_patches)
    if side * side != n_patches:
        raise MMVizError(f"the vision tower's {n_patches} patches do not form a square grid")
    name = "[CLS]" if vision.n_prefix else "[pooled]"
    images = images_from_pixels(pixels, processor)
    return [patch_table(1 + n_patches, (side, side), image, prefix_names=[name]) for image in images]


def text_lens(
    model: Any,
    inputs: dict[str, Any],
    processor: Any,
    *,
    texts: Sequence[str] | None,
    layers: Sequence[int] | None,
    positions: Sequence[int] | None,
    top_k: int,
) -> LensTrace:
    """``mmviz.logit_lens`` for CLIP/SigLIP (see there): per layer and patch, the captions' probabilities."""
    if not texts:
        raise ValueError("the text lens of a CLIP/SigLIP vision tower scores captions: pass texts=['a red circle']")
    texts = [str(t) for t in texts]
    pixels = inputs.get("pixel_values")
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4:
        raise ValueError("the text lens needs pixel_values [images, 3, H, W]: pass the processor's output for images")
    vision = find_vision_readout(model)
    states = resolve_layers(layers, vision.n_states)
    captions = _caption_inputs(model, inputs, processor, texts)
    with evaluating(model):
        with record_residual(vision.blocks, states) as seen:
            out = model(pixel_values=pixels, **captions)
        text = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)  # [captions, embed]
        scale = model.logit_scale.exp()
        bias = getattr(model, "logit_bias", None)
        sigmoid = isinstance(bias, torch.Tensor)
        batch, length = seen[states[0]][0].shape[:2]
        columns = resolve_positions(positions, 1 + length - vision.n_prefix)
        rows = []
        for state in states:
            hidden = seen[state][0]
            pooled = vision.pooled(hidden)[:, None]  # [images, 1, embed]
            patches = vision.project(hidden[:, vision.n_prefix :])  # [images, patches, embed]
            embeds = torch.cat([pooled, patches], dim=1)
            rows.append(embeds[:, torch.as_tensor(columns, device=embeds.device)])
        embeds = torch.stack(rows, dim=1)  # [images, layers, columns, embed]
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)

        def logits_of(e: torch.Tensor) -> torch.Tensor:
            logits = scale * (e @ text.T)
            return logits + bias if sigmoid else logits

        stats = chunked_stats(
            embeds.flatten(0, 2),
            logits_of,
            min(top_k, len(texts)),
            torch.arange(len(texts)),
            probs_of=torch.sigmoid if sigmoid else None,
            scores_of=lambda e, _: e @ text.T,
        )
    tables = _tables(vision, pixels, processor, length)

    def caption_text(ids: list[int]) -> list[str]:
        return [texts[i] for i in ids]

    info = {
        "model": type(model).__name__,
        "blocks": vision.blocks_path,
        "probability": "sigmoid" if sigmoid else "softmax",
        "column 0": "pooled image embedding" if not vision.n_prefix else "CLS",
    }
    shape = (batch, len(states), len(columns))
    ids = list(range(len(texts)))
    return lens_trace(stats, shape, texts, ids, caption_text, states, columns, tables, "text_lens", info)
