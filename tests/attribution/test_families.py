"""Every method runs on every family of the capture tests and lays image tokens out like the capture."""

from __future__ import annotations

import numpy as np
import pytest

import mmviz
from mmviz.attribution import METHODS, attribute
from tests.attribution.conftest import random_image


def _vlm(name, request):
    if name == "qwen2_vl":
        model, processor, inputs = request.getfixturevalue("qwen2_vl")
        return model, processor, inputs
    model, processor = request.getfixturevalue(name)
    text = "<image> what shape" if name == "llava" else "what shape"
    return model, processor, processor(images=random_image(), text=text, return_tensors="pt")


@pytest.mark.parametrize("name", ["llava", "qwen2_vl", "paligemma"])
@pytest.mark.parametrize("method", METHODS)
def test_vlm_methods(name, method, request):
    model, processor, inputs = _vlm(name, request)
    attr = attribute(model, inputs, processor=processor, method=method, target=" circle", steps=8, progress=False)
    with mmviz.capture(model, processor, layers=[0]) as cap:
        model(**inputs)
    table = cap.attention.tokens()
    assert attr.tokens.kind[: len(table)].tolist() == table.kind.tolist()
    np.testing.assert_array_equal(attr.tokens.patch_row[: len(table)], table.patch_row)
    assert np.isfinite(attr.scores).all() and np.abs(attr.scores[0, attr.tokens.positions("image")]).sum() > 0
    if method in ("saliency", "input_x_gradient", "integrated_gradients", "occlusion"):
        assert attr.pixels is not None and attr.pixels.shape[0] == 1


def test_occlusion_of_a_patch_is_the_drop(vit, image_processor):
    import torch

    pixels = image_processor(images=random_image(seed=1), return_tensors="pt")["pixel_values"]
    attr = attribute(vit, {"pixel_values": pixels}, method="occlusion", target=0, batch_size=5, progress=False)
    occluded = pixels.clone()
    occluded[..., 8:12, 0:4] = 0
    with torch.no_grad():
        drop = vit(pixel_values=pixels).logits[0, 0] - vit(pixel_values=occluded).logits[0, 0]
    pos = attr.tokens.image_positions(0)[2, 0]
    np.testing.assert_allclose(attr.scores[0, pos], float(drop), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(attr.pixels[0, 8:12, 0:4], float(drop), rtol=1e-4, atol=1e-6)


def test_occlusion_of_tokens_is_the_drop(gpt2, tok):
    import torch

    inputs = tok("a red square", return_tensors="pt")
    attr = attribute(gpt2, inputs, method="occlusion", target=4, progress=False)
    emb = gpt2.get_input_embeddings()(inputs["input_ids"])
    occluded = emb.clone()
    occluded[0, 2] = 0
    with torch.no_grad():
        drop = gpt2(inputs_embeds=emb).logits[0, -1, 4] - gpt2(inputs_embeds=occluded).logits[0, -1, 4]
    np.testing.assert_allclose(attr.scores[0, 2], float(drop), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["llava", "qwen2_vl", "paligemma"])
def test_vlm_pixels_only_keep_the_prompt_positions(name, request):
    """sources=["image"]: the table is the prompt's (as with both sources), the text scores 0, IG stays complete."""
    model, processor, inputs = _vlm(name, request)
    kw = {"method": "integrated_gradients", "target": " circle", "steps": 32, "progress": False}
    both = attribute(model, inputs, processor=processor, **kw)
    image = attribute(model, inputs, processor=processor, sources=["image"], **kw)
    assert image.tokens.kind.tolist() == both.tokens.kind.tolist()
    at_image = image.tokens.kind == "image"
    assert (image.scores[0, ~at_image] == 0).all() and np.abs(image.scores[0, at_image]).sum() > 0
    np.testing.assert_allclose(image.scores[0].sum(), image.pixels[0].sum(), rtol=1e-4)
    assert abs(image.delta[0]) < max(0.05, 0.1 * abs(image.scores[0].sum()))
