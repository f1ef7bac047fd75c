"""mmviz.decompose on tiny CLIP and SigLIP towers, against references written out by hand."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import mmviz
from mmviz.errors import BudgetError, CaptureError
from tests.attribution.conftest import random_image
from tests.decompose.conftest import TEXTS
from tests.decompose.conftest import images as _images

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_contributions_sum_to_the_models_own_embedding(name: str, request: pytest.FixtureRequest) -> None:
    model, processor = request.getfixturevalue(name)
    dec = request.getfixturevalue(f"{name}_dec")
    with torch.no_grad():
        out = model.get_image_features(**_images(processor))
    own = (out if isinstance(out, torch.Tensor) else out.pooler_output)[0].numpy()
    np.testing.assert_allclose(dec.embedding, own, rtol=0, atol=1e-6)
    assert np.abs(dec.total() - own).max() <= 1e-4 * np.abs(own).max()
    assert dec.info["relative_error"] <= 1e-4
    assert dec.info["module"] == "vision_model"  # the stack mmviz.capture names the tower: views link heads by it


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_reductions_agree(name: str, request: pytest.FixtureRequest) -> None:
    dec = request.getfixturevalue(f"{name}_dec")
    np.testing.assert_allclose(dec.patches.sum(1), dec.heads.sum(1), atol=1e-5)
    assert dec.detail_layers == (0, 1)  # a tiny tower fits the budget
    np.testing.assert_allclose(dec.by_head_and_patch(1).sum(1), dec.heads[1], atol=1e-5)
    np.testing.assert_allclose(dec.by_head_and_patch(1).sum(0), dec.patches[1], atol=1e-5)
    unit = dec.embedding / np.linalg.norm(dec.embedding)
    np.testing.assert_allclose(dec.maps[0].sum(-1), dec.heads @ unit, atol=1e-5)
    np.testing.assert_allclose(dec.by_patch(), dec.patches.sum(0))
    np.testing.assert_allclose(dec.by_patch(layer=-1), dec.patches[1])
    np.testing.assert_allclose(dec.batch_heads[0], dec.heads)
    assert dec.batch_heads.shape[0] == 3
    model, processor = request.getfixturevalue(name)
    second = mmviz.decompose(model, _images(processor), processor, batch_index=2)  # image 2 by source position
    np.testing.assert_allclose(second.heads, dec.batch_heads[2], atol=1e-5)
    assert not np.allclose(second.heads, dec.heads)


@contextlib.contextmanager
def _hooks(handles: list[Any]) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _frozen_norm_embedding(model: Any, pixels: Any, zero: tuple[str, int]) -> np.ndarray:
    """The CLIP embedding with one part of the last block zeroed and the final norm's std fixed to the clean run's.

    ``zero`` is ``("head", h)`` (head ``h``'s slice of the out_proj input, every position) or ``("mlp", 0)``.
    Only the last block changes and its MLP replays its clean output, so nothing reads the change but the
    readout: with the norm's std fixed, the embedding moves by exactly the part's direct term.
    """
    vision = model.vision_model
    block = vision.encoder.layers[-1]
    norm = vision.post_layernorm
    clean: list[Any] = []
    with _hooks([block.mlp.register_forward_hook(lambda _m, _a, out: clean.append(out))]), torch.no_grad():
        clean_last = vision(pixel_values=pixels).last_hidden_state[0, 0]
    std = (clean_last.var(unbiased=False) + norm.eps).sqrt()
    hd = block.self_attn.head_dim

    def drop_head(_m: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0].clone()
        x[..., zero[1] * hd : (zero[1] + 1) * hd] = 0
        return (x,)

    def drop_mlp(_m: Any, _a: Any, out: Any) -> Any:
        return torch.zeros_like(out)

    def replay_mlp(_m: Any, _a: Any, out: Any) -> Any:
        return clean[0]

    def fixed_std(_m: Any, args: tuple[Any, ...], _out: Any) -> Any:
        x = args[0]
        return (x - x.mean(-1, keepdim=True)) / std * norm.weight + norm.bias

    handles = [norm.register_forward_hook(fixed_std)]
    if zero[0] == "head":
        handles.append(block.self_attn.out_proj.register_forward_pre_hook(drop_head))
        handles.append(block.mlp.register_forward_hook(replay_mlp))
    else:
        handles.append(block.mlp.register_forward_hook(drop_mlp))
    with _hooks(handles), torch.no_grad():
        return model.get_image_features(pixel_values=pixels).pooler_output[0].numpy()


@pytest.mark.parametrize("zero", [("head", 0), ("head", 1), ("mlp", 0)])
def test_removing_a_part_by_hand_matches_its_term(clip: tuple[Any, Any], clip_dec: Any, zero: tuple[str, int]) -> None:
    model, processor = clip
    removed = _frozen_norm_embedding(model, _images(processor)["pixel_values"], zero)
    term = clip_dec.heads[-1, zero[1]] if zero[0] == "head" else clip_dec.mlp[-1]
    np.testing.assert_allclose(removed, clip_dec.embedding - term, atol=1e-5)
    assert np.abs(term).max() > 1e-2  # the part matters, so the test can fail


def test_patch_terms_match_attention_times_values(clip: tuple[Any, Any], clip_dec: Any) -> None:
    """Head h's term from source s = A[h, CLS, s] · P·diag(γ)·centre(W_O,h · v_s) / σ (written out by hand)."""
    model, processor = clip
    vision = model.vision_model
    pixels = _images(processor)["pixel_values"][:1]
    old = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = vision(pixel_values=pixels, output_attentions=True, output_hidden_states=True)
    finally:
        model.set_attn_implementation(old)
    block = vision.encoder.layers[1]
    attn, norm = block.self_attn, vision.post_layernorm
    probs = out.attentions[1][0]  # [heads, query, key]
    x = block.layer_norm1(out.hidden_states[1][0])
    v = attn.v_proj(x).view(-1, attn.num_heads, attn.head_dim)  # [positions, heads, hd]
    sigma = (out.last_hidden_state[0, 0].var(unbiased=False) + norm.eps).sqrt()
    w_o = attn.out_proj.weight.view(-1, attn.num_heads, attn.head_dim)
    with torch.no_grad():
        written = torch.einsum("dhe,she->hsd", w_o, v)  # [heads, positions, d]
        written = written - written.mean(-1, keepdim=True)
        expected = probs[:, 0, :, None] * (written * norm.weight / sigma) @ model.visual_projection.weight.T
    np.testing.assert_allclose(clip_dec.by_head_and_patch(1), expected.numpy(), atol=1e-5)


def test_scores_are_shares_of_the_cosine_similarity(clip: tuple[Any, Any], clip_dec: Any) -> None:
    model, processor = clip
    with torch.no_grad():
        image = model.get_image_features(**_images(processor)).pooler_output[0]
        text = model.get_text_features(**processor.tokenizer(TEXTS, padding=True, return_tensors="pt")).pooler_output
    cos = torch.nn.functional.cosine_similarity(image[None], text).numpy()
    for i, caption in enumerate(TEXTS):
        assert clip_dec.similarity(caption) == pytest.approx(float(cos[i]), abs=1e-6)
        shares = clip_dec.shares(caption)
        assert sum(float(np.sum(v)) for v in shares.values()) == pytest.approx(float(cos[i]), abs=1e-5)
        by_hand = clip_dec.heads @ (text[i] / text[i].norm()).numpy() / float(image.norm())
        np.testing.assert_allclose(clip_dec.scores(caption), by_hand, atol=1e-6)
        np.testing.assert_allclose(clip_dec.patch_scores(caption).sum(), by_hand.sum(), atol=1e-5)
        np.testing.assert_allclose(clip_dec.patch_scores(i, layer=1, head=0).sum(), by_hand[1, 0], atol=1e-6)
    grid = clip_dec.patch_map("blue circle", layer=0)
    assert grid.shape == (4, 4) and np.isfinite(grid).all()


def test_describe_picks_texts_per_head(clip_dec: Any) -> None:
    described = clip_dec.describe(k=2)
    assert set(described) == {(layer, head) for layer in range(2) for head in range(2)}
    for picks in described.values():
        assert len(picks) == 2 and {t for t, _ in picks} <= set(TEXTS)
        assert all(0 <= share <= 1 for _, share in picks) and sum(s for _, s in picks) <= 1 + 1e-9


def test_budget_and_layers(clip: tuple[Any, Any]) -> None:
    model, processor = clip
    small = mmviz.decompose(model, _images(processor, 1), processor, budget=4_000)
    assert small.detail is None and small.detail_layers == ()
    with pytest.raises(KeyError, match=r"layers=\[0\]"):
        small.by_head_and_patch(0)
    one = mmviz.decompose(model, _images(processor, 1), processor, layers=[1])
    assert one.detail_layers == (1,)
    with pytest.raises(BudgetError, match="budget"):
        mmviz.decompose(model, _images(processor, 1), processor, layers=[0, 1], budget=4_000)
    with pytest.raises(ValueError, match="pool of texts"):
        one.describe()
    with pytest.raises(ValueError, match="several images"):
        mmviz.decompose(model, _images(processor, 1), processor, texts=TEXTS).describe()


def test_save_and_load_round_trip(clip_dec: Any, tmp_path: Any) -> None:
    clip_dec.save(tmp_path / "dec.mmviz")
    back = mmviz.load(tmp_path / "dec.mmviz")
    assert isinstance(back, mmviz.DecompositionTrace) and back.texts == clip_dec.texts
    np.testing.assert_array_equal(back.maps, clip_dec.maps)
    np.testing.assert_array_equal(back.detail, clip_dec.detail)
    np.testing.assert_array_equal(back.total(), clip_dec.total())
    assert list(back.tokens.text) == list(clip_dec.tokens.text) and len(back.tokens.images) == 1


def test_bad_inputs_are_refused_clearly(clip: tuple[Any, Any]) -> None:
    model, processor = clip
    with pytest.raises(CaptureError, match="CLIP or SigLIP"):
        mmviz.decompose(model.text_model, _images(processor))
    with pytest.raises(ValueError, match="no pixel_values"):
        mmviz.decompose(model, {"input_ids": torch.zeros(1, 3, dtype=torch.long)})
    with pytest.raises(KeyError, match="not one of the trace's texts"):
        mmviz.decompose(model, _images(processor, 1), processor, texts=["a"]).scores("b")
    with pytest.raises(IndexError, match="batch_index"):
        mmviz.decompose(model, _images(processor, 1), processor, batch_index=2)


def test_pil_images_and_model_mode_restored(clip: tuple[Any, Any]) -> None:
    model, processor = clip
    model.train()
    try:
        dec = mmviz.decompose(model, [random_image(16, 0)], processor)
        assert model.training
    finally:
        model.eval()
    assert dec.tokens.image_positions(0).shape == (4, 4)


def test_half_precision_tower_decomposes_in_float32(clip: tuple[Any, Any]) -> None:
    import copy

    model, processor = clip
    half = copy.deepcopy(model).to(torch.bfloat16)
    dec = mmviz.decompose(half, _images(processor, 1), processor)
    assert dec.heads.dtype == np.float32
    assert dec.info["relative_error"] < 1e-2  # the model's own bfloat16 rounding, nothing more


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_a_bare_vision_model_decomposes_its_pooled_output(name: str, request: pytest.FixtureRequest) -> None:
    model, processor = request.getfixturevalue(name)
    pixels = _images(processor, 2)["pixel_values"]
    dec = mmviz.decompose(model.vision_model, pixels)  # CLIPVisionModel / SiglipVisionModel: no projection
    with torch.no_grad():
        pooled = model.vision_model(pixel_values=pixels).pooler_output[0].numpy()
    np.testing.assert_allclose(dec.embedding, pooled, atol=1e-6)
    assert np.abs(dec.total() - pooled).max() <= 1e-4 * np.abs(pooled).max()
    assert dec.info["model"] == type(model.vision_model).__name__ and dec.texts == ()


def test_siglip_head_removed_by_hand_with_the_pooling_fixed(siglip: tuple[Any, Any], siglip_dec: Any) -> None:
    """SigLIP's readout with the run's norm statistics, pooling weights and pooling MLP output held fixed.

    Head 1 of the last block is zeroed in its out_proj input; the final norm divides by the clean run's
    per-position std, the pooling attention uses the clean run's weights (recomputed by hand below) and the
    last block's MLP and the pooling MLP replay their clean outputs: the embedding then moves by exactly the
    head's direct term.
    """
    model, processor = siglip
    vision = model.vision_model
    pixels = _images(processor)["pixel_values"]
    norm, pool, block = vision.post_layernorm, vision.head, vision.encoder.layers[-1]
    seen: list[Any] = []  # the stream entering the final norm (SigLIP's last_hidden_state is after it)
    with _hooks([norm.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))]), torch.no_grad():
        vision(pixel_values=pixels)
    last = seen[0]
    std = (last.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
    d, n = last.shape[-1], pool.attention.num_heads
    w_q, w_k, w_v = pool.attention.in_proj_weight.split(d)
    b_q, b_k, b_v = pool.attention.in_proj_bias.split(d)
    with torch.no_grad():
        clean_normed = norm(last)
        query = (pool.probe[0] @ w_q.T + b_q).view(1, n, -1).transpose(0, 1)  # [heads, 1, hd]
        keys = (clean_normed @ w_k.T + b_k).view(3, -1, n, d // n).transpose(1, 2)  # [batch, heads, pos, hd]
        weights = torch.softmax(query @ keys.transpose(-1, -2) / (d // n) ** 0.5, dim=-1)  # [batch, heads, 1, pos]
    clean_mlp: list[Any] = []  # the last block's MLP, then the pooling head's
    keep = [m.register_forward_hook(lambda _m, _a, out: clean_mlp.append(out)) for m in (block.mlp, pool.mlp)]
    with _hooks(keep), torch.no_grad():
        vision(pixel_values=pixels)

    def drop_head(_m: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0].clone()
        x[..., d // n : 2 * d // n] = 0
        return (x,)

    def fixed_std(_m: Any, args: tuple[Any, ...], _out: Any) -> Any:
        x = args[0]
        return (x - x.mean(-1, keepdim=True)) / std * norm.weight + norm.bias

    def fixed_pooling(_m: Any, args: tuple[Any, ...], _out: Any) -> Any:
        values = (args[2] @ w_v.T + b_v).view(3, -1, n, d // n).transpose(1, 2)  # [batch, heads, pos, hd]
        mixed = (weights @ values).transpose(1, 2).reshape(3, 1, d)
        return pool.attention.out_proj(mixed), None

    def frozen(drop: bool) -> np.ndarray:
        handles = [
            norm.register_forward_hook(fixed_std),
            pool.attention.register_forward_hook(fixed_pooling),
            block.mlp.register_forward_hook(lambda _m, _a, _out: clean_mlp[0]),
            pool.mlp.register_forward_hook(lambda _m, _a, _out: clean_mlp[1]),
        ]
        if drop:
            handles.append(block.self_attn.out_proj.register_forward_pre_hook(drop_head))
        with _hooks(handles), torch.no_grad():
            return vision(pixel_values=pixels).pooler_output[0].numpy()

    np.testing.assert_allclose(frozen(drop=False), siglip_dec.embedding, atol=1e-5)  # the hooks alone change nothing
    removed = frozen(drop=True)
    term = siglip_dec.heads[-1, 1]
    np.testing.assert_allclose(removed, siglip_dec.embedding - term, atol=1e-5)
    assert np.abs(term).max() > 1e-2


def test_batch_size_changes_nothing_but_memory(clip: tuple[Any, Any], clip_dec: Any) -> None:
    model, processor = clip
    one_by_one = mmviz.decompose(model, _images(processor), processor, texts=TEXTS, batch_size=1)
    np.testing.assert_allclose(one_by_one.batch_heads, clip_dec.batch_heads, atol=1e-6)
    np.testing.assert_allclose(one_by_one.maps, clip_dec.maps, atol=1e-6)
    with pytest.raises(ValueError, match="batch_size"):
        mmviz.decompose(model, _images(processor), processor, batch_size=0)
