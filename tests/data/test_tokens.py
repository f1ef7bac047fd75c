from __future__ import annotations

import numpy as np
import pytest

from mmviz.data import TokenTable


def test_build_defaults():
    t = TokenTable.build(["a", "b"])
    assert len(t) == 2
    assert t.kind.tolist() == ["text", "text"]
    assert t.word_id.tolist() == [0, 1]
    assert t.image_index.tolist() == [-1, -1]
    assert not t.generated.any()


def test_image_positions_follow_grid(image_table):
    grid = image_table.image_positions(0)
    assert grid.tolist() == [[3, 4], [5, 6]]
    with pytest.raises(IndexError, match="out of range"):
        image_table.image_positions(1)


def test_words_join_subwords(image_table):
    words = image_table.words()
    assert words[-1][0] == " circle"
    assert words[-1][1].tolist() == [7, 8]


def test_positions_by_kind(image_table):
    assert image_table.positions("image").tolist() == [3, 4, 5, 6]
    assert image_table.positions(["special", "image"]).tolist() == [0, 3, 4, 5, 6]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": ["text", "bogus"]}, "unknown token kind"),
        ({"word_id": [0]}, "has 1 entries"),
        (
            {"kind": ["image", "text"], "image_index": [0, -1], "patch_row": [0, -1], "patch_col": [0, -1]},
            "not in `images`",
        ),
    ],
)
def test_invalid_tables_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TokenTable.build(["a", "b"], **kwargs)


def test_patch_outside_grid_is_refused():
    img = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="outside"):
        TokenTable.build(
            ["p"], kind=["image"], image_index=[0], patch_row=[2], patch_col=[0], images=[img], grids=[(2, 2)]
        )


def test_image_must_be_uint8_rgb():
    with pytest.raises(ValueError, match="uint8"):
        TokenTable.build(["a"], images=[np.zeros((4, 4), np.float32)], grids=[(1, 1)])


def test_select_and_concat(image_table):
    head = image_table.select([0, 1, 2])
    gen = TokenTable.build([" yes"], generated=[True])
    joined = head.concat(gen)
    assert joined.tokens == ["<s>", " a", " red", " yes"]
    assert joined.generated.tolist() == [False, False, False, True]
    assert joined.word_id[-1] > joined.word_id[-2]


def test_markup_is_kept_verbatim():
    t = TokenTable.build(["<script>alert(1)</script>"])
    assert t.tokens == ["<script>alert(1)</script>"]


def test_tiles_survive_files_select_and_concat():
    image = np.zeros((4, 4, 3), np.uint8)
    left, right = (0, 0.0, 0.0, 1.0, 0.5), (0, 0.0, 0.5, 1.0, 1.0)
    tiled = TokenTable.build(["p", "p"], kind=["image"] * 2, image_index=[0, 1], patch_row=[0, 0], patch_col=[0, 0],
                             images=[image, image], grids=[(1, 1), (1, 1)], tiles=[left, right])  # fmt: skip
    meta, arrays = tiled.to_payload("t")
    assert TokenTable.from_payload(meta, arrays).tiles == (left, right)
    assert tiled.select([1]).tiles == (left, right)  # images are kept whole by select
    whole = TokenTable.build(["q"], kind=["image"], image_index=[0], patch_row=[0], patch_col=[0],
                             images=[image], grids=[(1, 1)])  # fmt: skip
    assert whole.concat(tiled).tiles == ((0, 0.0, 0.0, 1.0, 1.0), (1, *left[1:]), (1, *right[1:]))
    assert whole.concat(whole).tiles == ()
    with pytest.raises(ValueError, match="tile box per image"):
        TokenTable.build(["p"], images=[image], grids=[(1, 1)], tiles=[left, right])
