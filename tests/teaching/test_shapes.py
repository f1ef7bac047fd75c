"""The shapes world: reproducible, exact masks, consistent captions and answers."""

from __future__ import annotations

import numpy as np
import pytest

from mmviz.teaching.shapes import (
    BACKGROUND,
    COLOURS,
    RELATIONS,
    SHAPES,
    caption_for,
    make_scenes,
    segment_colour,
    shape_mask,
    vocabulary,
)


def test_same_seed_same_scenes() -> None:
    a, b = make_scenes(20, seed=7), make_scenes(20, seed=7)
    for x, y in zip(a, b):
        assert x.caption == y.caption and x.qa == y.qa
        np.testing.assert_array_equal(x.image, y.image)
        for ox, oy in zip(x.objects, y.objects):
            np.testing.assert_array_equal(ox.mask, oy.mask)
    assert [s.caption for s in make_scenes(20, seed=8)] != [s.caption for s in a]


@pytest.mark.parametrize("size", [32, 64])
def test_masks_are_exact(size: int) -> None:
    for scene in make_scenes(50, seed=1, size=size):
        assert scene.image.shape == (size, size, 3) and scene.image.dtype == np.uint8
        covered = np.zeros((size, size), dtype=bool)
        for obj in scene.objects:
            assert obj.mask.shape == (size, size) and obj.mask.sum() > 0.01 * size * size
            assert (scene.image[obj.mask] == COLOURS[obj.colour]).all()
            assert not (covered & obj.mask).any(), "objects overlap"
            covered |= obj.mask
            np.testing.assert_array_equal(segment_colour(scene.image, obj.colour), obj.mask)
        assert (scene.image[~covered] == BACKGROUND).all()


def test_captions_and_questions_are_consistent() -> None:
    words = set(vocabulary())
    for scene in make_scenes(100, seed=2):
        objs = scene.objects
        assert len({o.colour for o in objs}) == len(objs) and len({o.shape for o in objs}) == len(objs)
        assert scene.caption == caption_for(objs, scene.relation)
        if len(objs) == 1:
            assert scene.relation is None and scene.caption == objs[0].phrase
        else:
            assert scene.relation in RELATIONS
            a, b = objs
            dx, dy = a.cx - b.cx, a.cy - b.cy
            expected = {
                "left of": dx < 0 and abs(dx) > abs(dy),
                "right of": dx > 0 and abs(dx) > abs(dy),
                "above": dy < 0 and abs(dy) > abs(dx),
                "below": dy > 0 and abs(dy) > abs(dx),
            }
            assert expected[scene.relation]
            assert scene.caption == f"{a.phrase} {scene.relation} {b.phrase}"
        assert len(scene.qa) == 2 * len(objs)
        for question, answer, k in scene.qa:
            obj = objs[k]
            if question.startswith("what colour"):
                assert obj.shape in question.split() and answer == obj.colour
            else:
                assert obj.colour in question.split() and answer == obj.shape
            assert set(question.split()) | {answer} <= words
        assert set(scene.caption.split()) <= words


def test_vocabulary_is_complete_and_small() -> None:
    words = vocabulary()
    assert set(SHAPES) | set(COLOURS) <= set(words)
    assert len(words) == len(set(words)) <= 30


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_are_centred(shape: str) -> None:
    mask = shape_mask(shape, 16.0, 16.0, 6.0, 32)
    rows, cols = np.nonzero(mask)
    assert 60 < mask.sum() < 150
    assert abs(cols.mean() + 0.5 - 16.0) < 1.0 and abs(rows.mean() + 0.5 - 16.0) < 2.0


def test_world_imports_without_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers', 'diffusers', 'tokenizers'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import mmviz.teaching as t\n"
        "import mmviz.teaching.faithfulness\n"
        "assert len(t.make_scenes(2, seed=0)) == 2\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
