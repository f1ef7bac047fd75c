"""The shipped teaching SAE: it loads, reconstructs its site, has nameable colour features, and steers the answer.

Figures measured by ``python -m mmviz.teaching.train_sae`` (300 and 60 held-out scenes) are in its
``train_log.json``; the tests check them on fewer held-out scenes with some slack.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import mmviz.teaching as teaching
from mmviz.teaching.naming import SAE_SITE, FeatureTable, feature_table, patch_owners, site_activations
from mmviz.teaching.shapes import Scene, ShapeObject, questions_for, render

torch = pytest.importorskip("torch")

import mmviz  # noqa: E402

COLOUR_FEATURES = {"red": 20, "green": 0, "blue": 60, "yellow": 22}
"""The feature that stands for each colour in the shipped SAE (``train_log.json``: ``colour_features``)."""


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
    assert explained >= 0.93  # 0.951 on 300 held-out scenes
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


def test_each_colour_has_a_feature_that_names_it(table: FeatureTable) -> None:
    names, means = table.means("colour")
    for colour, feature in COLOUR_FEATURES.items():
        assert table.best_for("colour", colour) == feature
        row = names.index(colour)
        others = np.delete(means[:, feature], row)
        # its own colour's patches, by a wide margin over the other colours and the background
        assert means[row, feature] >= 5.0
        assert means[row, feature] >= (2.5 if colour == "green" else 10.0) * others.max()
    named = {name for _, name, _ in table.named("colour", threshold=0.95)}
    assert named == {"red", "blue", "yellow"}  # green's feature also fires on blue (a third as much)


def test_a_colour_feature_lights_up_the_object_only(vlm: tuple[Any, Any], sae: Any) -> None:
    scene = one_object("square", "blue", 16.0, 16.0, 8.0)
    acts = sae.encode(site_activations(vlm[0], [scene])[0]).numpy()  # [64, d_sae]
    owners = patch_owners(scene)
    blue = acts[:, COLOUR_FEATURES["blue"]]
    assert blue[owners == 0].min() > 2.0 and blue[owners == 0].mean() > 7.0  # weakest in a corner of the square
    assert blue[owners == -1].max() == 0.0
    assert acts[:, [COLOUR_FEATURES[c] for c in ("red", "yellow")]].max() == 0.0


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
    with mmviz.steer(model, blue, site=SAE_SITE, positions=on_square, alpha=0.0):
        assert answer() == "red"
    with mmviz.steer(model, blue, site=SAE_SITE, positions=range(1, 65), alpha=32.0) as record:
        assert answer() == "blue"  # the blue feature on every patch
    assert record.calls == 1
    with (
        mmviz.steer(model, red, site=SAE_SITE, positions=on_square, mode="ablate"),
        mmviz.steer(model, blue, site=SAE_SITE, positions=on_square, alpha=16.0),
    ):
        assert answer() == "blue"  # on the square only: its red feature swapped for the blue one
    assert answer() == "red"  # restored


def test_flip_rate_on_held_out_scenes(vlm: tuple[Any, Any], sae: Any) -> None:
    from mmviz.teaching.train_sae import steered_answer

    model, processor = vlm
    scenes = teaching.make_scenes(12, seed=50_001)
    pairs = [(s, i) for s in scenes for i, o in enumerate(s.objects) if o.colour != "blue"][:12]
    tok = processor.tokenizer

    def answers(alpha: float, recipe: str) -> list[str]:
        return [steered_answer(model, tok, s, i, sae, COLOUR_FEATURES, "blue", alpha, recipe) for s, i in pairs]

    assert answers(0.0, "object") == [s.objects[i].colour for s, i in pairs]
    assert np.mean(np.array(answers(16.0, "swap")) == "blue") >= 0.9  # 0.99 over 79 held-out objects
    assert np.mean(np.array(answers(32.0, "object")) == "blue") >= 0.75  # 0.91
