"""mmviz.patch against hand-written hooks on tiny GPT-2, BERT and LLaVA models (known answers, not shapes)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import transformers

import mmviz
from tests.attribution.conftest import model_state, random_image

SITES = ["residual", "attention", "mlp", "head"]


# -- hand-written references ----------------------------------------------------------------------
def gpt2_module(model: Any, kind: str, layer: int) -> tuple[torch.nn.Module, bool]:
    block = model.transformer.h[layer]
    return {
        "residual": (block, True),
        "attention": (block.attn, False),
        "mlp": (block.mlp, False),
        "head": (block.attn.c_proj, True),
    }[kind]


def llava_module(model: Any, kind: str, layer: int) -> tuple[torch.nn.Module, bool]:
    block = model.model.language_model.layers[layer]
    return {
        "residual": (block, True),
        "attention": (block.self_attn, False),
        "mlp": (block.mlp, False),
        "head": (block.self_attn.o_proj, True),
    }[kind]


def last_logprob(token: int) -> Any:
    return lambda out: torch.log_softmax(out.logits[0, -1].float(), -1)[token]


def hand_patch(model, clean, corrupt, module, pre, positions, metric, head=None, heads=1) -> float:
    """One clean forward recording the activation, one corrupted forward with it restored at ``positions``."""
    seen = {}

    def first(x):
        return x[0] if isinstance(x, tuple) else x

    def record_pre(m, args):
        seen["clean"] = args[0].detach().clone()

    def record_post(m, args, out):
        seen["clean"] = first(out).detach().clone()

    def swap(x):
        x = x.clone()
        if head is None:
            x[0, positions] = seen["clean"][0, positions]
        else:
            d = x.shape[-1] // heads
            x[0, positions, head * d : (head + 1) * d] = seen["clean"][0, positions, head * d : (head + 1) * d]
        return x

    def restore_pre(m, args):
        return (swap(args[0]), *args[1:])

    def restore_post(m, args, out):
        return (swap(out[0]), *out[1:]) if isinstance(out, tuple) else swap(out)

    with torch.no_grad():
        h = module.register_forward_pre_hook(record_pre) if pre else module.register_forward_hook(record_post)
        model(**clean)
        h.remove()
        h = module.register_forward_pre_hook(restore_pre) if pre else module.register_forward_hook(restore_post)
        try:
            return float(metric(model(**corrupt)))
        finally:
            h.remove()


def hand_gradient(model, clean, corrupt, module, pre, metric):
    """The activation in the clean and corrupted runs, and the metric's gradient w.r.t. it in the corrupted run."""
    acts = {}

    def leaf(x, key):
        acts[key] = x.detach().requires_grad_(key == "corrupt")
        return acts[key]

    for key, inputs in (("clean", clean), ("corrupt", corrupt)):
        if pre:
            h = module.register_forward_pre_hook(lambda m, a, k=key: (leaf(a[0], k), *a[1:]))
        else:
            h = module.register_forward_hook(
                lambda m, a, o, k=key: (leaf(o[0], k), *o[1:]) if isinstance(o, tuple) else leaf(o, k)
            )
        try:
            with torch.enable_grad():
                value = metric(model(**inputs))
        finally:
            h.remove()
    (grad,) = torch.autograd.grad(value, [acts["corrupt"]])
    return acts["clean"], acts["corrupt"].detach(), grad


@pytest.fixture
def prompts(tok):
    return tok("the red square is left of the", return_tensors="pt"), tok(
        "the blue circle is left of the", return_tensors="pt"
    )


@pytest.fixture
def images(llava):
    _model, processor = llava
    clean = processor(images=random_image(16, 0), text="<image> what shape", return_tensors="pt")
    corrupt = processor(images=random_image(16, 5), text="<image> what shape", return_tensors="pt")
    return clean, corrupt


# -- the grid's known answers ---------------------------------------------------------------------
def test_corrupt_equal_to_clean_changes_nothing(gpt2, tok, prompts, llava, images, bert_classifier):
    clean, _ = prompts
    res = mmviz.patch(gpt2, clean, clean, metric="square", processor=tok, sites=SITES, progress=False)
    assert res.effects.shape == (3 + 4, 2, 8)
    np.testing.assert_allclose(res.patched, res.clean_metric, atol=1e-5)
    assert res.clean_metric == res.corrupt_metric
    assert not res.effects.any()
    model, processor = llava
    res = mmviz.patch(model, images[0], images[0], metric="red", processor=processor, sites=SITES, progress=False)
    np.testing.assert_allclose(res.patched, res.clean_metric, atol=1e-5)
    assert not res.effects.any()
    bert, btok = bert_classifier
    x = btok("the red square", return_tensors="pt")
    res = mmviz.patch(bert, x, x, metric="pos", processor=btok, sites=["residual", "attention"], progress=False)
    np.testing.assert_allclose(res.patched, res.clean_metric, atol=1e-5)


