"""Minimal map extraction for the teaching models (plain hooks, no mmviz.capture).

These are deliberately small, self-contained re-implementations used by the
faithfulness evaluator and the training probes, so that the teaching kit can be
checked independently of the main capture API:

- `clip_relevance`: gradient-weighted attention relevance (Chefer et al. 2021) of
  the CLIP vision tower for an image-text similarity, CLS row -> patches;
- `clip_integrated_gradients`: Integrated Gradients (Sundararajan et al. 2017) of
  the same image-text similarity over the image patches (blank-image baseline);
- `clip_cls_attention`: last-layer CLS -> patch attention, head mean;
- `vlm_answer_attention`: attention of the answer-predicting position to the image
  tokens in each LM layer of a LLaVA model, head mean;
- `vlm_relevance`: gradient-weighted attention relevance (Chefer et al. 2021) of the
  LM for an answer logit, answer row -> image tokens; ``through_tower=True``
  continues it through the vision tower's own relevance matrix to input patches;
- `vlm_integrated_gradients`: Integrated Gradients (Sundararajan et al. 2017) of an
  answer logit with respect to the image tokens the LM reads (blank-image baseline);
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


def clip_integrated_gradients(
    model: Any, pixel_values: torch.Tensor, input_ids: torch.Tensor, steps: int = 32
) -> torch.Tensor:
    """Integrated Gradients of image-text similarity, summed per image patch.

    Sundararajan et al. (2017): the image moves on a straight line from a blank image
    (the scene background only, `mmviz.teaching.shapes.BACKGROUND`) to the input; the
    gradient of the cosine similarity between image ``i`` and text ``i`` is averaged
    over ``steps`` midpoints and multiplied by ``input - blank``; the attributions of
    each patch's pixels and channels are summed (the patch embedding is linear, so
    this equals Integrated Gradients over the patch embeddings). Signed; they add up
    to ``sim(image) - sim(blank)`` up to the Riemann error. Pixels equal to the
    background get zero attribution by construction.

    Args:
        model: a `CLIPModel`.
        pixel_values: `[batch, 3, H, W]`.
        input_ids: `[batch, tokens]`, one text per image (same length, EOS-terminated).
        steps: Riemann steps of the path integral.

    Returns:
        `[batch, grid, grid]` attribution of each patch (float32, signed).
    """
    batch, _, size, _ = pixel_values.shape
    patch = model.config.vision_config.patch_size
    grid = size // patch
    with torch.no_grad():
        txt = model.text_projection(model.text_model(input_ids=input_ids).pooler_output)

    def similarity(x: torch.Tensor) -> torch.Tensor:
        img = model.visual_projection(model.vision_model(pixel_values=x).pooler_output)
        return torch.nn.functional.cosine_similarity(img, txt, dim=-1)

    blank = blank_pixels(size).to(pixel_values.dtype)
    attribution = integrated_gradients(similarity, blank, pixel_values, steps).sum(1)
    return attribution.reshape(batch, grid, patch, grid, patch).sum((2, 4))


def blank_pixels(size: int) -> torch.Tensor:
    """`[1, 3, size, size]` pixel values of a blank scene (background colour only), the IG baseline."""
    import numpy as np

    from mmviz.teaching._common import pixels
    from mmviz.teaching.shapes import BACKGROUND

    return pixels(np.full((1, size, size, 3), BACKGROUND, dtype=np.uint8))


def integrated_gradients(f: Any, start: torch.Tensor, end: torch.Tensor, steps: int) -> torch.Tensor:
    """Integrated Gradients of ``f`` (summed over its batch) from ``start`` to ``end``, midpoint rule.

    Returns:
        ``(end - start) * mean gradient`` over ``steps`` midpoints of the straight path, shaped like ``end``.
    """
    total = torch.zeros_like(end)
    for alpha in (torch.arange(steps, dtype=torch.float32) + 0.5) / steps:
        x = (start + alpha * (end - start)).requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(f(x).sum(), x)
        total += g
    return total / steps * (end - start)


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


def vlm_relevance(
    model: Any, inputs: dict[str, torch.Tensor], targets: torch.Tensor, through_tower: bool = False
) -> torch.Tensor:
    """Gradient-weighted attention relevance of the image tokens for a LLaVA answer.

    Chefer et al. (2021) rule applied to the language model's self-attention: with
    ``A`` each layer's attention and ``g`` the gradient of the target logit (at the
    answer-predicting position) with respect to it, ``R <- R + mean_heads(relu(g*A)) @ R``
    from ``R = I``; the answer position's row over the image tokens is the map.

    With ``through_tower`` the same rule is applied to the vision tower's layers (the
    gradients of the same target logit; layers above ``vision_feature_layer`` get none)
    and the LM row ``r`` over the image tokens is carried to the input patches as
    ``r @ R_vision[1:, 1:]`` (image token ``j`` is vision output token ``j + 1``, CLS
    dropped), in the spirit of Chefer et al.'s bi-modal rule.

    Args:
        model: a `LlavaForConditionalGeneration`.
        inputs: processor output, prompts only, padded on the right.
        targets: `[batch]` token ids whose logits are explained (e.g. the answers).
        through_tower: continue the relevance through the vision tower.

    Returns:
        `[batch, grid, grid]` relevance (>= 0).
    """
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    vision: list[torch.Tensor] = []
    hooks = []
    if through_tower:
        for layer in model.model.vision_tower.encoder.layers:
            hooks.append(layer.self_attn.register_forward_hook(lambda m, i, o: vision.append(o[1])))
    try:
        with torch.enable_grad():
            out = model(**inputs, output_attentions=True)
            ids = inputs["input_ids"]
            rows = torch.arange(ids.shape[0])
            last = inputs["attention_mask"].sum(-1) - 1
            score = out.logits[rows, last, targets].sum()
            attentions = list(out.attentions)
            grads = torch.autograd.grad(score, attentions + vision, allow_unused=True)
    finally:
        for h in hooks:
            h.remove()
        model.set_attn_implementation(previous)
    batch, _, n, _ = attentions[0].shape
    rel = torch.eye(n).expand(batch, n, n).clone()
    for a, g in zip(attentions, grads):
        rel = rel + (g * a).clamp(min=0).mean(1).detach() @ rel
    image = ids == model.config.image_token_id
    maps = torch.stack([rel[b, last[b]][image[b]] for b in range(batch)])
    if through_tower:
        nv = vision[0].shape[-1]
        rv = torch.eye(nv).expand(batch, nv, nv).clone()
        for a, g in zip(vision, grads[len(attentions) :]):
            if g is not None:  # layers above vision_feature_layer do not feed the projector
                rv = rv + (g * a).clamp(min=0).mean(1).detach() @ rv
        maps = torch.einsum("bj,bji->bi", maps, rv[:, 1:, 1:])
    grid = round(maps.shape[-1] ** 0.5)
    return maps.reshape(batch, grid, grid)


def vlm_image_tokens(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """The image tokens a LLaVA model feeds its LM (projector outputs), `[batch, tokens, hidden]`.

    Uses ``vision_feature_layer`` and the ``default`` strategy (CLS dropped), as the
    teaching VLM does.
    """
    tower = model.model.vision_tower(pixel_values, output_hidden_states=True)
    features = tower.hidden_states[model.config.vision_feature_layer][:, 1:]
    return model.model.multi_modal_projector(features)


def vlm_integrated_gradients(
    model: Any, inputs: dict[str, torch.Tensor], targets: torch.Tensor, steps: int = 32
) -> torch.Tensor:
    """Integrated Gradients of a LLaVA answer logit over the image tokens the LM reads.

    Sundararajan et al. (2017): the image tokens ``z`` (projector outputs) move on a
    straight line from the image tokens ``z0`` of a blank image (the scene background
    only, `mmviz.teaching.shapes.BACKGROUND`) to ``z``; the gradient of the target
    logit at the answer-predicting position is averaged over ``steps`` midpoints and
    multiplied by ``z - z0``; summing over the hidden size gives one signed value per
    image token (the attributions add up to ``logit(z) - logit(z0)`` up to the
    Riemann error). The question tokens are left as they are.

    Args:
        model: a `LlavaForConditionalGeneration`.
        inputs: processor output, prompts only, padded on the right.
        targets: `[batch]` token ids whose logits are explained (e.g. the answers).
        steps: Riemann steps of the path integral.

    Returns:
        `[batch, grid, grid]` attribution (signed).
    """
    ids = inputs["input_ids"]
    batch = ids.shape[0]
    image = ids == model.config.image_token_id
    rows = torch.arange(batch)
    last = inputs["attention_mask"].sum(-1) - 1
    with torch.no_grad():
        z = vlm_image_tokens(model, inputs["pixel_values"])
        z0 = vlm_image_tokens(model, blank_pixels(inputs["pixel_values"].shape[-1])).expand_as(z)
        embeds = model.get_input_embeddings()(ids)

    def answer_logit(zi: torch.Tensor) -> torch.Tensor:
        e = embeds.masked_scatter(image[..., None], zi.to(embeds.dtype))
        logits = model(inputs_embeds=e, attention_mask=inputs["attention_mask"]).logits
        return logits[rows, last, targets]

    maps = integrated_gradients(answer_logit, z0, z, steps).sum(-1)
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
