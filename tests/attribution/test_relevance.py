"""Relevance equals Chefer et al.'s rule computed step by step; rollout equals the data-layer rollout."""

from __future__ import annotations

import numpy as np
import torch

from mmviz.attribution import attribute
from mmviz.data import reductions
from tests.attribution.conftest import random_image


def test_relevance_equals_step_by_step_reference_on_tiny_vit(vit, image_processor):
    pixels = image_processor(images=random_image(seed=3), return_tensors="pt")["pixel_values"]
    attr = attribute(vit, {"pixel_values": pixels}, method="relevance", target=1, progress=False)

    # reference: eager attention with output_attentions, gradients kept on each layer's probabilities
    old = vit.config._attn_implementation
    vit.set_attn_implementation("eager")
    try:
        out = vit(pixel_values=pixels, output_attentions=True)
        attentions = out.attentions
        for a in attentions:
            a.retain_grad()
        out.logits[0, 1].backward()
        n = attentions[0].shape[-1]
        relevance = torch.eye(n, dtype=torch.float64)
        for a in attentions:  # layer by layer
            heads = []
            for h in range(a.shape[1]):  # head by head
                heads.append((a.grad[0, h].double() * a[0, h].detach().double()).clamp(min=0))
            cam = sum(heads) / len(heads)
            relevance = relevance + cam @ relevance
    finally:
        vit.set_attn_implementation(old)
        vit.zero_grad(set_to_none=True)
    np.testing.assert_allclose(attr.scores[0], relevance[0].numpy(), rtol=1e-5, atol=1e-8)
    assert attr.tokens.text[0] == "[CLS]" and attr.pixel_maps == ()


def test_relevance_on_vlm_covers_image_tokens(llava):
    model, processor = llava
    inputs = processor(images=random_image(), text="<image> what shape", return_tensors="pt")
    attr = attribute(
        model, inputs, processor=processor, method="relevance", target=" circle", per_token=True, progress=False
    )
    assert attr.scores.shape == (1, len(attr.tokens))
    assert np.isfinite(attr.scores).all() and (attr.scores[0, attr.tokens.positions("image")] >= 0).all()


def test_bimodal_relevance_on_clip_gives_text_and_image(clip):
    model, processor = clip
    inputs = processor(images=random_image(), text=["a red square"], return_tensors="pt")
    attr = attribute(model, inputs, processor=processor, method="relevance", progress=False)
    kinds = attr.tokens.kind
    n_text = int((attr.tokens.image_index < 0).sum()) - 1
    assert (kinds == "image").sum() == 16 and n_text == 5  # <bos> a red square <eos>, then [CLS]
    # text relevance is the row of the EOS token (pooled); it includes EOS's own 1 on the diagonal
    assert attr.scores[0, n_text - 1] >= 1.0
    assert attr.scores[0, n_text] >= 1.0  # vision [CLS] row, its own diagonal


def test_rollout_equals_data_rollout(gpt2, tok):
    import mmviz

    inputs = tok("a red square left", return_tensors="pt")
    attr = attribute(gpt2, inputs, method="attention_rollout", target=3, progress=False)
    with torch.no_grad(), mmviz.capture(gpt2, tok) as cap:
        gpt2(**inputs)
    expected = reductions.rollout(cap.attention.probs())[-1][-1]
    np.testing.assert_allclose(attr.scores[0], expected, rtol=1e-5)