def test_restoring_every_position_before_the_first_layer_gives_one(gpt2, tok, prompts, llava, images, bert_classifier):
    clean, corrupt = prompts
    everything = [list(range(8))]
    res = mmviz.patch(gpt2, clean, corrupt, metric="square", processor=tok, layers=[0], positions=everything)
    assert res.effects.shape == (1, 1, 1)
    assert res.effects[0, 0, 0] == pytest.approx(1.0, abs=1e-4)
    assert res.clean_metric != pytest.approx(res.corrupt_metric)
    model, processor = llava
    res = mmviz.patch(model, *images, metric="red", processor=processor, layers=[0], positions=[list(range(19))])
    assert res.clean_metric != pytest.approx(res.corrupt_metric)
    assert res.effects[0, 0, 0] == pytest.approx(1.0, abs=1e-4)
    bert, btok = bert_classifier
    a, b = btok("the red square", return_tensors="pt"), btok("a blue circle", return_tensors="pt")
    res = mmviz.patch(bert, a, b, metric=2, processor=btok, layers=[0], positions=[[0, 1, 2, 3]])
    assert res.effects[0, 0, 0] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("kind", SITES)
def test_a_cell_equals_a_hand_written_hook_gpt2(kind, gpt2, tok, prompts):
    clean, corrupt = prompts
    square = tok.convert_tokens_to_ids("square")
    res = mmviz.patch(gpt2, clean, corrupt, metric="square", processor=tok, sites=kind, batch_size=5, progress=False)
    for site in range(len(res.sites)):
        head = site if kind == "head" else None
        for layer in (0, 1):
            for position in (2, 3, 7):
                module, pre = gpt2_module(gpt2, kind, layer)
                want = hand_patch(gpt2, clean, corrupt, module, pre, [position], last_logprob(square), head, heads=4)
                assert res.patched[site, layer, position] == pytest.approx(want, abs=1e-5)
    with torch.no_grad():
        assert res.clean_metric == pytest.approx(float(last_logprob(square)(gpt2(**clean))), abs=1e-6)
        assert res.corrupt_metric == pytest.approx(float(last_logprob(square)(gpt2(**corrupt))), abs=1e-6)


@pytest.mark.parametrize("kind", SITES)
def test_a_cell_equals_a_hand_written_hook_llava(kind, llava, images):
    model, processor = llava
    clean, corrupt = images
    red = processor.tokenizer.convert_tokens_to_ids("red")
    groups = [[3], [1, 2, 5, 6], [18]]  # a text-free image patch, a 2×2 image region, the last token
    res = mmviz.patch(model, clean, corrupt, metric="red", processor=processor, sites=kind, positions=groups)
    assert res.labels[1] == "img0 r0-1 c0-1"
    site = 1 if kind == "head" else 0
    for layer in (0, 1):
        for c, group in enumerate(groups):
            module, pre = llava_module(model, kind, layer)
            head = site if kind == "head" else None
            want = hand_patch(model, clean, corrupt, module, pre, group, last_logprob(red), head, heads=4)
            assert res.patched[site, layer, c] == pytest.approx(want, abs=1e-5)


def test_a_cell_equals_a_hand_written_hook_bert(bert_classifier):
    bert, btok = bert_classifier
    a, b = btok("the red square", return_tensors="pt"), btok("a blue circle", return_tensors="pt")
    res = mmviz.patch(bert, a, b, metric="pos", processor=btok, sites=["residual", "attention"], progress=False)
    pos = lambda out: out.logits[0].log_softmax(-1)[2]  # noqa: E731
    for s, kind in enumerate(["residual", "attention"]):
        for layer in (0, 1):
            block = bert.bert.encoder.layer[layer]
            module, pre = (block, True) if kind == "residual" else (block.attention, False)
            want = hand_patch(bert, a, b, module, pre, [2], pos)
            assert res.patched[s, layer, 2] == pytest.approx(want, abs=1e-5)
    with pytest.raises(ValueError, match="MLP module"):
        mmviz.patch(bert, a, b, metric="pos", processor=btok, sites="mlp")


