"""mmviz.evaluate on tiny models: curves against hand-run forwards, randomisation, masks, completeness."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import mmviz
from mmviz.evaluation import Subject, attention_map
from mmviz.evaluation.perturbation import step_counts

torch = pytest.importorskip("torch")

PROMPT = "a red square left of the blue circle"


@pytest.fixture
def prompt(tok: Any) -> Any:
    return tok(PROMPT, return_tensors="pt")


def _state(model: Any) -> dict[str, Any]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model: Any, state: dict[str, Any]) -> bool:
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_deletion_curve_equals_forwards_run_by_hand(gpt2: Any, tok: Any, prompt: Any) -> None:
    attr = mmviz.attribute(gpt2, prompt, processor=tok, method="saliency", target=7, progress=False)
    steps = 4
    rep = mmviz.evaluate(
        attr,
        gpt2,
        prompt,
        processor=tok,
        checks=("deletion", "insertion"),
        steps=steps,
        random_orders=1,
        progress=False,
    )
    units = np.flatnonzero(attr.tokens.kind == "text")  # <bos> is special; it is never removed
    order = units[np.argsort(-attr.scores[0, units], kind="stable")]  # saliency has no ties here
    embeds = gpt2.get_input_embeddings()(prompt["input_ids"]).detach()
    by_hand = []
    for n in step_counts(len(units), steps):
        e = embeds.clone()
        e[0, order[:n]] = 0.0
        with torch.no_grad():
            by_hand.append(float(gpt2(inputs_embeds=e).logits[0, -1, 7]))
    x, y = rep.curve("deletion")
    np.testing.assert_allclose(x, step_counts(len(units), steps) / len(units))
    np.testing.assert_allclose(y, by_hand, rtol=1e-5, atol=1e-5)
    _, ins = rep.curve("insertion")
    assert ins[0] == pytest.approx(by_hand[-1], abs=1e-5) and ins[-1] == pytest.approx(by_hand[0], abs=1e-5)
    _, ref = rep.curve("deletion", reference=True)  # one random order: its own curve
    floor = min(min(by_hand), ref.min())  # areas are measured above the lowest point of any curve
    area = np.trapezoid(np.asarray(by_hand) - floor, x)
    assert rep["deletion"] == pytest.approx(area / np.trapezoid(ref - floor, x), rel=1e-6)


def test_a_constant_map_deletes_like_a_random_order(gpt2: Any, tok: Any, prompt: Any) -> None:
    """Its curve, averaged over seeds, is within 4 standard errors of the exact mean over all orders."""
    import itertools

    from mmviz.attribution import explained

    with explained(gpt2, prompt, processor=tok, target=7) as f:
        tokens, units = f.tokens, f.units
        subsets = [c for n in range(len(units) + 1) for c in itertools.combinations(units, n)]
        keep = np.ones((len(subsets), len(tokens)), dtype=bool)
        for row, removed in enumerate(subsets):
            keep[row, list(removed)] = False
        values = f(keep, batch_size=64)[:, 0]
    sizes = np.array([len(c) for c in subsets])
    mean = np.array([values[sizes == n].mean() for n in range(len(units) + 1)])
    std = np.array([values[sizes == n].std() for n in range(len(units) + 1)])
    seeds = 40
    curves = [
        mmviz.evaluate(
            np.ones(len(tokens)),
            gpt2,
            prompt,
            processor=tok,
            tokens=tokens,
            target=7,
            checks=("deletion",),
            seed=seed,
            steps=len(units),
            random_orders=1,
            progress=False,
        ).curve("deletion")[1]
        for seed in range(seeds)
    ]
    assert np.all(np.abs(np.mean(curves, 0) - mean) <= 4 * std / np.sqrt(seeds) + 1e-6)


def test_model_randomization_flags_a_map_that_ignores_the_model(gpt2: Any, tok: Any, prompt: Any) -> None:
    attr = mmviz.attribute(gpt2, prompt, processor=tok, method="saliency", target=7, progress=False)
    state = _state(gpt2)
    blind = Subject(
        name="token position",
        scores=np.arange(len(attr.tokens), dtype=float),
        tokens=attr.tokens,
        recompute=lambda model, inputs, other: np.arange(len(attr.tokens), dtype=float),
    )
    rep = mmviz.evaluate(blind, gpt2, prompt, checks=("model_randomization",), progress=False)
    assert rep["model_randomization"] == pytest.approx(1.0)
    assert not rep.passed("model_randomization")
    assert "does not depend on what it claims to explain" in rep.results["model_randomization"].note
    assert rep.results["model_randomization"].labels == ("transformer.h.1", "transformer.h.0")
    assert _same_state(gpt2, state)

    real = mmviz.evaluate(attr, gpt2, prompt, processor=tok, checks=("model_randomization",), progress=False)
    x, rhos = real.curve("model_randomization")
    np.testing.assert_array_equal(x, [1, 2])
    assert rhos[-1] < 1.0
    assert _same_state(gpt2, state)


def test_weights_are_restored_when_recomputing_fails(gpt2: Any, tok: Any, prompt: Any) -> None:
    state = _state(gpt2)

    def broken(model: Any, inputs: Any, other: Any) -> np.ndarray:
        raise RuntimeError("boom")

    table = mmviz.TokenTable.build(["a", "b"])
    with pytest.raises(RuntimeError, match="boom"):
        mmviz.evaluate(
            Subject("x", np.zeros(2), table, recompute=broken), gpt2, prompt, checks=("model_randomization",)
        )
    assert _same_state(gpt2, state)


def test_attention_maps_and_position_masks(gpt2: Any, tok: Any, prompt: Any) -> None:
    with mmviz.capture(gpt2, tok) as cap:
        gpt2(**prompt)
    row = cap.attention.head_mean()[-1, -1]
    peak = int(np.argmax(np.where(cap.attention.tokens().kind == "text", row, -1)))
    rep = mmviz.evaluate(
        (cap.attention, {"layer": -1}),
        gpt2,
        prompt,
        masks={peak},
        checks=("pointing", "mass", "model_randomization"),
        progress=False,
    )
    assert rep["pointing"] == 1.0
    assert rep.baseline("pointing") == pytest.approx(1 / int((cap.attention.tokens().kind == "text").sum()))
    assert 0 < rep["mass"] < 1
    assert "model_randomization" in rep
    same = attention_map(cap.attention, layer=-1)
    np.testing.assert_allclose(same.scores, row, rtol=1e-3, atol=1e-4)


def test_pixel_masks_on_a_vision_map(vit: Any, image_processor: Any) -> None:
    from tests.attribution.conftest import random_image

    inputs = image_processor(images=random_image(), return_tensors="pt")
    attr = mmviz.attribute(vit, inputs, method="saliency", target=1, progress=False)
    mask = np.zeros((16, 16), dtype=bool)
    mask[4:8, 8:16] = True  # patch cells (1, 2) and (1, 3) of the 4x4 grid
    grid = attr.tokens.image_positions(0)
    cells = np.zeros(len(attr.tokens))
    cells[grid[1, 2]] = cells[grid[1, 3]] = 1.0
    checks = ("pointing", "mass", "topk", "iou")
    rep = mmviz.evaluate(cells, tokens=attr.tokens, masks=mask, checks=checks, upsample="nearest")
    assert [rep[c] for c in checks] == [1.0, 1.0, 1.0, 1.0]
    assert rep.baseline("mass") == pytest.approx(32 / 256)
    outside = np.where(np.isin(np.arange(len(cells)), grid.reshape(-1)), 1.0 - cells, 0.0)
    rep = mmviz.evaluate(outside, tokens=attr.tokens, masks=mask, checks=checks, upsample="nearest")
    assert [rep[c] for c in checks] == [0.0, 0.0, 0.0, 0.0]
    assert not any(rep.passed(c) for c in checks)
    # the attribution's own pixel map is read as it is
    rep = mmviz.evaluate(attr, masks=mask, checks=("pointing",))
    peak = np.unravel_index(np.argmax(attr.pixel_maps[0][0]), (16, 16))
    assert rep["pointing"] == float(mask[peak])


def test_image_patches_are_removed_with_the_baseline(vit: Any, image_processor: Any) -> None:
    from mmviz.attribution import explained
    from tests.attribution.conftest import random_image

    inputs = image_processor(images=random_image(), return_tensors="pt")
    px = inputs["pixel_values"]
    with explained(vit, inputs, target=1, baseline="mean") as f:
        grid = f.tokens.image_positions(0)
        keep = np.ones((2, len(f.tokens)), dtype=bool)
        keep[1, grid[2, 1]] = False
        values = f(keep)
    removed = px.clone()
    removed[0, :, 8:12, 4:8] = px[0].mean((-2, -1))[:, None, None]
    with torch.no_grad():
        expected = [float(vit(pixel_values=p).logits[0, 1]) for p in (px, removed)]
    np.testing.assert_allclose(values[:, 0], expected, rtol=1e-5, atol=1e-5)


def test_completeness_and_label_randomization(gpt2: Any, tok: Any, prompt: Any) -> None:
    attr = mmviz.attribute(gpt2, prompt, processor=tok, target=7, steps=32, progress=False)
    rep = mmviz.evaluate(
        attr, gpt2, prompt, processor=tok, checks=("completeness", "label_randomization"), progress=False
    )
    assert rep.passed("completeness") and rep["completeness"] < 1e-3
    rho = rep["label_randomization"]
    assert -1.0 <= rho <= 1.0
    sal = mmviz.attribute(gpt2, prompt, processor=tok, method="saliency", target=7, progress=False)
    rep = mmviz.evaluate(sal, checks=("completeness", "deletion"))
    assert "integrated gradients" in rep.skipped["completeness"] and "model" in rep.skipped["deletion"]


def test_bad_calls_say_what_to_do(gpt2: Any, tok: Any, prompt: Any) -> None:
    attr = mmviz.attribute(gpt2, prompt, processor=tok, method="saliency", target=7, progress=False)
    with pytest.raises(ValueError, match="unknown check"):
        mmviz.evaluate(attr, checks=("pointing", "vibes"))
    with pytest.raises(ValueError, match="tokens="):
        mmviz.evaluate(np.zeros(3))
    with pytest.raises(TypeError, match="cannot judge"):
        mmviz.evaluate("a map")
    other = tok("a red square", return_tensors="pt")
    with pytest.raises(ValueError, match="the inputs the map was computed on"):
        mmviz.evaluate(attr, gpt2, other, processor=tok, checks=("deletion",), progress=False)
    with pytest.raises(ValueError, match="positions must lie"):
        mmviz.evaluate(attr, masks={99}, checks=("pointing",))


def test_a_vision_tower_map_is_judged_on_a_two_tower_input(clip: tuple[Any, Any]) -> None:
    from mmviz.evaluation.perturbation import align
    from tests.attribution.conftest import random_image

    model, processor = clip
    inputs = processor(images=random_image(), text=["a red circle"], return_tensors="pt", padding=True)
    with mmviz.capture(model, processor=processor) as cap:
        model(**inputs)
    spec = {"module": "vision_model", "layer": -1, "query": 0}
    attr = mmviz.attribute(model, inputs, processor=processor, method="saliency", target="a red circle")
    scores = align(attention_map(cap.attention, **spec), attr.tokens)
    patches = np.flatnonzero(attr.tokens.kind == "image")
    assert np.isfinite(scores[patches]).all() and np.isnan(np.delete(scores, patches)).all()
    grid = cap.attention.tokens("vision_model").image_positions(0)
    cls_row = cap.attention.head_mean("vision_model")[-1, 0]
    np.testing.assert_allclose(scores[attr.tokens.image_positions(0)[1, 2]], cls_row[grid[1, 2]], rtol=1e-3, atol=1e-5)
    rep = mmviz.evaluate(
        (cap.attention, spec),
        model,
        inputs,
        processor=processor,
        target="a red circle",
        checks=("deletion",),
        steps=4,
        units="image",
        progress=False,
    )
    np.testing.assert_allclose(rep.curve("deletion")[0], [0, 0.25, 0.5, 0.75, 1.0])


def test_a_target_that_removal_raises_gets_no_verdict() -> None:
    from mmviz.evaluation.perturbation import _result

    x = np.array([0.0, 0.5, 1.0])
    curves = np.array([[1.0, 0.5, 3.0], [1.0, 2.0, 3.0]])  # the map's curve, one random order's
    areas = np.array([np.trapezoid(c - curves.min(), x) for c in curves])
    res = _result("deletion", x, curves, areas, float(areas[1:].mean()))
    assert np.isnan(res.score) and res.passed is None and "higher with every unit removed" in res.note
    res = _result("deletion", x, curves[:, ::-1], areas[::-1], float(areas[1:].mean()))
    assert res.passed is not None and np.isfinite(res.score)


def test_default_methods_by_model_kind(gpt2: Any, tok: Any, prompt: Any, clip: tuple[Any, Any], llava: Any) -> None:
    from tests.attribution.conftest import random_image

    model, processor = clip
    inputs = processor(images=random_image(), text=["a red circle"], return_tensors="pt", padding=True)
    assert mmviz.attribute(model, inputs, processor=processor, progress=False).method == "relevance"
    lm = mmviz.attribute(gpt2, prompt, processor=tok, target=7, steps=4, progress=False)
    assert lm.method == "integrated_gradients" and lm.info["call"]["baseline"] == "pad"  # the tokenizer has <pad>
    no_pad = mmviz.attribute(gpt2, prompt, target=7, steps=4, progress=False)  # no tokenizer; the config's pad id
    assert no_pad.info["call"]["baseline"] == "pad"
    vlm, vlm_processor = llava
    vlm_inputs = vlm_processor(images=random_image(), text="<image> what shape", return_tensors="pt")
    vlm_attr = mmviz.attribute(vlm, vlm_inputs, processor=vlm_processor, target=7, steps=4, progress=False)
    assert vlm_attr.method == "integrated_gradients" and vlm_attr.pixels is None
    assert vlm_attr.info["call"]["sources"] == ["image_embeddings"]
    explicit = mmviz.attribute(
        vlm, vlm_inputs, processor=vlm_processor, method="integrated_gradients", target=7, steps=4,
        sources=["image_embeddings"], baseline="zeros", progress=False,
    )  # fmt: skip
    np.testing.assert_array_equal(vlm_attr.scores, explicit.scores)  # image tokens from zero vectors
    from mmviz.attribution import _default_method

    without_placeholder = {"input_ids": vlm_inputs["input_ids"][:, -2:], "pixel_values": vlm_inputs["pixel_values"]}
    assert _default_method(vlm, without_placeholder, "vlm", None) == ("relevance", None)
    assert _default_method(vlm, vlm_inputs, "vlm", ["image"]) == ("integrated_gradients", ["image"])


def test_only_a_map_that_stays_alike_fails_randomization() -> None:
    from mmviz.evaluation.randomization import _verdict

    assert _verdict("model_randomization", 0.9, 0.5, "x")[0] is False
    assert _verdict("model_randomization", -0.7, 0.5, "x") == (True, "")  # ranks reversed: the map changed
    assert _verdict("model_randomization", float("nan"), 0.5, "x")[0] is None


def test_units_restrict_rank_correlations_and_token_masks(gpt2: Any, prompt: Any) -> None:
    """A map of the text that scores 30 image positions 0: the zeros' ties must not make two maps look alike."""
    kinds = ["text"] * 6 + ["image"] * 30
    cells = np.arange(30)
    table = mmviz.TokenTable.build(
        [f"t{i}" for i in range(36)], kind=kinds, image_index=[-1] * 6 + [0] * 30,
        patch_row=np.r_[[-1] * 6, cells // 6], patch_col=np.r_[[-1] * 6, cells % 6],
        images=[np.zeros((10, 12, 3), np.uint8)], grids=[(5, 6)],
    )  # fmt: skip
    scores = np.r_[np.arange(1.0, 7.0), np.zeros(30)]
    reversed_text = np.r_[np.arange(6.0, 0.0, -1.0), np.zeros(30)]
    subject = Subject("text map", scores, table, recompute=lambda model, inputs, other: reversed_text)
    checks = ("model_randomization", "pointing", "mass")
    everywhere = mmviz.evaluate(subject, gpt2, prompt, masks={5}, checks=checks, progress=False)
    text = mmviz.evaluate(subject, gpt2, prompt, masks={5}, checks=checks, units="text", progress=False)
    assert everywhere["model_randomization"] > 0.5 and not everywhere.passed("model_randomization")
    assert text["model_randomization"] == pytest.approx(-1.0) and text.passed("model_randomization")
    assert everywhere.baseline("pointing") == pytest.approx(1 / 36)
    assert text.baseline("pointing") == pytest.approx(1 / 6) and text["pointing"] == 1.0
