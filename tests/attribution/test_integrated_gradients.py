"""Integrated gradients: completeness, agreement with a fine-grid reference, batching, baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmviz.attribution import attribute
from mmviz.attribution.integrated_gradients import path_points
from tests.attribution.conftest import random_image


def _reference_ig(model, inputs, target_id, baseline, steps=2000):
    """Trapezoid IG on a fine grid, written out with plain autograd and inputs_embeds."""
    x = model.get_input_embeddings()(inputs["input_ids"]).detach()
    total = torch.zeros_like(x, dtype=torch.float64)
    alphas, weights = path_points(steps, "riemann_trapezoid")
    for chunk in np.array_split(np.arange(steps), 20):
        a = torch.tensor(alphas[chunk], dtype=torch.float32)[:, None, None]
        e = (baseline + a * (x - baseline)).requires_grad_(True)
        mask = inputs["attention_mask"].expand(len(chunk), -1)
        out = model(inputs_embeds=e, attention_mask=mask).logits[:, -1, target_id]
        (g,) = torch.autograd.grad(out.sum(), e)
        total += torch.einsum("k,k...->...", torch.tensor(weights[chunk]), g.double()).unsqueeze(0)
    return ((x - baseline).double() * total).sum(-1)[0].numpy()


def test_ig_converges_and_matches_fine_grid_reference(gpt2, tok):
    inputs = tok("a red square left of the", return_tensors="pt")
    attr = attribute(
        gpt2, inputs, processor=tok, method="integrated_gradients", target=5, steps=50, baseline="zeros", progress=False
    )
    f_x, f_b = attr.info["f_input"][0], attr.info["f_baseline"][0]
    assert abs(attr.delta[0]) < 1e-4 * max(1.0, abs(f_x - f_b))
    np.testing.assert_allclose(attr.scores[0].sum(), f_x - f_b, rtol=1e-4, atol=1e-5)
    reference = _reference_ig(gpt2, inputs, 5, torch.zeros(1))
    np.testing.assert_allclose(attr.scores[0], reference, rtol=2e-3, atol=2e-5)


def test_delta_shrinks_with_steps(llama, tok):
    inputs = tok("what shape is the red", return_tensors="pt")
    deltas = [
        abs(
            attribute(
                llama, inputs, method="integrated_gradients", target=6, steps=s, rule="riemann_left", progress=False
            ).delta[0]
        )
        for s in (4, 64)
    ]
    assert deltas[1] < deltas[0] / 4


def test_batch_size_changes_nothing_but_memory(gpt2, tok):
    inputs = tok("a red square", return_tensors="pt")
    runs = [
        attribute(gpt2, inputs, method="integrated_gradients", target=3, steps=12, batch_size=b, progress=False)
        for b in (1, 5, 12)
    ]
    for r in runs[1:]:
        np.testing.assert_allclose(r.scores, runs[0].scores, rtol=1e-5, atol=1e-7)


def test_pad_and_tensor_baselines(gpt2, tok):
    inputs = tok("a red square", return_tensors="pt")
    pad = attribute(
        gpt2, inputs, method="integrated_gradients", target=3, baseline="pad", steps=20, processor=tok, progress=False
    )
    pad_emb = gpt2.get_input_embeddings()(torch.zeros_like(inputs["input_ids"])).detach()
    given = attribute(gpt2, inputs, method="integrated_gradients", target=3, baseline=pad_emb, steps=20, progress=False)
    np.testing.assert_allclose(pad.scores, given.scores, rtol=1e-5, atol=1e-7)
    assert pad.info["baseline"] == "pad" and abs(pad.delta[0]) < 1e-3
    zeros = attribute(gpt2, inputs, method="integrated_gradients", target=3, baseline="zeros", steps=20, progress=False)
    assert not np.allclose(zeros.scores, pad.scores)
    default = attribute(gpt2, inputs, method="integrated_gradients", target=3, steps=20, processor=tok, progress=False)
    np.testing.assert_array_equal(default.scores, pad.scores)  # language models: pad embeddings by default
    with pytest.raises(ValueError, match="matches neither"):
        attribute(gpt2, inputs, method="integrated_gradients", target=3, baseline=torch.zeros(7), progress=False)


def test_image_and_text_jointly_complete(clip):
    model, processor = clip
    inputs = processor(images=random_image(), text=["a red square"], return_tensors="pt")
    attr = attribute(model, inputs, processor=processor, method="integrated_gradients", steps=32, progress=False)
    assert attr.tokens.kind.tolist().count("image") == 16
    assert abs(attr.delta[0]) < 1e-3
    image_only = attribute(model, inputs, method="integrated_gradients", steps=32, sources=["image"], progress=False)
    assert len(image_only.tokens) == 17  # [CLS] + 16 patches, text not attributed
    np.testing.assert_allclose(image_only.pixels[0].sum(), image_only.scores[0].sum(), rtol=1e-4)


def test_progress_bar_runs(gpt2, tok, capsys):
    inputs = tok("a red", return_tensors="pt")
    attribute(gpt2, inputs, method="integrated_gradients", target=3, steps=4, batch_size=2, progress=True)