def test_logit_difference_and_callable_metrics(gpt2, tok, prompts):
    clean, corrupt = prompts
    ids = [tok.convert_tokens_to_ids(w) for w in ("square", "circle")]
    diff = mmviz.patch(gpt2, clean, corrupt, metric=("square", "circle"), processor=tok, progress=False)
    assert diff.metric == "logit('square') − logit('circle')"
    logits = gpt2(**clean).logits[0, -1].detach()
    assert diff.clean_metric == pytest.approx(float(logits[ids[0]] - logits[ids[1]]), abs=1e-5)
    call = mmviz.patch(
        gpt2, clean, corrupt, metric=lambda out: out.logits[:, -1, ids[0]] - out.logits[:, -1, ids[1]], progress=False
    )
    np.testing.assert_allclose(call.patched, diff.patched, atol=1e-5)
    np.testing.assert_allclose(call.effects, diff.effects, atol=1e-4)


def test_batch_size_does_not_change_the_answer(gpt2, tok, prompts):
    clean, corrupt = prompts
    kw = {"metric": "square", "processor": tok, "sites": ["residual", "head"], "progress": False}
    one = mmviz.patch(gpt2, clean, corrupt, batch_size=1, **kw)
    many = mmviz.patch(gpt2, clean, corrupt, batch_size=13, **kw)
    np.testing.assert_allclose(one.patched, many.patched, atol=1e-5)


def test_other_layouts_qwen2_vl_and_vit(qwen2_vl, vit):
    model, processor, clean = qwen2_vl
    pixels = clean["pixel_values"]
    corrupt = {**clean, "pixel_values": pixels.flip(0)}  # the same patches in another order: another image
    n = clean["input_ids"].shape[1]
    res = mmviz.patch(model, clean, corrupt, metric="red", processor=processor, layers=[0], positions=[list(range(n))])
    assert res.clean_metric != pytest.approx(res.corrupt_metric, abs=1e-6)
    assert res.effects[0, 0, 0] == pytest.approx(1.0, abs=1e-3)
    assert (res.tokens.kind == "image").sum() == 4
    red = processor.tokenizer.convert_tokens_to_ids("red")
    cells = mmviz.patch(model, clean, corrupt, metric="red", processor=processor, sites="mlp", positions="image")
    block = model.model.language_model.layers[1]
    image = [int(p) for p in np.flatnonzero(res.tokens.kind == "image")]
    want = hand_patch(model, clean, corrupt, block.mlp, False, [image[2]], last_logprob(red))
    assert cells.patched[0, 1, 2] == pytest.approx(want, abs=1e-5)
    processor = transformers.ViTImageProcessor(size={"height": 16, "width": 16})
    x = processor(images=random_image(16, 0), return_tensors="pt")
    res = mmviz.patch(vit, x, "mask", metric=1, processor=processor, layers=[0], positions=[list(range(17))])
    assert res.tokens.grids == ((4, 4),) and res.corrupt_metric != pytest.approx(res.clean_metric, abs=1e-6)
    assert res.effects[0, 0, 0] == pytest.approx(1.0, abs=1e-4)


# -- attribution patching -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["residual", "mlp", "head"])
def test_attribution_equals_gradient_times_difference(kind, gpt2, tok, prompts):
    clean, corrupt = prompts
    square = tok.convert_tokens_to_ids("square")
    res = mmviz.patch(gpt2, clean, corrupt, metric="square", processor=tok, sites=kind, method="attribution")
    for layer in (0, 1):
        module, pre = gpt2_module(gpt2, kind, layer)
        clean_act, corrupt_act, grad = hand_gradient(gpt2, clean, corrupt, module, pre, last_logprob(square))
        change = (grad * (clean_act - corrupt_act))[0]  # [seq, features]
        if kind == "head":
            change = change.reshape(change.shape[0], 4, -1).sum(-1)  # [seq, heads]
            want = res.corrupt_metric + change.T.numpy()  # [heads, seq]
            np.testing.assert_allclose(res.patched[:, layer], want, atol=1e-5)
        else:
            want = res.corrupt_metric + change.sum(-1).numpy()
            np.testing.assert_allclose(res.patched[0, layer], want, atol=1e-5)
    gpt2.zero_grad(set_to_none=True)


def test_attribution_on_a_vlm_tracks_exact_at_the_embeddings(llava, images):
    model, processor = llava
    kw = {"metric": "red", "processor": processor, "layers": [0], "positions": "image", "progress": False}
    exact = mmviz.patch(model, *images, method="exact", **kw)
    approx = mmviz.patch(model, *images, method="attribution", **kw)
    assert approx.corrupt_metric == pytest.approx(exact.corrupt_metric, abs=1e-5)
    assert np.corrcoef(exact.patched.ravel(), approx.patched.ravel())[0, 1] > 0.5


