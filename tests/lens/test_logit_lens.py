"""The logit lens against a hand-written readout of ``output_hidden_states``, on tiny models of every family."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import mmviz
from tests.lens.test_residual import LM_FAMILIES, lm_inputs, n_hooks

torch = pytest.importorskip("torch")

NAMED = [5, 7, 11]


def hand_readout(family: str, model: Any) -> Callable[[Any], Any]:
    """Final norm and unembedding of each family, written out by module name."""
    if family == "gpt2":
        return lambda h: model.lm_head(model.transformer.ln_f(h))
    if family == "bert_mlm":
        return lambda h: model.cls(h)  # BERT has no final norm: the MLM head's transform, then the decoder
    if family == "gemma2":
        return lambda h: 2.0 * torch.tanh(model.lm_head(model.model.norm(h)) / 2.0)
    if family == "llama":
        return lambda h: model.lm_head(model.model.norm(h))
    return lambda h: model.lm_head(model.model.language_model.norm(h))  # VLMs: their language model's


def check_against(lens: Any, logits: Any, row: int, k: int) -> None:
    """Row ``row`` of ``lens`` (batch item 0) holds the top-k, entropy and named tokens of ``logits``."""
    logp = torch.log_softmax(logits.double(), dim=-1)[0]  # [positions, vocab]
    p = logp.exp()
    np.testing.assert_allclose(lens.named_probs[0, row], p[:, NAMED].numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(lens.named_scores[0, row], logits[0][:, NAMED].numpy(), rtol=0, atol=1e-5)
    top = p.topk(k, dim=-1)
    np.testing.assert_allclose(lens.top_probs[0, row], top.values.numpy(), rtol=0, atol=1e-5)
    assert (lens.top_ids[0, row] == top.indices.numpy()).mean() > 0.98  # near-ties may swap
    np.testing.assert_allclose(lens.entropy[0, row], -(p * logp).sum(-1).numpy(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("family", LM_FAMILIES)
def test_every_layer_equals_the_hand_readout(request: pytest.FixtureRequest, family: str) -> None:
    model, inputs = lm_inputs(request, family)
    processor = request.getfixturevalue("tok")
    lens = mmviz.logit_lens(model, inputs, processor, tokens=NAMED, top_k=4)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
        readout = hand_readout(family, model)
        n_states = len(out.hidden_states)
        assert lens.layers == tuple(range(n_states))
        for state in range(n_states - 1):
            check_against(lens, readout(out.hidden_states[state]), state, 4)
    check_against(lens, out.logits, n_states - 1, 4)  # the last layer is the model's own output
    probs = torch.softmax(out.logits.double(), -1)[0, :, NAMED[0]].numpy()
    np.testing.assert_allclose(lens.prob(NAMED[0])[-1], probs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["llava", "paligemma", "qwen2_vl"])
def test_vlm_image_tokens_carry_their_patch(request: pytest.FixtureRequest, family: str) -> None:
    model, inputs = lm_inputs(request, family)
    processor = inputs if family == "qwen2_vl" else request.getfixturevalue(family)[1]
    if family == "qwen2_vl":
        processor = request.getfixturevalue("qwen2_vl")[1]
    lens = mmviz.logit_lens(model, inputs, processor, layers=[-1], top_k=2)
    table = lens.tokens
    assert len(table.images) == 1 and (table.kind == "image").sum() == np.prod(table.grids[0])
    assert (table.image_positions(0) >= 0).all()
    assert len(table) == inputs["input_ids"].shape[1] == lens.positions.size


def test_text_of_named_tokens_and_top(gpt2: Any, tok: Any) -> None:
    inputs = tok("a red square left of", return_tensors="pt")
    lens = mmviz.logit_lens(gpt2, inputs, tok, tokens=["red", "blue"], top_k=3)
    assert lens.named == ("red", "blue")
    assert list(lens.named_ids) == [tok.convert_tokens_to_ids("red"), tok.convert_tokens_to_ids("blue")]
    with torch.no_grad():
        p = gpt2(**inputs).logits.softmax(-1)[0, -1]
    top = lens.top(-1, -1)
    assert [round(q, 5) for _, q in top] == [round(float(v), 5) for v in p.topk(3).values]
    ids = p.topk(3).indices.tolist()
    assert [t for t, _ in top] == [tok.convert_ids_to_tokens(i) if i < len(tok) else f"#{i}" for i in ids]
    np.testing.assert_allclose(lens.prob("red"), lens.prob(lens.named_ids[0]))
    assert lens.top_text().shape == (3, 6)


def test_layers_positions_batch_and_chunks_slice_the_full_lens(gpt2: Any, tok: Any) -> None:
    inputs = tok(["a red square left of", "the blue circle"], return_tensors="pt", padding=True)
    full = mmviz.logit_lens(gpt2, inputs, tok, tokens=NAMED, top_k=5)
    part = mmviz.logit_lens(gpt2, inputs, tok, tokens=NAMED, top_k=5, layers=[1, -1], positions=[0, -2], chunk=1)
    assert part.layers == (1, 2) and list(part.positions) == [0, 4]
    for name in ("top_probs", "named_probs", "entropy"):
        np.testing.assert_allclose(getattr(part, name), getattr(full, name)[:, [1, 2]][:, :, [0, 4]], atol=1e-6)
    assert len(full.tables) == 2 and list(full.tables[1].kind[-2:]) == ["pad", "pad"]
    with torch.no_grad():
        p = gpt2(**inputs).logits.softmax(-1)
    np.testing.assert_allclose(full.prob(NAMED[1], batch_index=1)[-1], p[1, :, NAMED[1]].numpy(), atol=1e-6)


def test_generate_lenses_every_fed_position(gpt2: Any, tok: Any) -> None:
    inputs = tok("a red square", return_tensors="pt")
    options = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    lens = mmviz.logit_lens(gpt2, inputs, tok, tokens=NAMED, top_k=3, generate=options)
    with torch.no_grad():
        out = gpt2.generate(**inputs, **options, return_dict_in_generate=True, output_logits=True)
        forward = gpt2(out.sequences[:, :-1]).logits
    prompt = inputs["input_ids"].shape[1]
    assert lens.positions.size == out.sequences.shape[1] - 1  # the last token is never fed back
    assert list(lens.tokens.generated) == [False] * prompt + [True] * 3
    assert list(lens.tokens.token_id) == out.sequences[0, :-1].tolist()
    steps = torch.stack(out.logits, dim=1).softmax(-1)  # [1, new tokens, vocab]: what generate sampled from
    np.testing.assert_allclose(lens.top_probs[0, -1, prompt - 1 :, 0], steps[0].max(-1).values.numpy(), atol=1e-5)
    check_against(lens, forward, 2, 3)  # the same as one forward over the generated sequence


def test_model_left_as_found(gpt2: Any, tok: Any) -> None:
    inputs = tok("a red square", return_tensors="pt")
    with torch.no_grad():
        gpt2(**inputs, output_hidden_states=True)
    hooks = n_hooks(gpt2)
    gpt2.train()
    try:
        mmviz.logit_lens(gpt2, inputs, tok)
        assert gpt2.training and all(m.training for m in gpt2.modules())
        with pytest.raises(ValueError):
            mmviz.logit_lens(gpt2, inputs, tok, positions=[99])
        assert n_hooks(gpt2) == hooks and gpt2.training
    finally:
        gpt2.eval()


def test_bad_input_is_a_clear_error(gpt2: Any, tok: Any, request: pytest.FixtureRequest) -> None:
    inputs = tok("a red square", return_tensors="pt")
    with pytest.raises(ValueError, match="is 2 tokens"):
        mmviz.logit_lens(gpt2, inputs, tok, tokens=["red square"])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        mmviz.logit_lens(gpt2, inputs, tok, tokens=[64])
    with pytest.raises(ValueError, match="top_k"):
        mmviz.logit_lens(gpt2, inputs, tok, top_k=0)
    with pytest.raises(ValueError, match="layer 3 does not exist"):
        mmviz.logit_lens(gpt2, inputs, tok, layers=[3])
    with pytest.raises(ValueError, match="texts= is for"):
        mmviz.logit_lens(gpt2, inputs, tok, texts=["a"])
    with pytest.raises(TypeError, match="dict of tensors"):
        mmviz.logit_lens(gpt2, "a red square", tok)
    lens = mmviz.logit_lens(gpt2, inputs, tok, tokens=["red"])
    with pytest.raises(KeyError, match="tokens="):
        lens.prob("blue")
    classifier, _ = request.getfixturevalue("bert_classifier")
    with pytest.raises(ValueError, match="AutoModelForMaskedLM"):
        mmviz.logit_lens(classifier, inputs, tok)
