"""sources=["image_embeddings"]: a VLM's answer attributed to the image tokens its language model reads.

Checked against integrated gradients written out by hand: the projector's outputs computed from the vision
tower, scattered into the language model's inputs, the path from a second image's tokens, plain autograd.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import mmviz
from mmviz.attribution import attribute
from mmviz.attribution.integrated_gradients import path_points
from tests.attribution.conftest import random_image

TARGET = 7


def _inputs(llava: tuple[Any, Any], seed: int = 0) -> Any:
    return llava[1](images=random_image(seed=seed), text="<image> what shape", return_tensors="pt")


def _image_tokens(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projector outputs ``[1, tokens, dim]``: the vision tower's chosen layer without CLS, projected."""
    hidden = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    return model.model.multi_modal_projector(hidden[model.config.vision_feature_layer][:, 1:])


def _reference_ig(model: Any, inputs: Any, baseline_pixels: torch.Tensor, steps: int = 400) -> tuple[Any, Any]:
    """Trapezoid IG of the last position's logit ``TARGET`` over the image tokens, and ``f(z) − f(z₀)``."""
    ids = inputs["input_ids"]
    image = ids[0] == model.config.image_token_id
    with torch.no_grad():
        z, z0 = _image_tokens(model, inputs["pixel_values"]), _image_tokens(model, baseline_pixels)
        words = model.get_input_embeddings()(ids)

    def f(tokens: torch.Tensor) -> torch.Tensor:
        embeds = words.expand(tokens.shape[0], -1, -1).clone()
        embeds[:, image] = tokens
        mask = inputs["attention_mask"].expand(tokens.shape[0], -1)
        return model(inputs_embeds=embeds, attention_mask=mask).logits[:, -1, TARGET]

    alphas, weights = path_points(steps, "riemann_trapezoid")
    total = torch.zeros_like(z, dtype=torch.float64)
    for chunk in np.array_split(np.arange(steps), 10):
        a = torch.tensor(alphas[chunk], dtype=torch.float32)[:, None, None]
        point = (z0 + a * (z - z0)).requires_grad_(True)
        (g,) = torch.autograd.grad(f(point).sum(), point)
        total += torch.einsum("k,k...->...", torch.tensor(weights[chunk]), g.double()).unsqueeze(0)
    with torch.no_grad():
        gap = float(f(z) - f(z0))
    return ((z - z0).double() * total).sum(-1)[0].numpy(), gap


def _ig(llava: tuple[Any, Any], steps: int, **options: Any) -> Any:
    """Integrated gradients of logit ``TARGET`` on the first test image."""
    model, processor = llava
    return attribute(
        model, _inputs(llava), processor=processor, method="integrated_gradients", target=TARGET, steps=steps,
        progress=False, **options,
    )  # fmt: skip


