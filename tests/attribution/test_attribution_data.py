"""The numpy Attribution: validation, reading helpers, files."""

from __future__ import annotations

import numpy as np
import pytest

import mmviz
from mmviz.data import Attribution, TokenTable


def _table():
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    return TokenTable.build(
        ["<s>", "a", "red", "<img 0,0>", "<img 0,1>"],
        kind=["special", "text", "text", "image", "image"],
        word_id=[0, 1, 1, 2, 3],
        image_index=[-1, -1, -1, 0, 0],
        patch_row=[-1, -1, -1, 0, 0],
        patch_col=[-1, -1, -1, 0, 1],
        images=[image],
        grids=[(1, 2)],
    )


def _attr(**kw):
    base = {
        "scores": np.array([[0.0, 1.0, -2.0, 0.5, 3.0], [1, 1, 1, 1, 1]], dtype=np.float32),
        "tokens": _table(),
        "method": "integrated_gradients",
        "targets": ("log p(' red')", "log p(' sq')"),
        "target": "answer ' red sq'",
        "pixel_maps": (np.ones((2, 8, 8)),),
        "delta": np.array([1e-4, -2e-4]),
        "info": {"steps": 50},
    }
    base.update(kw)
    return Attribution(**base)


def test_round_trip(tmp_path):
    attr = _attr()
    attr.save(tmp_path / "a.mmviz")
    back = mmviz.load(tmp_path / "a.mmviz")
    assert isinstance(back, Attribution)
    np.testing.assert_array_equal(back.scores, attr.scores)
    np.testing.assert_array_equal(back.pixels, attr.pixels)
    np.testing.assert_array_equal(back.delta, attr.delta)
    assert back.targets == attr.targets and back.target == attr.target and back.info == {"steps": 50}
    assert back.tokens.tokens == attr.tokens.tokens and back.tokens.grids == ((1, 2),)
    no_delta = _attr(delta=None, pixel_maps=())
    no_delta.save(tmp_path / "b.mmviz")
    assert mmviz.load(tmp_path / "b.mmviz").delta is None


def test_helpers():
    attr = _attr()
    assert attr.signed and "|delta|max=0.0002" in repr(attr)
    np.testing.assert_array_equal(attr.patch_map(), [[0.5, 3.0]])
    assert attr.word_scores()[1] == ("ared", -1.0)
    assert attr.top(2) == [(4, "img0[0,1]", 3.0), (2, "red", -2.0)]  # one patch label format
    assert attr.top(1, kind="text") == [(2, "red", -2.0)]
    assert attr.normalized()[0].max() == 1.0
    assert not _attr(method="saliency").signed


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"scores": np.zeros((1, 4))}, "5 positions"),
        ({"targets": ("one",)}, "target descriptions"),
        ({"pixel_maps": (np.ones((1, 8, 8)),)}, "pixel map 0"),
        ({"pixel_maps": (np.ones((2, 8, 8)), np.ones((2, 8, 8)))}, "one map per image"),
        ({"delta": np.zeros(3)}, "one value per target"),
    ],
)
def test_validation(kw, message):
    with pytest.raises(ValueError, match=message):
        _attr(**kw)