# -- corruptions ----------------------------------------------------------------------------------
def test_noise_corrupts_the_chosen_embeddings_and_restoring_them_undoes_it(gpt2, tok, prompts):
    clean, _ = prompts
    kw = {"metric": "square", "processor": tok, "corrupt_positions": [2, 3], "progress": False}
    res = mmviz.patch(gpt2, clean, "noise", layers=[0], **kw)
    again = mmviz.patch(gpt2, clean, "noise", layers=[0], **kw)
    np.testing.assert_array_equal(res.patched, again.patched)  # one seeded draw
    assert res.info["noise_scale"] == 3.0
    with torch.no_grad():
        emb = gpt2.transformer.wte(clean["input_ids"]) + gpt2.transformer.wpe(torch.arange(8))
    assert res.info["noise_std"] == pytest.approx(3 * float(emb[0, [2, 3]].std()), rel=1e-5)
    np.testing.assert_allclose(res.patched[0, 0, [0, 1, 4, 5, 6, 7]], res.corrupt_metric, atol=1e-6)
    both = mmviz.patch(gpt2, clean, "noise", layers=[0], positions=[[2, 3]], **kw)
    assert both.effects[0, 0, 0] == pytest.approx(1.0, abs=1e-4)
    other = mmviz.patch(gpt2, clean, "noise", layers=[0], seed=1, **kw)
    assert other.corrupt_metric != pytest.approx(res.corrupt_metric)


def test_mask_blanks_the_chosen_patches(llava, images):
    model, processor = llava
    clean = images[0]
    res = mmviz.patch(model, clean, "mask", metric="red", processor=processor, corrupt_positions=[1, 2], layers=[0])
    pixels = clean["pixel_values"].clone()
    pixels[0, :, 0:4, 0:8] = 0  # patches (0, 0) and (0, 1) of the 4 × 4 grid of 4 px patches
    red = processor.tokenizer.convert_tokens_to_ids("red")
    with torch.no_grad():
        want = float(last_logprob(red)(model(**{**clean, "pixel_values": pixels})))
    assert res.corrupt_metric == pytest.approx(want, abs=1e-5)
    assert "2 image patch" in res.corruption
    with pytest.raises(ValueError, match="no image tokens"):
        mmviz.patch(model, clean, "mask", metric="red", processor=processor, corrupt_positions=[17])


# -- hygiene and errors ---------------------------------------------------------------------------
class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
@pytest.mark.parametrize("method", ["exact", "attribution"])
def test_model_is_restored_after_an_error_or_interrupt(error, method, gpt2, tok, prompts):
    gpt2.transformer.h[1].requires_grad_(False)
    gpt2.transformer.h[0].train()
    try:
        before = model_state(gpt2)
        calls = {"n": 0}

        def metric(out):
            calls["n"] += 1
            if calls["n"] > (2 if method == "exact" else 1):  # the clean (and corrupted) runs pass; the sweep fails
                raise error("stop")
            return out.logits[:, -1, 3]

        with pytest.raises(error):
            mmviz.patch(gpt2, *prompts, metric=metric, sites=SITES, method=method, batch_size=4, progress=False)
        assert model_state(gpt2) == before
        mmviz.patch(gpt2, *prompts, metric=3, sites=SITES, method=method, progress=False)
        assert model_state(gpt2) == before
    finally:
        gpt2.requires_grad_(True)
        gpt2.eval()


def test_bad_input_is_refused_early(gpt2, tok, prompts):
    clean, corrupt = prompts
    with pytest.raises(ValueError, match="one layout"):
        mmviz.patch(gpt2, clean, tok("a red", return_tensors="pt"), metric=3)
    with pytest.raises(ValueError, match="one example"):
        mmviz.patch(gpt2, tok(["a red", "a blue"], return_tensors="pt"), "noise", metric=3)
    with pytest.raises(ValueError, match="unknown site"):
        mmviz.patch(gpt2, clean, corrupt, metric=3, sites="neurons")
    with pytest.raises(ValueError, match="unknown patching method"):
        mmviz.patch(gpt2, clean, corrupt, metric=3, method="fast")
    with pytest.raises(ValueError, match="2 tokens"):
        mmviz.patch(gpt2, clean, corrupt, metric="red square", processor=tok)
    with pytest.raises(ValueError, match="out of range"):
        mmviz.patch(gpt2, clean, corrupt, metric=3, layers=[5])
    with pytest.raises(ValueError, match="outside"):
        mmviz.patch(gpt2, clean, corrupt, metric=3, positions=[9])
    with pytest.raises(ValueError, match=r"no image tokens|pixel_values"):
        mmviz.patch(gpt2, clean, "mask", metric=3)
