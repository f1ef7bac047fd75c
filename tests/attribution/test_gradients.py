"""Saliency and input × gradient equal plain autograd on the same function."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmviz
from mmviz.attribution import attribute
from tests.attribution.conftest import random_image


def _lm_reference(model, inputs, target_id):
    emb = model.get_input_embeddings()(inputs["input_ids"]).detach().requires_grad_(True)
    logit = model(inputs_embeds=emb, attention_mask=inputs["attention_mask"]).logits[0, -1, target_id]
    (grad,) = torch.autograd.grad(logit, emb)
    return emb.detach()[0], grad[0]


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_text_saliency_and_input_x_gradient_equal_autograd(name, request, tok):
    model = request.getfixturevalue(name)
    inputs = tok("a red square left of", return_tensors="pt")
    emb, grad = _lm_reference(model, inputs, 7)
    sal = attribute(model, inputs, processor=tok, method="saliency", target=7, progress=False)
    ixg = attribute(model, inputs, processor=tok, method="input_x_gradient", target=7, progress=False)
    np.testing.assert_allclose(sal.scores[0], grad.norm(dim=-1).numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ixg.scores[0], (emb * grad).sum(-1).numpy(), rtol=1e-4, atol=1e-7)
    assert sal.tokens.tokens == ["<bos>", "a", " red", " square", " left", " of"] or len(sal.tokens) == 6
    assert not sal.signed and ixg.signed


def test_pixel_saliency_and_patch_scores_equal_autograd(vit, image_processor):
    pixels = image_processor(images=random_image(), return_tensors="pt")["pixel_values"]
    x = pixels.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(vit(pixel_values=x).logits[0, 2], x)
    g = grad[0].numpy()  # [3, 16, 16]
    sal = attribute(vit, {"pixel_values": pixels}, method="saliency", target=2, progress=False)
    ixg = attribute(vit, {"pixel_values": pixels}, method="input_x_gradient", target=2, progress=False)
    np.testing.assert_allclose(sal.pixels[0], np.sqrt((g**2).sum(0)), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(ixg.pixels[0], (g * pixels[0].numpy()).sum(0), rtol=1e-4, atol=1e-8)
    # patch (row 1, col 2) is pixels 4..8 × 8..12; table position = 1 (CLS) + 1 * 4 + 2
    pos = sal.tokens.image_positions(0)[1, 2]
    assert pos == 7 and sal.tokens.text[0] == "[CLS]"
    np.testing.assert_allclose(sal.scores[0, pos], np.sqrt((g[:, 4:8, 8:12] ** 2).sum()), rtol=1e-5)
    np.testing.assert_allclose(ixg.scores[0, pos], (g * pixels[0].numpy())[:, 4:8, 8:12].sum(), rtol=1e-4, atol=1e-8)
    assert sal.scores[0, 0] == 0  # [CLS] is no input
    np.testing.assert_allclose(ixg.patch_map()[1, 2], ixg.scores[0, pos])


def test_vlm_text_and_image_tokens_equal_autograd(llava):
    model, processor = llava
    inputs = processor(images=random_image(), text="<image> what shape", return_tensors="pt")
    embed = model.get_input_embeddings()
    emb = embed(inputs["input_ids"]).detach().requires_grad_(True)
    pix = inputs["pixel_values"].clone().requires_grad_(True)

    def hook(module, args, out):
        return emb

    handle = embed.register_forward_hook(hook)
    try:
        logit = model(**{**inputs, "pixel_values": pix}).logits[0, -1, 9]
    finally:
        handle.remove()
    g_emb, g_pix = torch.autograd.grad(logit, [emb, pix])
    ixg = attribute(model, inputs, processor=processor, method="input_x_gradient", target=9, progress=False)
    table = ixg.tokens
    text = table.positions(["text", "special"])
    np.testing.assert_allclose(
        ixg.scores[0, text], (emb * g_emb)[0, text].sum(-1).detach().numpy(), rtol=1e-4, atol=1e-8
    )
    pixel_attr = (pix * g_pix)[0].sum(0).detach().numpy()
    np.testing.assert_allclose(ixg.pixels[0], pixel_attr, rtol=1e-4, atol=1e-8)
    grid = table.image_positions(0)
    assert grid.shape == (4, 4) and (table.kind[grid.ravel()] == "image").all()
    np.testing.assert_allclose(ixg.scores[0, grid[3, 0]], pixel_attr[12:16, 0:4].sum(), rtol=1e-4, atol=1e-8)


def test_qwen2_vl_merged_tokens_sum_their_pixels(qwen2_vl):
    model, processor, inputs = qwen2_vl
    attr = attribute(model, inputs, processor=processor, method="input_x_gradient", target=" circle", progress=False)
    table = attr.tokens
    grid = table.image_positions(0)
    assert grid.shape == (2, 2)
    pixels = attr.pixels[0]
    assert pixels.shape == (16, 16)
    # merged token (row, col) covers raw patches 2row..2row+1 × 2col..2col+1, i.e. 8×8 pixels
    for r in range(2):
        for c in range(2):
            np.testing.assert_allclose(
                attr.scores[0, grid[r, c]], pixels[8 * r : 8 * r + 8, 8 * c : 8 * c + 8].sum(), rtol=1e-4, atol=1e-7
            )
    assert attr.tokens.generated[-1] and not attr.tokens.generated[:-1].any()


def test_mmviz_exports_attribute_and_attribution():
    assert mmviz.attribute is attribute
    assert mmviz.Attribution is mmviz.data.Attribution
