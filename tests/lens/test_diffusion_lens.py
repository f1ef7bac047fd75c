"""The Diffusion Lens on a tiny random teaching pipeline, against a hand-made text encoder per layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mmviz
from mmviz.data.lens import DiffusionLensTrace

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

PROMPT = "a red circle left of a blue square"
STEPS = 3


@pytest.fixture(scope="module")
def pipe() -> Any:
    """The untrained teaching pipeline of ``mmviz demo --models random`` (random UNet and text encoder)."""
    from mmviz.demo import _random_models

    return _random_models().pipe


def draw(pipe: Any, seed: int = 0) -> np.ndarray:
    out = pipe(PROMPT, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(seed), output_type="np")
    return (np.clip(out.images[0], 0, 1) * 255 + 0.5).astype(np.uint8)


def hand_encoder(pipe: Any, layer: int) -> Any:
    """The pipeline's ``encode_prompt`` by hand: hidden state ``layer`` of ``output_hidden_states`` through
    the text encoder's final norm."""

    def encode_prompt(prompt: Any) -> tuple[Any, Any]:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        tokenizer = pipe.tokenizer
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
        with torch.no_grad():
            out = pipe.text_encoder(input_ids=ids["input_ids"], output_hidden_states=True)
            return ids["input_ids"], pipe.text_encoder.final_layer_norm(out.hidden_states[layer])

    return encode_prompt


def test_every_layer_draws_what_a_hand_made_encoder_draws(pipe: Any) -> None:
    lens = mmviz.logit_lens(pipe, PROMPT, generate={"num_inference_steps": STEPS, "seed": 0})
    n_states = pipe.text_encoder.config.num_hidden_layers + 1
    assert isinstance(lens, DiffusionLensTrace) and lens.layers == tuple(range(n_states))
    assert lens.images.shape == (n_states, 32, 32, 3)
    np.testing.assert_array_equal(lens.image(-1), draw(pipe))  # the last layer is the pipeline's own image
    encoder = pipe.text_encoder
    assert all(len(m._forward_hooks) + len(m._forward_pre_hooks) == 0 for m in encoder.modules())  # left as found
    try:
        for layer in range(n_states - 1):
            object.__setattr__(pipe, "encode_prompt", hand_encoder(pipe, layer))
            np.testing.assert_array_equal(lens.image(layer), draw(pipe))
    finally:
        object.__delattr__(pipe, "encode_prompt")
    assert not np.array_equal(lens.image(0), lens.image(-1))
    assert "red" in "".join(lens.tokens.text)


def test_budget_files_and_figure(pipe: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_steps=8"):
        mmviz.logit_lens(pipe, PROMPT, generate={"num_inference_steps": 4}, max_steps=8)
    with pytest.raises(ValueError, match="takes layers="):
        mmviz.logit_lens(pipe, PROMPT, tokens=[" red"])
    lens = mmviz.logit_lens(pipe, PROMPT, layers=[1, -1], generate={"num_inference_steps": 2, "seed": 3})
    last = pipe.text_encoder.config.num_hidden_layers
    assert lens.layers == (1, last) and lens.info["steps"] == 2 and lens.info["seed"] == 3
    lens.save(tmp_path / "d.mmviz")
    back = mmviz.load(tmp_path / "d.mmviz")
    np.testing.assert_array_equal(back.images, lens.images)
    assert back.layers == lens.layers and back.prompt == PROMPT and repr(back) == repr(lens)
    fig = lens.figure()
    assert [ax.get_title() for ax in fig.axes] == ["layer 1", f"layer {last}"]
