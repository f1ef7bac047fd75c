"""mmviz.features on tiny models equals encoding output_hidden_states by hand; files; refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import mmviz
from mmviz.features._load import sae_from_arrays
from tests.features.conftest import random_arrays, random_image, relu


def by_hand(hidden: np.ndarray, a: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Dense features and reconstruction error ``‖x − x̂‖`` of a relu SAE, in numpy."""
    f = relu((hidden - a["b_dec"]) @ a["W_enc"] + a["b_enc"])
    return f, np.linalg.norm(hidden - (f @ a["W_dec"] + a["b_dec"]), axis=-1)


def check_against(ft: Any, hidden: np.ndarray, a: dict[str, np.ndarray], named: list[int]) -> None:
    f, err = by_hand(hidden, a)
    np.testing.assert_allclose(ft.reconstruction_error, err, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ft.norms, np.linalg.norm(hidden, axis=-1), rtol=1e-5)
    for p in range(len(hidden)):
        expected = [int(i) for i in np.argsort(-f[p])[: ft.k] if f[p, i] > 0]
        got = ft.top(p, k=ft.k)
        assert [g for g, _ in got] == expected
        np.testing.assert_allclose([v for _, v in got], f[p, expected], rtol=1e-4, atol=1e-5)
    for feature in named:
        np.testing.assert_allclose(ft.activations(feature), f[:, feature], rtol=1e-4, atol=1e-5)
        assert ft.is_exact(feature)
    np.testing.assert_allclose(ft.feature_max, f.max(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(ft.feature_count, (f > 0).sum(axis=0))


def test_decoder_lm_equals_hidden_states_by_hand(gpt2: Any, tok: Any) -> None:
    inputs = tok("the red cat sat on the mat", return_tensors="pt")
    a = random_arrays()
    ft = mmviz.features(gpt2, inputs, sae_from_arrays(a), tok, site="h.0", k=4, features=[5, 9])
    with torch.no_grad():
        hidden = gpt2(**inputs, output_hidden_states=True).hidden_states[1][0].numpy()
    assert ft.site == "transformer.h.0" and len(ft.tokens) == hidden.shape[0]
    assert list(ft.tokens.text) == tok.convert_ids_to_tokens(inputs["input_ids"][0])
    check_against(ft, hidden, a, [5, 9])
    # a feature not named up front reads its top-k values and 0 elsewhere
    f, _ = by_hand(hidden, a)
    top_any = int(ft.top(0)[0][0])
    in_top = np.asarray([top_any in [g for g, _ in ft.top(p, k=4)] for p in range(len(hidden))])
    np.testing.assert_allclose(ft.activations(top_any), np.where(in_top, f[:, top_any], 0.0), rtol=1e-4, atol=1e-5)


def test_vlm_text_and_image_positions(llava: tuple[Any, Any]) -> None:
    model, processor = llava
    inputs = processor(images=[random_image(16)], text="<image> a red square", return_tensors="pt")
    a = random_arrays(seed=3)
    ft = mmviz.features(model, inputs, sae_from_arrays(a), processor, site="language_model.layers.0", k=6, features=[2])
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states[1][0].numpy()
    check_against(ft, hidden, a, [2])
    image = ft.tokens.kind == "image"
    assert image.sum() == 16 and (ft.tokens.kind == "text").any()
    amap = ft.image_map(2)
    assert amap.shape == (4, 4)
    np.testing.assert_allclose(amap[ft.tokens.patch_row[image], ft.tokens.patch_col[image]], ft.activations(2)[image])
    crop = ft.crop(int(np.flatnonzero(image)[5]), margin=0)
    assert crop is not None and crop.shape == (4, 4, 3)
    assert ft.crop(int(np.flatnonzero(~image)[0])) is None


def test_collection_of_inputs_concatenates_items(gpt2: Any, tok: Any) -> None:
    texts = ["the red cat", "a blue dog sat down"]
    a = random_arrays(seed=4)
    ft = mmviz.features(
        gpt2,
        [tok(t, return_tensors="pt") for t in texts],
        sae_from_arrays(a),
        tok,
        site="h.1",
        k=3,
        features=[7],
        progress=False,
    )
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    assert ft.n_items == 2 and list(np.bincount(ft.item)) == lengths
    # GPT-2's last entry of output_hidden_states comes after ln_f: read the raw block output with a hook
    seen: list[torch.Tensor] = []
    handle = gpt2.transformer.h[1].register_forward_hook(
        lambda m, i, o: seen.append(o[0] if isinstance(o, tuple) else o)
    )
    with torch.no_grad():
        for t in texts:
            gpt2(**tok(t, return_tensors="pt"))
    handle.remove()
    hidden = [s[0].numpy() for s in seen]
    check_against(ft, np.concatenate(hidden), a, [7])
    best = ft.top_positions(7, n=3)
    assert [p for p, _ in best] == list(np.argsort(-ft.activations(7))[: len(best)])


def test_last_block_of_a_llama_is_the_raw_residual(llama: Any) -> None:
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    a = random_arrays(seed=5)
    ft = mmviz.features(llama, {"input_ids": ids}, sae_from_arrays(a), site="layers.0", k=4, features=[0, 63])
    with torch.no_grad():
        hidden = llama(input_ids=ids, output_hidden_states=True).hidden_states[1][0].numpy()
    check_against(ft, hidden, a, [0, 63])
    assert list(ft.tokens.text) == [f"#{i}" for i in ids[0].tolist()]


def test_save_load_round_trip(gpt2: Any, tok: Any, tmp_path: Path) -> None:
    ft = mmviz.features(
        gpt2,
        tok("a red cat", return_tensors="pt"),
        sae_from_arrays(random_arrays()),
        tok,
        site="h.0",
        k=3,
        features=[1],
    )
    ft.save(tmp_path / "f.mmviz")
    back = mmviz.load(tmp_path / "f.mmviz")
    assert isinstance(back, mmviz.FeatureTrace) and back.site == ft.site and back.info == ft.info
    for name in FeatureTraceArrays:
        np.testing.assert_array_equal(getattr(back, name), getattr(ft, name))
    assert list(back.tokens.text) == list(ft.tokens.text)


FeatureTraceArrays = mmviz.FeatureTrace._ARRAYS


def test_refusals(gpt2: Any, tok: Any) -> None:
    inputs = tok("a red cat", return_tensors="pt")
    wide = sae_from_arrays(random_arrays(d_in=48))
    with pytest.raises(ValueError, match=r"d_in=48, but site 'transformer.h.0' has width 32"):
        mmviz.features(gpt2, inputs, wide, tok, site="h.0")
    sae = sae_from_arrays(random_arrays())
    with pytest.raises(ValueError, match=r"no residual-stream site 'h.9'.*transformer.h.0 … transformer.h.1"):
        mmviz.features(gpt2, inputs, sae, tok, site="h.9")
    with pytest.raises(ValueError, match="k must be an int in 1 … d_sae"):
        mmviz.features(gpt2, inputs, sae, tok, site="h.0", k=0)
    with pytest.raises(ValueError, match="features must lie in 0 … 63"):
        mmviz.features(gpt2, inputs, sae, tok, site="h.0", features=[64])
    with pytest.raises(TypeError, match="mmviz SAE"):
        mmviz.features(gpt2, inputs, random_arrays(), tok, site="h.0")  # type: ignore[arg-type]
    ft = mmviz.features(gpt2, inputs, sae, tok, site="h.0", k=2)
    with pytest.raises(IndexError, match="features 0 … 63"):
        ft.activations(64)
    with pytest.raises(IndexError, match="positions 0 …"):
        ft.top(99)


def test_vision_tower_site_and_the_model_left_as_it_was(llava: tuple[Any, Any]) -> None:
    model, processor = llava
    inputs = processor(images=[random_image(16, 1)], text="<image> a red square", return_tensors="pt")
    layers = model.model.vision_tower.encoder.layers
    with torch.no_grad():
        before = model(**inputs).logits
    hooks = [dict(b._forward_hooks) for b in layers]  # transformers installs its own on the first run
    a = random_arrays(seed=6)
    ft = mmviz.features(
        model, inputs, sae_from_arrays(a), processor, site="vision_tower.encoder.layers.0", k=4, features=[1]
    )
    with torch.no_grad():
        tower = model.model.vision_tower(inputs["pixel_values"], output_hidden_states=True)
        after = model(**inputs).logits
    check_against(ft, tower.hidden_states[1][0].numpy(), a, [1])
    assert list(ft.tokens.kind[:2]) == ["special", "image"] and ft.tokens.grids == ((4, 4),)
    torch.testing.assert_close(after, before, rtol=0, atol=0)  # hooks gone, nothing changed
    assert [dict(b._forward_hooks) for b in layers] == hooks


def test_topk_sae_is_exact_and_a_padded_batch_gives_one_item_per_row(gpt2: Any, tok: Any) -> None:
    batch = tok(["the red cat sat", "a dog"], return_tensors="pt", padding=True)
    a = random_arrays(seed=7)
    sae = sae_from_arrays(a, {"architecture": "topk", "k": 3})
    ft = mmviz.features(gpt2, batch, sae, tok, site="h.0", k=4)
    assert ft.n_items == 2 and list(np.bincount(ft.item)) == [batch["input_ids"].shape[1]] * 2
    assert (ft.tokens.kind == "pad").sum() == int((batch["attention_mask"] == 0).sum())
    with torch.no_grad():
        hidden = gpt2(**batch, output_hidden_states=True).hidden_states[1].numpy().reshape(-1, 32)
    dense = sae.encode(hidden)
    for feature in (0, 17, 63):
        assert ft.is_exact(feature)
        np.testing.assert_allclose(ft.activations(feature), dense[:, feature], rtol=1e-4, atol=1e-5)


def test_collection_of_vlm_inputs_keeps_each_items_image(llava: tuple[Any, Any]) -> None:
    model, processor = llava
    batches = [
        processor(images=[random_image(16, seed)], text="<image> a red square", return_tensors="pt") for seed in (0, 1)
    ]
    ft = mmviz.features(
        model, batches, sae_from_arrays(random_arrays()), processor, site="language_model.layers.1", k=3
    )
    assert ft.n_items == 2 and len(ft.tokens.images) == 2
    second = np.flatnonzero((ft.item == 1) & (ft.tokens.kind == "image"))
    assert set(ft.tokens.image_index[second].tolist()) == {1}
    p = int(second[0])
    r, c = int(ft.tokens.patch_row[p]), int(ft.tokens.patch_col[p])
    np.testing.assert_array_equal(ft.crop(p, margin=0), ft.tokens.images[1][r * 4 : r * 4 + 4, c * 4 : c * 4 + 4])
    assert not np.array_equal(ft.tokens.images[0], ft.tokens.images[1])


def test_a_model_in_training_mode_is_run_without_dropout_and_left_training(gpt2: Any, tok: Any) -> None:
    inputs = tok("the red cat sat on the mat", return_tensors="pt")
    sae = sae_from_arrays(random_arrays(seed=8))
    expected = mmviz.features(gpt2, inputs, sae, tok, site="h.1", k=4)
    gpt2.train()
    try:
        got = mmviz.features(gpt2, inputs, sae, tok, site="h.1", k=4)
        assert gpt2.training and gpt2.transformer.h[0].training
    finally:
        gpt2.eval()
    np.testing.assert_array_equal(got.top_features, expected.top_features)
    np.testing.assert_allclose(got.reconstruction_error, expected.reconstruction_error, rtol=1e-6)
