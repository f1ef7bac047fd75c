"""mmviz.steer and mmviz.direction on a tiny Llama and LLaVA, against hidden states read by hand."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import mmviz
from tests.attribution.conftest import random_image

torch = pytest.importorskip("torch")

IDS = torch.tensor([[2, 5, 6, 7, 8, 9], [2, 10, 11, 12, 0, 0]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])


def _run(model: Any) -> Any:
    """The model's output on ``IDS``, with ``.site`` = what block 1 received (the site ``model.layers.0``)."""
    seen: list[Any] = []

    def keep(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.append(args[0] if args else kwargs["hidden_states"])

    handle = model.model.layers[1].register_forward_pre_hook(keep, with_kwargs=True)
    try:
        with torch.no_grad():
            out = model(input_ids=IDS, attention_mask=MASK, output_hidden_states=True)
    finally:
        handle.remove()
    out.site = seen[0]
    return out


def _n_hooks(model: Any) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _vector(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=32).astype(np.float32)


def test_alpha_zero_changes_nothing(llama: Any) -> None:
    clean = _run(llama)
    with mmviz.steer(llama, _vector(), site="model.layers.0", alpha=0.0) as steering:
        steered = _run(llama)
    assert steering.calls == 1 and steering.site == "model.layers.0"
    torch.testing.assert_close(steered.logits, clean.logits, rtol=0, atol=0)


def test_add_moves_the_chosen_positions_by_alpha_times_direction(llama: Any) -> None:
    clean = _run(llama)
    v = _vector()
    with mmviz.steer(llama, v, site="layers.0", positions=[1, -1], alpha=2.5):
        steered = _run(llama)
    moved = steered.site - clean.site
    expected = torch.zeros_like(moved)
    expected[:, [1, 5]] = 2.5 * torch.from_numpy(v)
    torch.testing.assert_close(moved, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(steered.logits, clean.logits)


def test_ablate_leaves_the_state_orthogonal_to_the_direction(llama: Any) -> None:
    v = torch.from_numpy(_vector(1))
    unit = v / v.norm()
    clean = _run(llama)
    assert float((clean.site @ unit).abs().max()) > 1e-2  # there is a component to remove
    with mmviz.steer(llama, v, site="model.layers.0", mode="ablate"):
        steered = _run(llama)
    torch.testing.assert_close(steered.site @ unit, torch.zeros(2, 6), rtol=0, atol=1e-5)
    by_hand = clean.site - (clean.site @ unit)[..., None] * unit
    torch.testing.assert_close(steered.site, by_hand, rtol=0, atol=1e-5)
    with mmviz.steer(llama, v, site="model.layers.0", mode="ablate", alpha=0.5):
        half = _run(llama)
    torch.testing.assert_close(half.site @ unit, 0.5 * (clean.site @ unit), atol=1e-5, rtol=0)


def test_model_restored_after_an_exception(llama: Any) -> None:
    clean = _run(llama)
    hooks = _n_hooks(llama)
    with pytest.raises(RuntimeError, match="user code"), mmviz.steer(llama, _vector(), site="model.layers.1", alpha=9):
        _run(llama)
        raise RuntimeError("user code failed")
    assert _n_hooks(llama) == hooks
    torch.testing.assert_close(_run(llama).logits, clean.logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="has 32"), mmviz.steer(llama, np.ones(7), site="model.layers.1"):
        _run(llama)  # the size check runs inside the forward; the hook still goes
    assert _n_hooks(llama) == hooks


def test_direction_is_the_mean_difference(llama: Any) -> None:
    other = torch.tensor([[2, 7, 7, 7, 3, 3]])
    got = mmviz.direction(
        llama, {"input_ids": IDS, "attention_mask": MASK}, [{"input_ids": other}], site="model.layers.0"
    )
    with torch.no_grad():  # hidden state 1: the output of block 0
        a = llama(input_ids=IDS, attention_mask=MASK, output_hidden_states=True).hidden_states[1]
        b = llama(input_ids=other, output_hidden_states=True).hidden_states[1]
    mean_a = (a * MASK[..., None]).sum((0, 1)) / MASK.sum()
    np.testing.assert_allclose(got, (mean_a - b.mean((0, 1))).numpy(), atol=1e-5)
    batch = {"input_ids": IDS, "attention_mask": MASK}
    last = mmviz.direction(llama, batch, {"input_ids": other}, site="model.layers.0", positions=-1)
    np.testing.assert_allclose(last, (a[0, -1] - b[0, -1]).numpy(), atol=1e-5)  # row 2's last position is padding


def test_site_names_and_errors(llama: Any, llava: tuple[Any, Any]) -> None:
    assert mmviz.steering.sites(llama) == ["model.layers.0", "model.layers.1"]
    with pytest.raises(ValueError, match=r"model\.layers\.0 … model\.layers\.1"):
        mmviz.steer(llama, _vector(), site="model.layers.7").__enter__()
    model, _ = llava
    names = mmviz.steering.sites(model)
    assert "model.language_model.layers.1" in names and any("vision" in n for n in names)
    with pytest.raises(ValueError, match="ambiguous"):
        mmviz.steer(model, _vector(), site="layers.1").__enter__()
    with pytest.raises(ValueError, match="mode"):
        mmviz.steer(llama, _vector(), site="model.layers.0", mode="multiply").__enter__()
    with pytest.warns(UserWarning, match="nothing was steered"), mmviz.steer(llama, _vector(), site="model.layers.0"):
        pass


def test_steering_combines_with_capture_and_generate(llava: tuple[Any, Any]) -> None:
    model, processor = llava
    inputs = processor(images=[random_image()], text="<image> what shape", return_tensors="pt")
    with mmviz.capture(model, processor=processor) as clean_cap, torch.no_grad():
        model(**inputs)
    with (
        mmviz.steer(model, _vector() * 10, site="language_model.layers.0", positions=-1),
        mmviz.capture(model, processor=processor) as cap,
        torch.no_grad(),
    ):
        model(**inputs)
    clean, steered = clean_cap.attention, cap.attention
    name = next(n for n in clean.modules if n.startswith("language_model"))
    np.testing.assert_array_equal(steered.probs(name, layers=0), clean.probs(name, layers=0))  # before the site
    after, before = steered.probs(name, layers=1), clean.probs(name, layers=1)
    np.testing.assert_array_equal(after[..., :-1, :], before[..., :-1, :])  # causal: earlier queries unchanged
    assert not np.allclose(after[..., -1, :], before[..., -1, :])  # the steered position reads differently
    with mmviz.steer(model, _vector(), site="language_model.layers.1", positions=-1) as steering, torch.no_grad():
        model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert steering.calls == 3  # the prompt, then one call per cached step


def test_nested_steers_apply_outer_first_and_reach_the_recorded_hidden_states(llama: Any) -> None:
    v = torch.from_numpy(_vector(2))
    unit = v / v.norm()
    clean = _run(llama)
    hooks = _n_hooks(llama)
    with mmviz.steer(llama, v, site="model.layers.0", mode="ablate"), mmviz.steer(llama, unit, site="model.layers.0"):
        steered = _run(llama)
    # ablate (outer) first, then add the unit vector (inner): the component along it is exactly 1
    torch.testing.assert_close(steered.site @ unit, torch.ones(2, 6), rtol=0, atol=1e-5)
    # transformers' own hidden_states record the edited state (LLaVA reads its image features from them)
    torch.testing.assert_close(steered.hidden_states[1], steered.site, rtol=0, atol=0)
    assert not torch.allclose(clean.hidden_states[1], steered.hidden_states[1])
    assert _n_hooks(llama) == hooks


def test_steering_the_vision_layer_a_llava_reads_changes_its_answer() -> None:
    """LLaVA takes image features from hidden_states[vision_feature_layer]: a steer there must reach them."""
    from mmviz import teaching

    vlm, processor = teaching.load_vlm()
    assert vlm.config.vision_feature_layer == -2  # the output of tower block 1 of 3
    scene = teaching.make_scenes(1, seed=1)[0]
    inputs = processor(text=["<image> " + scene.qa[0][0]], images=[scene.image], return_tensors="pt")
    with torch.no_grad():
        clean = vlm(**inputs).logits[0, -1]
    direction = torch.randn(vlm.config.vision_config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), mmviz.steer(vlm, direction, site="model.vision_tower.encoder.layers.1", alpha=20):
        steered = vlm(**inputs).logits[0, -1]
    assert float((steered - clean).abs().max()) > 1.0


def test_the_same_edit_nested_twice_is_taken_off_once_per_block(llama: Any) -> None:
    from mmviz._hf.residual import edit_residual

    def shift(hidden: Any) -> Any:
        return hidden + 1.0

    clean = _run(llama)
    blocks = llama.model.layers
    with edit_residual(blocks, 1, shift):
        with edit_residual(blocks, 1, shift):
            twice = _run(llama)
        once = _run(llama)  # the outer edit is still on
    torch.testing.assert_close(twice.site, clean.site + 2.0, rtol=0, atol=1e-5)
    torch.testing.assert_close(once.site, clean.site + 1.0, rtol=0, atol=1e-5)
