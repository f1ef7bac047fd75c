"""Targets for every kind of model: functions of the outputs and pooled-embedding similarities.

References are written by hand: the pooled embedding and its similarity computed directly from the
model's hidden states, and gradients taken with plain autograd through ``inputs_embeds``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import mmviz
from mmviz.attribution import attribute, similarity_to
from tests.fixtures.tiny_configs import text_cfg

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

KW: dict[str, Any] = {"progress": False}


@pytest.fixture(scope="module")
def encoder() -> Any:
    """A bare BertModel (with its pooler), like all-MiniLM-L6-v2."""
    torch.manual_seed(0)
    return transformers.BertModel(transformers.BertConfig(**text_cfg(max_position_embeddings=64))).eval()


def _mean_pool(hidden: Any, mask: Any) -> Any:
    keep = mask[..., None].float()
    return (hidden * keep).sum(1) / keep.sum(1)


def _embed(model: Any, enc: Any) -> Any:
    with torch.no_grad():
        return _mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])[0]


def _by_hand(model: Any, inputs: Any, reference: Any, pooling: str = "mean") -> tuple[float, np.ndarray]:
    """``f(x)`` and the per-position gradient norm of ``cosine(pool(model(x)), reference)``."""
    emb = model.get_input_embeddings()(inputs["input_ids"]).detach().requires_grad_(True)
    out = model(inputs_embeds=emb, attention_mask=inputs["attention_mask"])
    pooled = {
        "mean": lambda: _mean_pool(out.last_hidden_state, inputs["attention_mask"]),
        "cls": lambda: out.last_hidden_state[:, 0],
        "pooler": lambda: out.pooler_output,
        "last": lambda: out.last_hidden_state[:, -1],
    }[pooling]()
    value = torch.nn.functional.cosine_similarity(pooled, reference[None], dim=-1)[0]
    (grad,) = torch.autograd.grad(value, emb)
    return float(value.detach()), grad[0].norm(dim=-1).numpy()


def test_bare_encoder_without_target_names_the_similarity_target(encoder, tok):
    with pytest.raises(ValueError, match=r"bare model with no head.*similarity_to"):
        attribute(encoder, tok("a red square", return_tensors="pt"), processor=tok, **KW)
    with pytest.raises(TypeError, match="similarity_to"):
        attribute(encoder, tok("a red square", return_tensors="pt"), processor=tok, target=3, **KW)


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler", "last"])
def test_similarity_to_an_embedding_matches_autograd(encoder, tok, pooling):
    inputs = tok("a red square left of the circle", return_tensors="pt")
    reference = torch.randn(32, generator=torch.Generator().manual_seed(1))
    attr = attribute(
        encoder, inputs, processor=tok, method="saliency", target=similarity_to(reference, pooling=pooling), **KW
    )
    value, grad_norm = _by_hand(encoder, inputs, reference, pooling)
    np.testing.assert_allclose(attr.scores[0], grad_norm, rtol=1e-4, atol=1e-7)
    ig = attribute(encoder, inputs, processor=tok, target=similarity_to(reference, pooling=pooling), steps=32, **KW)
    assert ig.info["f_input"][0] == pytest.approx(value, abs=1e-5)
    assert abs(ig.delta[0]) < 1e-3
    assert ig.target == f"cosine({pooling}-pooled embedding, embedding [32])"


def test_text_reference_is_embedded_by_the_model_and_text_is_shorthand(encoder, tok):
    inputs = tok("a red square", return_tensors="pt")
    reference = _embed(encoder, tok("the blue circle", return_tensors="pt"))
    kw = {"processor": tok, "method": "input_x_gradient", **KW}
    by_text = attribute(encoder, inputs, target=similarity_to("the blue circle"), **kw)
    shorthand = attribute(encoder, inputs, target="the blue circle", **kw)
    by_vector = attribute(encoder, inputs, target=reference.numpy(), **kw)
    by_inputs = attribute(encoder, inputs, target=similarity_to(tok("the blue circle", return_tensors="pt")), **kw)
    for other in (shorthand, by_vector, by_inputs):
        np.testing.assert_allclose(other.scores, by_text.scores, rtol=1e-4, atol=1e-7)
    assert by_text.target == "cosine(mean-pooled embedding, 'the blue circle')"


def test_padded_input_pools_only_kept_positions(encoder, tok):
    padded = tok(["a red square", "a red square left of the blue circle"], return_tensors="pt", padding=True)
    one = {k: v[:1] for k, v in padded.items()}
    plain = tok("a red square", return_tensors="pt")
    reference = torch.randn(32, generator=torch.Generator().manual_seed(2))
    kw = {"processor": tok, "method": "integrated_gradients", "steps": 16, "target": similarity_to(reference), **KW}
    a, b = attribute(encoder, one, **kw), attribute(encoder, plain, **kw)
    assert a.info["f_input"][0] == pytest.approx(b.info["f_input"][0], abs=1e-5)
    n = plain["input_ids"].shape[1]
    np.testing.assert_allclose(a.scores[0, :n], b.scores[0], rtol=1e-3, atol=1e-6)


def test_similarity_contrast_is_the_difference(encoder, tok):
    inputs = tok("a red square", return_tensors="pt")
    kw = {"processor": tok, "method": "integrated_gradients", "steps": 16, **KW}
    a = attribute(encoder, inputs, target="the blue circle", **kw)
    b = attribute(encoder, inputs, target="a green triangle", **kw)
    both = attribute(encoder, inputs, target=("the blue circle", "a green triangle"), **kw)
    np.testing.assert_allclose(both.scores, a.scores - b.scores, rtol=1e-4, atol=1e-6)
    assert " − " in both.target


def test_dot_metric_and_classifier_hidden_states(bert_classifier):
    model, tok = bert_classifier
    inputs = tok("a red square", return_tensors="pt")
    reference = torch.randn(32, generator=torch.Generator().manual_seed(3))
    attr = attribute(model, inputs, processor=tok, target=similarity_to(reference, metric="dot"), steps=16, **KW)
    with torch.no_grad():
        hidden = model.bert(**inputs).last_hidden_state  # the classifier's encoder, pooled by hand
    expected = float(_mean_pool(hidden, inputs["attention_mask"])[0] @ reference)
    assert attr.info["f_input"][0] == pytest.approx(expected, rel=1e-5)


def test_similarity_spec_errors(encoder, tok, clip, gpt2):
    with pytest.raises(ValueError, match="unknown pooling"):
        similarity_to("x", pooling="max")
    with pytest.raises(ValueError, match="unknown metric"):
        similarity_to("x", metric="l2")
    with pytest.raises(TypeError, match="text, tokenized inputs or an embedding"):
        similarity_to(object())
    with pytest.raises(ValueError, match="empty"):
        similarity_to("  ")
    inputs = tok("a red square", return_tensors="pt")
    with pytest.raises(ValueError, match="has 8 values but the model's pooled embedding has 32"):
        attribute(encoder, inputs, processor=tok, target=similarity_to(torch.zeros(8)), **KW)
    with pytest.raises(ValueError, match="needs the tokenizer"):
        attribute(encoder, inputs, target="a blue circle", **KW)
    with pytest.raises(TypeError, match=r"pair two mmviz\.similarity_to"):
        attribute(gpt2, inputs, processor=tok, target=(similarity_to("a red square"), 3), **KW)
    model, _ = clip
    with pytest.raises(ValueError, match="CLIP and SigLIP explain their own"):
        attribute(model, {"pixel_values": torch.zeros(1, 3, 16, 16)}, target=similarity_to(torch.zeros(16)), **KW)


def test_rollout_and_relevance_read_the_pooled_positions(encoder, tok):
    from mmviz.data import reductions

    inputs = tok("a red square", return_tensors="pt")
    reference = torch.randn(32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), mmviz.capture(encoder, tok) as cap:
        encoder(**inputs)
    roll = reductions.rollout(cap.attention.probs("encoder"))[-1]
    for pooling, rows in (("cls", [0]), ("mean", list(range(roll.shape[0])))):
        target = similarity_to(reference, pooling=pooling)
        attr = attribute(encoder, inputs, processor=tok, method="attention_rollout", target=target, **KW)
        np.testing.assert_allclose(attr.scores[0], roll[rows].sum(0), rtol=1e-3, atol=1e-3)
        relevance = attribute(encoder, inputs, processor=tok, method="relevance", target=target, **KW)
        assert np.isfinite(relevance.scores).all() and relevance.scores[0].sum() >= len(rows) - 1e-6


# -- functions of the outputs ------------------------------------------------------------------------
def test_logit_difference_function_equals_the_built_in_contrast(gpt2, tok):
    inputs = tok("a red square", return_tensors="pt")
    kw = {"method": "integrated_gradients", "steps": 16, **KW}

    def red_minus_blue(outputs: Any) -> Any:
        return outputs.logits[:, -1, 5] - outputs.logits[:, -1, 6]

    custom = attribute(gpt2, inputs, target=red_minus_blue, **kw)
    built_in = attribute(gpt2, inputs, target=(5, 6), **kw)
    np.testing.assert_allclose(custom.scores, built_in.scores, rtol=1e-4, atol=1e-6)
    assert custom.target == "red_minus_blue(outputs)"
    np.testing.assert_allclose(custom.delta, built_in.delta, atol=1e-5)


def test_function_on_a_classifier_equals_the_class_target(bert_classifier):
    model, tok = bert_classifier
    inputs = tok("a red square", return_tensors="pt")
    custom = attribute(model, inputs, method="saliency", target=lambda out: out.logits[:, 2], **KW)
    built_in = attribute(model, inputs, method="saliency", target=2, **KW)
    np.testing.assert_allclose(custom.scores, built_in.scores, rtol=1e-5, atol=1e-7)
    assert custom.target == "custom target"


def test_embedding_similarity_function_equals_similarity_to(encoder, tok):
    inputs = tok("a red square", return_tensors="pt")
    reference = torch.randn(32, generator=torch.Generator().manual_seed(5))
    mask = inputs["attention_mask"]

    def similarity(outputs: Any) -> Any:
        pooled = _mean_pool(outputs.last_hidden_state, mask)
        return torch.nn.functional.cosine_similarity(pooled, reference[None], dim=-1)

    kw = {"processor": tok, "method": "integrated_gradients", "steps": 16, **KW}
    custom = attribute(encoder, inputs, target=similarity, **kw)
    built_in = attribute(encoder, inputs, target=similarity_to(reference), **kw)
    np.testing.assert_allclose(custom.scores, built_in.scores, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("fn", "error", "match"),
    [
        (lambda out: out.logits[:, -1, :2], ValueError, r"returned shape \[\d+, 2\]; it must return \[\d+\]"),
        (lambda out: out.logits[0, -1, 5], ValueError, r"returned shape \[\]"),
        (lambda out: float(out.logits[0, -1, 5]), TypeError, "returned float"),
        (lambda out: out.logits[:, -1].argmax(-1), TypeError, "floating-point"),
        (lambda out: out.logits[:, -1, 5].detach(), ValueError, "detached"),
    ],
)
def test_function_target_errors(gpt2, tok, fn, error, match):
    inputs = tok("a red square", return_tensors="pt")
    with pytest.raises(error, match=match):
        attribute(gpt2, inputs, method="saliency", target=fn, **KW)
