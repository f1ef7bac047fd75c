"""Minimal map extraction for the teaching models (plain hooks, no mmviz.capture).

These are deliberately small, self-contained re-implementations used by the
faithfulness evaluator and the training probes, so that the teaching kit can be
checked independently of the main capture API:

- `clip_relevance`: gradient-weighted attention relevance (Chefer et al. 2021) of
  the CLIP vision tower for an image-text similarity, CLS row -> patches;
- `clip_cls_attention`: last-layer CLS -> patch attention, head mean;
- `vlm_answer_attention`: attention of the answer-predicting position to the image
  tokens in each LM layer of a LLaVA model, head mean;
- `CrossAttentionRecorder`: a diffusers attention processor for ``attn2`` modules
  that sums head-mean cross-attention maps over calls.
"""

from __future__ import annotations

from typing import Any

import torch


def clip_relevance(model: Any, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Gradient-weighted attention relevance of image patches for image-text similarity.

    For each image ``i`` and its text ``i``, back-propagates the cosine similarity
    to the vision tower's attention probabilities ``A`` (eager attention), forms
    ``Abar = mean_heads(relu(grad * A))`` per layer and accumulates
    ``R <- R + Abar @ R`` from ``R = I``. The CLS row gives the patch relevance.

    Args:
        model: a `CLIPModel`.
        pixel_values: `[batch, 3, H, W]`.
        input_ids: `[batch, tokens]`, one text per image (same length, EOS-terminated).

    Returns:
        `[batch, grid, grid]` relevance of each patch (float32, >= 0).
    """
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.enable_grad():
            vis = model.vision_model(pixel_values=pixel_values, output_attentions=True)
            img = model.visual_projection(vis.pooler_output)
            txt = model.text_model(input_ids=input_ids)
            txt = model.text_projection(txt.pooler_output)
            sim = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
            attentions = list(vis.attentions)
            grads = torch.autograd.grad(sim.sum(), attentions)
    finally:
        model.set_attn_implementation(previous)
    batch, _, n, _ = attentions[0].shape
    rel = torch.eye(n).expand(batch, n, n).clone()
    for a, g in zip(attentions, grads):
        cam = (g * a).clamp(min=0).mean(1).detach()
        rel = rel + cam @ rel
    patches = rel[:, 0, 1:]
    grid = round((n - 1) ** 0.5)
    return patches.reshape(batch, grid, grid)


@torch.no_grad()
def clip_cls_attention(model: Any, pixel_values: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """CLS -> patch attention of one vision layer, head mean.

    Args:
        model: a `CLIPModel`.
        pixel_values: `[batch, 3, H, W]`.
        layer: vision layer index.

    Returns:
        `[batch, grid, grid]` attention probabilities.
    """
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        vis = model.vision_model(pixel_values=pixel_values, output_attentions=True)
    finally:
        model.set_attn_implementation(previous)
    a = vis.attentions[layer].mean(1)[:, 0, 1:]
    grid = round(a.shape[-1] ** 0.5)
    return a.reshape(a.shape[0], grid, grid)


@torch.no_grad()
def vlm_answer_attention(model: Any, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention from the answer-predicting position to the image tokens of a LLaVA model.

    The query is the last non-padding position of each prompt (the position whose
    logits give the answer's first token).

    Args:
        model: a `LlavaForConditionalGeneration`.
        inputs: processor output (``input_ids``, ``attention_mask``, ``pixel_values``),
            prompts only, padded on the right.

    Returns:
        ``(maps, logits)``: `[batch, lm_layers, grid, grid]` head-mean attention,
        renormalised over the image tokens, and `[batch, vocab]` answer logits.
    """
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        out = model(**inputs, output_attentions=True)
    finally:
        model.set_attn_implementation(previous)
    ids = inputs["input_ids"]
    last = inputs["attention_mask"].sum(-1) - 1
    rows = torch.arange(ids.shape[0])
    image = ids == model.config.image_token_id
    maps = []
    for a in out.attentions:  # [batch, heads, query, key]
        q = a.mean(1)[rows, last]  # [batch, key]
        maps.append(torch.stack([q[b][image[b]] for b in range(ids.shape[0])]))
    m = torch.stack(maps, 1)
    m = m / m.sum(-1, keepdim=True)
    grid = round(m.shape[-1] ** 0.5)
    return m.reshape(m.shape[0], m.shape[1], grid, grid), out.logits[rows, last]


def vlm_relevance(model: Any, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """Gradient-weighted attention relevance of the image tokens for a LLaVA answer.

    Chefer et al. (2021) rule applied to the language model's self-attention: with
    ``A`` each layer's attention and ``g`` the gradient of the target logit (at the
    answer-predicting position) with respect to it, ``R <- R + mean_heads(relu(g*A)) @ R``
    from ``R = I``; the answer position's row over the image tokens is the map.

    Args:
        model: a `LlavaForConditionalGeneration`.
        inputs: processor output, prompts only, padded on the right.
        targets: `[batch]` token ids whose logits are explained (e.g. the answers).

    Returns:
        `[batch, grid, grid]` relevance (>= 0).
    """
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.enable_grad():
            out = model(**inputs, output_attentions=True)
            ids = inputs["input_ids"]
            rows = torch.arange(ids.shape[0])
            last = inputs["attention_mask"].sum(-1) - 1
            score = out.logits[rows, last, targets].sum()
            attentions = list(out.attentions)
            grads = torch.autograd.grad(score, attentions)
    finally:
        model.set_attn_implementation(previous)
    batch, _, n, _ = attentions[0].shape
    rel = torch.eye(n).expand(batch, n, n).clone()
    for a, g in zip(attentions, grads):
        rel = rel + (g * a).clamp(min=0).mean(1).detach() @ rel
    image = ids == model.config.image_token_id
    maps = torch.stack([rel[b, last[b]][image[b]] for b in range(batch)])
    grid = round(maps.shape[-1] ** 0.5)
    return maps.reshape(batch, grid, grid)


class CrossAttentionRecorder:
    """Diffusers attention processor that records cross-attention maps.

    Install it on the ``attn2`` modules only; it computes exactly what the classic
    `AttnProcessor` computes and adds the head-mean probabilities of every call to
    a running sum.

    Attributes:
        total: running sum `[batch, tokens, h, w]` (batch as seen by the UNet, i.e.
            ``[uncond; cond]`` under classifier-free guidance), or ``None``.
        calls: number of calls summed.
        shape: ``(h, w)`` of the latent grid, set by the caller before running.
    """

    def __init__(self, shape: tuple[int, int]) -> None:
        self.shape = shape
        self.total: torch.Tensor | None = None
        self.calls = 0

    def reset(self) -> None:
        """Drop the recorded maps."""
        self.total = None
        self.calls = 0

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Run attention like `AttnProcessor` and record the probabilities."""
        if encoder_hidden_states is None or hidden_states.ndim != 3:
            raise ValueError("CrossAttentionRecorder expects cross-attention on flattened tokens")
        residual = hidden_states
        batch, n, _ = hidden_states.shape
        tokens = encoder_hidden_states.shape[1]
        attention_mask = attn.prepare_attention_mask(attention_mask, tokens, batch)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, attention_mask)  # [batch*heads, n, tokens]
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        out = out / attn.rescale_output_factor

        h, w = self.shape
        scale = round((h * w / n) ** 0.5)
        maps = probs.detach().float().reshape(batch, attn.heads, n, tokens).mean(1)
        maps = maps.transpose(1, 2).reshape(batch, tokens, h // scale, w // scale)
        if maps.shape[-2:] != (h, w):
            maps = torch.nn.functional.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False)
        self.total = maps if self.total is None else self.total + maps
        self.calls += 1
        return out


def install_recorder(unet: Any, shape: tuple[int, int]) -> CrossAttentionRecorder:
    """Put one `CrossAttentionRecorder` on every ``attn2`` of a UNet (others: `AttnProcessor`).

    Args:
        unet: a `UNet2DConditionModel`.
        shape: latent ``(h, w)``; maps are brought to this size.

    Returns:
        The recorder (shared by all ``attn2`` modules).
    """
    from diffusers.models.attention_processor import AttnProcessor2_0

    recorder = CrossAttentionRecorder(shape)
    procs = {
        name: (recorder if name.endswith("attn2.processor") else AttnProcessor2_0()) for name in unet.attn_processors
    }
    unet.set_attn_processor(procs)
    return recorder


def peak_pixel(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel of each map's maximum after bilinear upsampling to the image size.

    Args:
        maps: `[batch, h, w]`.
        size: image height and width.

    Returns:
        `[batch, 2]` (row, col) long.
    """
    up = torch.nn.functional.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)
    flat = up.flatten(1).argmax(-1)
    return torch.stack([flat // size, flat % size], -1)
