"""The text lens of CLIP/SigLIP vision towers against a hand-written readout of ``output_hidden_states``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import mmviz
from tests.attribution.conftest import random_image

torch = pytest.importorskip("torch")

TEXTS = ["a red square", "a blue circle", "green", "the triangle"]


def joint_inputs(processor: Any) -> dict[str, Any]:
    images = [random_image(), random_image(seed=1)]
    return dict(processor(images=images, text=TEXTS, padding="max_length", max_length=16, return_tensors="pt"))


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_every_layer_and_patch_equals_the_hand_readout(request: pytest.FixtureRequest, family: str) -> None:
    model, processor = request.getfixturevalue(family)
    inputs = joint_inputs(processor)
    lens = mmviz.logit_lens(model, {"pixel_values": inputs["pixel_values"]}, processor, texts=TEXTS, top_k=3)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
        text = torch.nn.functional.normalize(out.text_embeds, dim=-1)
        scale, tower = model.logit_scale.exp(), model.vision_model
        states = out.vision_model_output.hidden_states
        assert lens.layers == tuple(range(len(states)))
        for layer, hidden in enumerate(states):
            if family == "clip":  # CLS and patches through post_layernorm and visual_projection
                embeds = model.visual_projection(tower.post_layernorm(hidden))
            else:  # SigLIP: the attention-pooling head over the layer's sequence, then each patch
                normed = tower.post_layernorm(hidden)
                embeds = torch.cat([tower.head(normed)[:, None], normed], dim=1)
            cosine = torch.nn.functional.normalize(embeds, dim=-1) @ text.T  # [images, 1 + patches, captions]
            logits = scale * cosine
            probs = logits.softmax(-1) if family == "clip" else torch.sigmoid(logits + model.logit_bias)
            np.testing.assert_allclose(lens.named_scores[:, layer], cosine.numpy(), rtol=0, atol=1e-5)
            np.testing.assert_allclose(lens.named_probs[:, layer], probs.numpy(), rtol=0, atol=1e-5)
            best = logits.argmax(-1).numpy()
            assert (lens.top_ids[:, layer, :, 0] == best).all()
            p = logits.softmax(-1)
            entropy = -(p * p.log()).sum(-1).numpy()
            np.testing.assert_allclose(lens.entropy[:, layer], entropy, rtol=0, atol=1e-5)
    own = out.logits_per_image.softmax(-1) if family == "clip" else out.logits_per_image.sigmoid()
    np.testing.assert_allclose(lens.named_probs[:, -1, 0], own.numpy(), rtol=0, atol=1e-5)  # the model's answer
    table = lens.tokens
    assert (
        len(table) == 17
        and table.grids == ((4, 4),)
        and (table.image_positions(0) == np.arange(1, 17).reshape(4, 4)).all()
    )
    assert lens.top(-1, 0)[0][0] == TEXTS[int(own[0].argmax())]
    np.testing.assert_allclose(lens.prob("green", batch_index=1), lens.named_probs[1, :, :, 2])


def test_captions_tokenized_here_or_given(clip: Any) -> None:
    model, processor = clip
    inputs = joint_inputs(processor)
    given = mmviz.logit_lens(model, inputs, processor, texts=TEXTS, positions=[0, -1], layers=[-1])
    mine = mmviz.logit_lens(model, {"pixel_values": inputs["pixel_values"]}, processor, texts=TEXTS)
    np.testing.assert_allclose(given.named_probs[:, 0], mine.named_probs[:, -1][:, [0, 16]], atol=1e-6)
    with pytest.raises(ValueError, match="texts"):
        mmviz.logit_lens(model, inputs, processor)
    with pytest.raises(ValueError, match="4 tokenized caption"):
        mmviz.logit_lens(model, inputs, processor, texts=TEXTS[:3])
    with pytest.raises(ValueError, match="not tokens"):
        mmviz.logit_lens(model, inputs, processor, texts=TEXTS, tokens=[" red"])


def test_view_and_dashboard_with_the_vision_tower_attention(clip: Any) -> None:
    pytest.importorskip("anywidget")
    model, processor = clip
    inputs = joint_inputs(processor)
    with torch.no_grad(), mmviz.capture(model, processor) as cap:
        model(**inputs)
    lens = mmviz.logit_lens(model, inputs, processor, texts=TEXTS)
    assert list(lens.tables[0].text) == list(cap.attention.tables["vision_model.patches"][0].text)
    second = lens.show(token="green", batch_index=1)
    np.testing.assert_array_equal(second.values(), lens.named_probs[1, :, :, 2])
    board = mmviz.Dashboard(cap.attention.show(module="vision_model"), lens.show(token="green"))
    assert [p.KIND for p in board.panes] == ["attention", "lens"]
