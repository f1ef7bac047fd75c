"""The shipped teaching SAE: it loads, reconstructs its site, has nameable colour and shape features, and steers.

Figures measured by ``python -m mmviz.teaching.train_sae`` (300 and 60 held-out scenes) are in its
``train_log.json``; the tests check them on fewer held-out scenes with some slack.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import mmviz.teaching as teaching
from mmviz.teaching.naming import SAE_SITE, FeatureTable, feature_table, patch_owners, site_activations
from mmviz.teaching.shapes import COLOURS, SHAPES, Scene, ShapeObject, questions_for, render

torch = pytest.importorskip("torch")

import mmviz  # noqa: E402

COLOUR_FEATURES = {"red": 37, "green": 2, "blue": 45, "yellow": 6}
"""The feature that stands for each colour in the shipped SAE (``train_log.json``: ``features.colour``)."""

SHAPE_FEATURES = {"circle": 50, "square": 0, "triangle": 31, "star": 7}
"""The feature that stands for each shape (``train_log.json``: ``features.shape``)."""


def one_object(shape: str, colour: str, cx: float, cy: float, radius: float) -> Scene:
    image, (mask,) = render([(shape, colour, cx, cy, radius)])
    obj = ShapeObject(shape=shape, colour=colour, cx=cx, cy=cy, radius=radius, mask=mask)
    return Scene(image=image, objects=(obj,), relation=None, caption=obj.phrase, qa=questions_for((obj,)))


@pytest.fixture(scope="module")
def sae() -> Any:
    return teaching.load_sae()


@pytest.fixture(scope="module")
def table(vlm: tuple[Any, Any], sae: Any) -> FeatureTable:
    return feature_table(vlm[0], sae, teaching.make_scenes(64, seed=50_000))


def test_patch_owners_of_a_square_by_hand() -> None:
    # a square of half side 0.85 * 8 = 6.8 px around (16, 16) covers pixels 9 … 22: patches 2 … 5 (4 px each) are
    # at least 3/4 covered, patches 1 and 6 not touched
    owners = patch_owners(one_object("square", "red", 16.0, 16.0, 8.0)).reshape(8, 8)
    expected = np.full((8, 8), -1)
    expected[2:6, 2:6] = 0
    np.testing.assert_array_equal(owners, expected)
    # a circle's edge patches are touched without being owned at cover=0.5, and owned at cover=0
    circle = one_object("circle", "red", 16.0, 16.0, 7.0)
    assert (patch_owners(circle) == -2).any()
    assert not (patch_owners(circle, cover=0.0) == -2).any()


def test_object_positions_are_the_touched_patches_after_cls() -> None:
    from mmviz.teaching.naming import object_positions

    # pixels 9 … 22 of the square touch patches 2 … 5 on both axes; site position = 1 + row * 8 + col
    expected = [1 + r * 8 + c for r in range(2, 6) for c in range(2, 6)]
    assert object_positions(one_object("square", "red", 16.0, 16.0, 8.0), 0) == expected


def test_feature_table_selectivity_by_hand() -> None:
    # 3 features; rows red, green, blue, yellow (+ background separately)
    colour = np.array([[4.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    shape = np.array([[3.0, 1.0, 0.0], [2.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    background = np.array([0.0, 0.5, 3.0])
    table = FeatureTable(colour, shape, background, patches={})
    best, sel = table.selectivity("colour")
    np.testing.assert_array_equal(best, [0, 0, 4])  # ties go to the first class; feature 2 is background
    np.testing.assert_allclose(sel, [1 - 1 / 4, 0.0, 1.0])
    assert table.named("colour", threshold=0.7) == [(0, "red", 0.75)]  # background features are not named
    assert table.named("colour", threshold=0.7, min_mean=5.0) == []  # its mean on red is 4
    assert table.best_for("colour", "red") == 0  # margin 4 - 1 = 3
    assert table.best_for("shape", "circle") == 0  # margins 3 - 2 = 1, 1 - 1 = 0, 0 - 3 = -3
    np.testing.assert_allclose(table.selectivity("shape")[1], [1 - 2 / 3, 0.0, 1.0])
    with pytest.raises(ValueError, match="not a colour"):
        table.best_for("colour", "square")
    with pytest.raises(ValueError, match="kind must be"):
        table.means("size")


def test_shipped_sae_loads_in_the_saelens_layout(sae: Any) -> None:
    assert (sae.d_in, sae.d_sae, sae.activation, sae.k) == (64, 64, "topk", 4)
    assert sae.source.endswith("sae/sae_weights.safetensors")
    np.testing.assert_array_equal(sae.b_pre, sae.b_dec)  # SAELens apply_b_dec_to_input


def test_sae_reconstructs_its_site_on_held_out_scenes(vlm: tuple[Any, Any], sae: Any) -> None:
    x = site_activations(vlm[0], teaching.make_scenes(32, seed=50_100)).reshape(-1, 64)
    explained = 1 - float(((sae.decode(sae.encode(x)) - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    assert explained >= 0.93  # 0.950 on 300 held-out scenes
    # and through the public call, at the same site: the patches' relative error is small
    model, processor = vlm
    scene = teaching.make_scenes(1, seed=50_101)[0]
    inputs = processor(images=scene.image, text="<image> what colour is the square ?", return_tensors="pt")
    ft = mmviz.features(model, inputs, sae, processor, site=SAE_SITE)
    assert len(ft.tokens) == 65 and list(ft.tokens.positions("image")) == list(range(1, 65))
    assert float(np.median(ft.relative_error[1:])) < 0.25


def test_site_activations_refuse_a_site_outside_the_vision_tower(vlm: tuple[Any, Any]) -> None:
    scenes = teaching.make_scenes(2, seed=1)
    assert site_activations(vlm[0], scenes, site="vision_tower.encoder.layers.1").shape == (2, 64, 64)
    with pytest.raises(ValueError, match="not in the vision tower"):
        site_activations(vlm[0], scenes, site="language_model.layers.0")


def test_each_colour_and_each_shape_has_a_feature_that_names_it(table: FeatureTable) -> None:
    for kind, known, floor in (("colour", COLOUR_FEATURES, 0.9), ("shape", SHAPE_FEATURES, 0.75)):
        names, means = table.means(kind)
        _, selectivity = table.selectivity(kind)
        for name, feature in known.items():
            assert table.best_for(kind, name) == feature
            # its own class's patches, by a wide margin over the other classes and the background
            assert means[names.index(name), feature] >= 8.0
            assert selectivity[feature] >= floor  # 300 held-out scenes: colours 0.94-1.00, shapes 0.80-1.00
        # no other feature of that selectivity fires noticeably (near-silent features are left out by min_mean)
        assert {(f, n) for f, n, _ in table.named(kind, threshold=0.9)} <= {(f, n) for n, f in known.items()}
    assert [f for f, _, _ in table.named("colour", threshold=0.9)] == list(COLOUR_FEATURES.values())


def test_shape_features_fire_whatever_the_colour_and_colour_features_whatever_the_shape(
    vlm: tuple[Any, Any], sae: Any
) -> None:
    scenes = [one_object(shape, colour, 16.0, 16.0, 8.0) for shape in SHAPES for colour in COLOURS]
    acts = sae.encode(site_activations(vlm[0], scenes)).numpy()  # [16, 64, d_sae]
    for scene, patches in zip(scenes, acts):
        on_object = patches[patch_owners(scene) == 0].mean(axis=0)  # [d_sae]
        obj = scene.objects[0]
        shape_means = on_object[list(SHAPE_FEATURES.values())]
        colour_means = on_object[list(COLOUR_FEATURES.values())]
        # a star's centre also looks a little like a circle (feature 50 fires about 6 there)
        assert SHAPES[int(np.argmax(shape_means))] == obj.shape and shape_means.max() >= 8.0, (obj, shape_means)
        assert colour_means[list(COLOURS).index(obj.colour)] >= 9.0, (obj, colour_means)
        assert np.delete(colour_means, list(COLOURS).index(obj.colour)).max() < 1.0, (obj, colour_means)


def test_a_colour_feature_lights_up_the_object_only(vlm: tuple[Any, Any], sae: Any) -> None:
    scene = one_object("square", "blue", 16.0, 16.0, 8.0)
    acts = sae.encode(site_activations(vlm[0], [scene])[0]).numpy()  # [64, d_sae]
    owners = patch_owners(scene)
    blue = acts[:, COLOUR_FEATURES["blue"]]
    assert blue[owners == 0].min() > 5.0 and blue[owners == 0].mean() > 10.0  # 13.2 on average
    assert blue[owners == -1].max() == 0.0
    assert acts[:, [COLOUR_FEATURES[c] for c in ("red", "green", "yellow")]].max() == 0.0


def test_steering_with_the_blue_feature_turns_red_answers_blue(vlm: tuple[Any, Any], sae: Any) -> None:
    from mmviz.teaching.naming import object_positions

    model, processor = vlm
    scene = one_object("square", "red", 12.0, 20.0, 7.0)
    inputs = processor(images=scene.image, text="<image> what colour is the square ?", return_tensors="pt")
    on_square = object_positions(scene, 0)
    red, blue = (sae.W_dec[COLOUR_FEATURES[c]] for c in ("red", "blue"))

    def answer() -> str:
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=1, do_sample=False)
        return str(processor.tokenizer.decode(out[0, -1]))

    assert answer() == "red"
    with mmviz.steer(model, blue, site=SAE_SITE, positions=range(1, 65), alpha=16.0):
        assert answer() == "red"  # not enough: the red feature fires about 14 on the square
    with mmviz.steer(model, blue, site=SAE_SITE, positions=range(1, 65), alpha=32.0) as record:
        assert answer() == "blue"  # the blue feature on every patch
    assert record.calls == 1
    with (
        mmviz.steer(model, red, site=SAE_SITE, positions=on_square, mode="ablate"),
        mmviz.steer(model, blue, site=SAE_SITE, positions=on_square, alpha=8.0),
    ):
        assert answer() == "blue"  # on the square only: its red feature swapped for the blue one
    assert answer() == "red"  # restored


@pytest.mark.parametrize(
    ("shape", "colour", "target"),
    [("circle", "red", "triangle"), ("triangle", "blue", "star"), ("circle", "yellow", "square")],
)
def test_steering_with_a_shape_feature_changes_the_shape_answer(
    vlm: tuple[Any, Any], sae: Any, shape: str, colour: str, target: str
) -> None:
    from mmviz.teaching.train_sae import steered_answer

    model, processor = vlm
    scene = one_object(shape, colour, 12.0, 20.0, 7.0)
    tok = processor.tokenizer
    assert steered_answer(model, tok, scene, 0, sae, SHAPE_FEATURES, target, 0.0) == shape
    assert steered_answer(model, tok, scene, 0, sae, SHAPE_FEATURES, target, 16.0) == shape  # added alone: too weak
    assert steered_answer(model, tok, scene, 0, sae, SHAPE_FEATURES, target, 16.0, "swap") == target
    assert steered_answer(model, tok, scene, 0, sae, SHAPE_FEATURES, target, 32.0) == target


def test_steered_answer_refuses_an_unknown_target_or_recipe(vlm: tuple[Any, Any], sae: Any) -> None:
    from mmviz.teaching.train_sae import steered_answer

    model, processor = vlm
    scene = one_object("circle", "red", 12.0, 20.0, 7.0)
    with pytest.raises(ValueError, match=r"colour .* or a shape"):
        steered_answer(model, processor.tokenizer, scene, 0, sae, SHAPE_FEATURES, "hexagon", 16.0)
    with pytest.raises(ValueError, match="recipe must be one of"):
        steered_answer(model, processor.tokenizer, scene, 0, sae, SHAPE_FEATURES, "star", 16.0, "everywhere")


@pytest.mark.parametrize(("attribute", "target"), [("colour", "blue"), ("shape", "star")])
def test_flip_rate_on_held_out_scenes(vlm: tuple[Any, Any], sae: Any, attribute: str, target: str) -> None:
    from mmviz.teaching.train_sae import steered_answer

    model, processor = vlm
    features = COLOUR_FEATURES if attribute == "colour" else SHAPE_FEATURES
    scenes = teaching.make_scenes(12, seed=50_001)
    pairs = [(s, i) for s in scenes for i, o in enumerate(s.objects) if getattr(o, attribute) != target][:12]

    def answers(alpha: float, recipe: str) -> list[str]:
        return [
            steered_answer(model, processor.tokenizer, s, i, sae, features, target, alpha, recipe) for s, i in pairs
        ]

    assert answers(0.0, "object") == [getattr(s.objects[i], attribute) for s, i in pairs]
    # over the 60 held-out scenes of train_log.json: swap at 32 0.92 (blue), 0.94 (star); object at 32 0.87, 0.88
    assert np.mean(np.array(answers(32.0, "swap")) == target) >= 0.75
    assert np.mean(np.array(answers(32.0, "object")) == target) >= 0.7