def test_integrated_gradients_over_image_tokens_match_hand_written_reference(llava: tuple[Any, Any]) -> None:
    model, _ = llava
    inputs = _inputs(llava)
    other = _inputs(llava, seed=1)["pixel_values"]
    attr = _ig(llava, 32, sources=["image_embeddings"], baseline={"image": other})
    reference, gap = _reference_ig(model, inputs, other)
    at_image = attr.tokens.kind == "image"
    assert at_image.sum() == 16 and (attr.scores[0, ~at_image] == 0).all()
    np.testing.assert_allclose(attr.scores[0, at_image], reference, rtol=2e-3, atol=2e-5)
    # completeness: the image tokens' scores add up to f(z) − f(z₀)
    np.testing.assert_allclose(attr.scores[0].sum(), gap, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(attr.info["f_input"][0] - attr.info["f_baseline"][0], gap, rtol=1e-5, atol=1e-6)
    assert abs(attr.delta[0]) < 1e-4 * max(1.0, abs(gap))
    assert attr.pixels is None and attr.info["call"]["sources"] == ["image_embeddings"]


def test_baselines_of_the_image_tokens(llava: tuple[Any, Any]) -> None:
    model, processor = llava
    inputs = _inputs(llava)
    other = _inputs(llava, seed=1)["pixel_values"]
    kw: dict[str, Any] = {"method": "integrated_gradients", "target": TARGET, "steps": 16, "progress": False}
    kw["sources"] = ["image_embeddings"]
    from_pixels = attribute(model, inputs, processor=processor, baseline={"image": other}, **kw)
    with torch.no_grad():
        tokens = _image_tokens(model, other)
    from_tokens = attribute(model, inputs, processor=processor, baseline={"image_embeddings": tokens}, **kw)
    np.testing.assert_allclose(from_tokens.scores, from_pixels.scores, rtol=1e-5, atol=1e-7)
    zeros = attribute(model, inputs, processor=processor, **kw)  # default: zero vectors
    with torch.no_grad():
        words = model.get_input_embeddings()(inputs["input_ids"])
        words[inputs["input_ids"] == model.config.image_token_id] = 0.0
        f_zero = model(inputs_embeds=words, attention_mask=inputs["attention_mask"]).logits[0, -1, TARGET]
    np.testing.assert_allclose(zeros.info["f_baseline"][0], float(f_zero), rtol=1e-5, atol=1e-6)


def test_text_and_image_tokens_together_stay_complete(llava: tuple[Any, Any]) -> None:
    other = _inputs(llava, seed=1)["pixel_values"]
    attr = _ig(llava, 48, sources=["text", "image_embeddings"], baseline={"text": "pad", "image": other})
    text = attr.tokens.kind == "text"
    assert np.abs(attr.scores[0, text]).sum() > 0 and np.abs(attr.scores[0, ~text]).sum() > 0
    gap = attr.info["f_input"][0] - attr.info["f_baseline"][0]
    assert abs(attr.scores[0].sum() - gap) < 1e-3 * max(1.0, abs(gap))


def test_occlusion_replaces_one_image_token(llava: tuple[Any, Any]) -> None:
    model, processor = llava
    inputs = _inputs(llava)
    attr = attribute(
        model, inputs, processor=processor, method="occlusion", target=TARGET, sources=["image_embeddings"],
        progress=False,
    )  # fmt: skip
    image = np.flatnonzero(attr.tokens.kind == "image")
    assert (attr.scores[0, attr.tokens.kind != "image"] == 0).all()
    with torch.no_grad():
        words = model.get_input_embeddings()(inputs["input_ids"])
        words[0, image] = _image_tokens(model, inputs["pixel_values"])[0]
        full = model(inputs_embeds=words, attention_mask=inputs["attention_mask"]).logits[0, -1, TARGET]
        words[0, image[5]] = 0.0
        occluded = model(inputs_embeds=words, attention_mask=inputs["attention_mask"]).logits[0, -1, TARGET]
    np.testing.assert_allclose(attr.scores[0, image[5]], float(full - occluded), rtol=1e-4, atol=1e-5)


def test_judged_by_removing_the_pixels_and_recomputed_on_random_weights(llava: tuple[Any, Any]) -> None:
    model, processor = llava
    inputs = _inputs(llava)
    attr = attribute(
        model, inputs, processor=processor, method="integrated_gradients", target=TARGET, steps=8,
        sources=["image_embeddings"], progress=False,
    )  # fmt: skip
    before = [p.detach().clone() for p in model.parameters()]
    rep = mmviz.evaluate(
        attr, model, inputs, processor=processor, checks=("deletion", "model_randomization"), units="image",
        steps=4, random_orders=1, progress=False,
    )  # fmt: skip
    x, y = rep.curve("deletion")
    assert len(x) == 5 and np.isfinite(y).all()
    assert np.isfinite(rep["model_randomization"])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_bad_sources_are_refused(llava: tuple[Any, Any], gpt2: Any, tok: Any) -> None:
    model, processor = llava
    with pytest.raises(ValueError, match="cannot be attributed together"):
        attribute(model, _inputs(llava), processor=processor, sources=["image", "image_embeddings"], progress=False)
    with pytest.raises(ValueError, match="needs input_ids and pixel_values"):
        attribute(gpt2, tok("a red", return_tensors="pt"), sources=["image_embeddings"], target=3, progress=False)
    with pytest.raises(ValueError, match="unknown source"):
        attribute(model, _inputs(llava), processor=processor, sources=["pixels"], progress=False)
