"""Targets: ids, answers (summed and per token), labels, captions and contrasts."""

from __future__ import annotations

import numpy as np
import pytest

from mmviz.attribution import attribute
from tests.attribution.conftest import random_image


def test_per_token_answer_gives_generated_by_source_matrix(gpt2, tok):
    inputs = tok("what shape is", return_tensors="pt")  # <bos> what shape is
    attr = attribute(
        gpt2, inputs, processor=tok, method="input_x_gradient", target=" a red circle", per_token=True, progress=False
    )
    assert attr.scores.shape == (3, 7)
    assert attr.tokens.generated.tolist() == [False] * 4 + [True] * 3
    # causal: answer token t (position 4 + t) is read at position 3 + t and sees nothing after it
    for t in range(3):
        assert np.all(attr.scores[t, 4 + t :] == 0)
        assert np.any(attr.scores[t, : 4 + t] != 0)
    total = attribute(gpt2, inputs, processor=tok, method="input_x_gradient", target=" a red circle", progress=False)
    np.testing.assert_allclose(total.scores[0], attr.scores.sum(0), rtol=1e-4, atol=1e-7)
    assert total.targets == ("log p(' a red circle')",)


def test_contrast_of_ids_is_the_difference(gpt2, tok):
    inputs = tok("a red square", return_tensors="pt")
    kw = {"method": "integrated_gradients", "steps": 16, "progress": False}
    a = attribute(gpt2, inputs, target=5, **kw)
    b = attribute(gpt2, inputs, target=6, **kw)
    both = attribute(gpt2, inputs, target=(5, 6), **kw)
    np.testing.assert_allclose(both.scores, a.scores - b.scores, rtol=1e-4, atol=1e-6)


def test_contrast_of_answers_attributes_the_prompt(llama, tok):
    inputs = tok("what shape is", return_tensors="pt")
    attr = attribute(
        llama,
        inputs,
        processor=tok,
        method="integrated_gradients",
        target=(" red", " blue"),
        steps=128,
        batch_size=32,
        progress=False,
    )
    assert len(attr.tokens) == 4 and abs(attr.delta[0]) < 1e-3
    assert attr.target == "log p(' red') − log p(' blue')"


def test_default_target_is_the_prediction(gpt2, tok):
    inputs = tok("a red square", return_tensors="pt")
    top = int(gpt2(**inputs).logits[0, -1].argmax())
    attr = attribute(gpt2, inputs, processor=tok, method="saliency", progress=False)
    assert f"(id {top})" in attr.target


def test_classifier_label_names(bert_classifier):
    model, tok = bert_classifier
    inputs = tok("the red square", return_tensors="pt")
    by_name = attribute(model, inputs, processor=tok, method="saliency", target="pos", progress=False)
    by_id = attribute(model, inputs, processor=tok, method="saliency", target=2, progress=False)
    np.testing.assert_array_equal(by_name.scores, by_id.scores)
    with pytest.raises(ValueError, match="unknown label"):
        attribute(model, inputs, method="saliency", target="maybe", progress=False)


def test_caption_targets_and_caption_contrast(clip, siglip):
    model, processor = clip
    inputs = processor(images=random_image(), text=["a red square"], return_tensors="pt")
    kw = {"processor": processor, "method": "integrated_gradients", "steps": 16, "progress": False}
    red = attribute(model, inputs, target="a red square", **kw)
    default = attribute(model, inputs, **kw)
    np.testing.assert_allclose(red.scores, default.scores, rtol=1e-5, atol=1e-7)
    blue = attribute(model, inputs, target="a blue circle", **kw)
    assert not np.allclose(red.scores[0, -16:], blue.scores[0, -16:])
    contrast = attribute(model, inputs, target=("a red square", "a blue circle"), **kw)
    assert len(contrast.tokens) == 17  # the captions differ: only the image is attributed
    red_image = attribute(model, inputs, target="a red square", sources=["image"], **kw)
    blue_image = attribute(model, inputs, target="a blue circle", sources=["image"], **kw)
    np.testing.assert_allclose(contrast.scores, red_image.scores - blue_image.scores, rtol=1e-4, atol=1e-6)
    s_model, s_processor = siglip
    s_inputs = s_processor(
        images=random_image(), text=["a red square"], padding="max_length", max_length=8, return_tensors="pt"
    )
    attr = attribute(
        s_model, s_inputs, processor=s_processor, method="saliency", target="a blue circle", progress=False
    )
    assert len(attr.tokens) == 8 + 16 and attr.pixels.shape == (1, 16, 16)


def test_unsupported_target(gpt2, tok):
    with pytest.raises(TypeError, match="unsupported target"):
        attribute(gpt2, tok("a", return_tensors="pt"), method="saliency", target=1.5)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_two_tower_shortcut_runs_the_caption_once_and_changes_nothing(family, request, monkeypatch):
    from mmviz.attribution._problem import Problem

    model, processor = request.getfixturevalue(family)
    inputs = processor(images=random_image(), text=["a red square"], return_tensors="pt", padding="max_length")
    kw = {"processor": processor, "method": "integrated_gradients", "steps": 8, "progress": False}
    text_rows: list[int] = []
    hook = model.get_text_features

    def counting(**text_inputs):
        text_rows.append(int(text_inputs["input_ids"].shape[0]))
        return hook(**text_inputs)

    monkeypatch.setattr(model, "get_text_features", counting)
    fast = {s: attribute(model, inputs, sources=s, **kw) for s in (("image",), ("text", "image"))}
    assert max(text_rows) == 8 and text_rows.count(1) >= 2  # caption attributed: 8 rows; image only: one
    monkeypatch.setattr(Problem, "_check_fast", lambda self: False)  # the full forward, k × k logits
    for sources, got in fast.items():
        full = attribute(model, inputs, sources=sources, **kw)
        np.testing.assert_allclose(got.scores, full.scores, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got.delta, full.delta, rtol=1e-4, atol=1e-5)
