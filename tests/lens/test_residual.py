"""The residual-stream seam: each family's readout reproduces the model's own output from raw hidden states."""

from __future__ import annotations

from typing import Any

import pytest

from mmviz._hf.residual import edit_residual, find_readout, find_vision_readout, record_residual
from tests.attribution.conftest import random_image

torch = pytest.importorskip("torch")

IDS = [[2, 5, 6, 7, 8]]


def lm_inputs(request: pytest.FixtureRequest, family: str) -> tuple[Any, dict[str, Any]]:
    """A language model of ``family`` and its inputs (VLMs with one random image)."""
    if family in ("gpt2", "llama", "bert_mlm", "gemma2"):
        return request.getfixturevalue(family), {"input_ids": torch.tensor(IDS)}
    if family == "qwen2_vl":
        model, _, inputs = request.getfixturevalue("qwen2_vl")
        return model, inputs
    model, processor = request.getfixturevalue(family)
    image_token = "<image> " if family == "llava" else "<image>"
    return model, dict(processor(images=[random_image()], text=image_token + "what shape", return_tensors="pt"))


def n_hooks(model: Any) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


LM_FAMILIES = ["gpt2", "llama", "bert_mlm", "gemma2", "llava", "paligemma", "qwen2_vl"]


@pytest.mark.parametrize("family", LM_FAMILIES)
def test_readout_reproduces_logits_and_states(request: pytest.FixtureRequest, family: str) -> None:
    model, inputs = lm_inputs(request, family)
    readout = find_readout(model)
    with torch.no_grad():
        model(**inputs, output_hidden_states=True)  # transformers adds its own recording hooks on first use
    hooks = n_hooks(model)
    with torch.no_grad(), record_residual(readout.blocks, list(range(readout.n_states))) as seen:
        out = model(**inputs, output_hidden_states=True)
    assert readout.n_states == len(out.hidden_states)
    for state in range(readout.n_states - 1):  # transformers' last entry may be normed already
        torch.testing.assert_close(seen[state][0], out.hidden_states[state], rtol=0, atol=0)
    torch.testing.assert_close(readout.logits(seen[readout.n_states - 1][0]), out.logits, rtol=0, atol=1e-5)
    assert n_hooks(model) == hooks


def test_readout_parts(request: pytest.FixtureRequest) -> None:
    gpt2, bert, gemma2 = (request.getfixturevalue(n) for n in ("gpt2", "bert_mlm", "gemma2"))
    assert find_readout(gpt2).norm is gpt2.transformer.ln_f and find_readout(gpt2).head is gpt2.lm_head
    assert find_readout(bert).norm is None and find_readout(bert).head is bert.cls  # transform + decoder
    assert find_readout(gemma2).softcap == 2.0
    llava, _ = request.getfixturevalue("llava")
    assert find_readout(llava).blocks_path == "model.language_model.layers"


def test_no_head_is_a_clear_error(gpt2: Any) -> None:
    with pytest.raises(ValueError, match="AutoModelForCausalLM"):
        find_readout(gpt2.transformer)


@pytest.mark.parametrize("state", [0, 1, 2])
def test_edit_residual(gpt2: Any, state: int) -> None:
    ids = torch.tensor(IDS)
    readout = find_readout(gpt2)
    with torch.no_grad():
        clean = gpt2(ids).logits
        with edit_residual(readout.blocks, state, lambda h: h):
            same = gpt2(ids).logits
        with edit_residual(readout.blocks, state, torch.zeros_like), record_residual(readout.blocks, [state]) as seen:
            zeroed = gpt2(ids)
    torch.testing.assert_close(same, clean, rtol=0, atol=0)
    if state < 2:
        assert torch.all(seen[state][0] == 0)
    else:  # the output of the last block, zeroed, reads out as the head applied to the final norm of zeros
        torch.testing.assert_close(zeroed.logits, readout.logits(torch.zeros(1, 5, 32)), rtol=0, atol=1e-6)
    assert not torch.allclose(zeroed.logits, clean)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_vision_readout_pools_like_the_model(request: pytest.FixtureRequest, family: str) -> None:
    model, processor = request.getfixturevalue(family)
    vision = find_vision_readout(model)
    pixels = processor(images=[random_image()], return_tensors="pt")["pixel_values"]
    with torch.no_grad(), record_residual(vision.blocks, [vision.n_states - 1]) as seen:
        features = model.get_image_features(pixel_values=pixels)
    features = features if isinstance(features, torch.Tensor) else features.pooler_output
    torch.testing.assert_close(vision.pooled(seen[vision.n_states - 1][0]), features, rtol=0, atol=1e-6)
    assert vision.n_prefix == (1 if family == "clip" else 0)


def test_vision_readout_needs_a_tower(gpt2: Any) -> None:
    with pytest.raises(ValueError, match="CLIPModel"):
        find_vision_readout(gpt2)
