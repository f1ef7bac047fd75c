"""Image layouts of today's VLM families, each a tiny random model with its real processor (no downloads).

None of these families has a hand-written layout: the derived layout (``mmviz.capture.layouts.derived``)
lays them out from which pixels reach which position. Each test checks the layout against the known
answer for the family's prompt format (tiles, newline and separator tokens included) and against the
model itself with ``verify_layout`` (perturbing one row or column of pixels changes exactly the tokens
of that row or column); ``generate`` keeps the same layout. The hand-written layouts (LLaVA 1.5,
PaliGemma, Qwen2-VL) are checked against the derived one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import mmviz  # noqa: E402
from mmviz.capture import layouts  # noqa: E402
from mmviz.capture.layouts.verify import verify_layout  # noqa: E402
from tests.capture import conftest as tiny  # noqa: E402
from tests.fixtures import tiny_vlms  # noqa: E402

NEWLINE = "newline"


def row_major(image: int, rows: int, cols: int) -> list[Any]:
    return [(image, r, c) for r in range(rows) for c in range(cols)]


def any_resolution() -> list[Any]:
    """LLaVA-NeXT / OneVision on a 2:1 image: the 4×4 base image, then the 1×2 tiles stitched row by row,
    a newline token after each row of the stitched grid."""
    stitched = []
    for r in range(4):
        stitched += [(1, r, c) for c in range(4)] + [(2, r, c) for c in range(4)] + [NEWLINE]
    return row_major(0, 4, 4) + stitched


def three_tiles() -> list[Any]:
    """Two tiles and a global view, each a 4×4 patch grid pixel-shuffled to 2×2 tokens."""
    return row_major(0, 2, 2) + row_major(1, 2, 2) + row_major(2, 2, 2)


EXPECTED: dict[str, tuple[list[Any], list[tuple[int, int]]]] = {
    "gemma3": (row_major(0, 2, 2), [(2, 2)]),
    "llava_next": (any_resolution(), [(4, 4)] * 3),
    "llava_onevision": (any_resolution(), [(4, 4)] * 3),
    "qwen2_5_vl": (row_major(0, 4, 4), [(4, 4)]),
    "qwen3_vl": (row_major(0, 4, 4), [(4, 4)]),
    "idefics3": (three_tiles(), [(2, 2)] * 3),
    "smolvlm": (three_tiles(), [(2, 2)] * 3),
    "internvl": (three_tiles(), [(2, 2)] * 3),
    "aya_vision": (three_tiles(), [(2, 2)] * 3),
    "mistral3": (row_major(0, 2, 4), [(2, 4)]),
    "mllama": (row_major(0, 4, 4) + row_major(1, 4, 4), [(4, 4)] * 2),
    "kosmos2": (row_major(0, 4, 4), [(4, 4)]),
}
"""Family → (image tokens and newlines in sequence order, grid of each image/tile)."""

SEPARATORS = {
    "mistral3": ["[IMG_BREAK]"],
    "idefics3": ["<fake_token_around_image>"],
    "smolvlm": ["<fake_token_around_image>"],
}
"""Tokens the prompt format puts between an image's rows or tiles: kept as special tokens."""


@pytest.fixture(scope="module", params=sorted(tiny_vlms.FAMILIES))
def captured(request: Any) -> tuple[str, Any, Any, dict[str, Any], Any]:
    name = request.param
    model, processor, inputs = tiny_vlms.FAMILIES[name]()
    with torch.no_grad(), mmviz.capture(model, processor=processor) as cap:
        model(**inputs)
    return name, model, processor, inputs, cap.attention


IMAGE_SIDE = {
    "mllama": ("language_model.cross_attention", "key"),
    "kosmos2": ("image_to_text_projection.x_attn", "key"),
}
"""Where the patches are when not in the language model's own sequence: Mllama's cross-attention keys,
Kosmos-2's resampler keys (its language model sees learned queries, ``<query k>``, not patches)."""


def language_stack(trace: Any) -> str:
    return next(m for m in trace.modules if trace.modules[m].query_table == "text")


def image_side(name: str, trace: Any) -> tuple[str, str]:
    """The stack and side whose positions hold the family's image tokens."""
    return IMAGE_SIDE[name] if name in IMAGE_SIDE else (language_stack(trace), "query")


def laid_out(table: Any) -> list[Any]:
    """Image tokens as ``(image, row, col)`` and newline tokens, in sequence order."""
    out: list[Any] = []
    for p in range(len(table)):
        if table.kind[p] == "image":
            out.append((int(table.image_index[p]), int(table.patch_row[p]), int(table.patch_col[p])))
        elif table.text[p] == "<image newline>":
            out.append(NEWLINE)
    return out


def test_every_family_is_covered():
    assert set(EXPECTED) == set(tiny_vlms.FAMILIES)


def test_image_tokens_are_the_known_patches(captured):
    name, model, _, _, trace = captured
    assert getattr(model.config, "model_type", "") not in layouts._LAYOUTS  # laid out by the derived layout
    stack, side = image_side(name, trace)
    table = trace.tokens(stack, side=side)
    sequence, grids = EXPECTED[name]
    assert laid_out(table) == sequence
    assert table.grids == tuple(grids)
    assert all(img.dtype == np.uint8 and img.ndim == 3 for img in table.images)
    for token in SEPARATORS.get(name, []):
        assert table.kind[table.tokens.index(token)] == "special"
    # every image token sits on a placeholder of the prompt, and every placeholder the pixels reach is laid out
    image_ids = {int(table.token_id[p]) for p in np.flatnonzero(table.kind == "image")}
    assert len(image_ids) == 1


HALVES = ((0, 0.0, 0.0, 1.0, 0.5), (0, 0.0, 0.5, 1.0, 1.0))
TILES = {
    "llava_next": ((0, 0.0, 0.0, 1.0, 1.0), *HALVES),
    "llava_onevision": ((0, 0.0, 0.0, 1.0, 1.0), *HALVES),
    "idefics3": (*HALVES, (0, 0.0, 0.0, 1.0, 1.0)),
    "smolvlm": (*HALVES, (0, 0.0, 0.0, 1.0, 1.0)),
    "internvl": (*HALVES, (0, 0.0, 0.0, 1.0, 1.0)),
    "aya_vision": (*HALVES, (0, 0.0, 0.0, 1.0, 1.0)),
    "mllama": HALVES,
}
"""Where each tile sits on the 2:1 test image: the base image or global view is the whole image."""


def test_tiles_are_placed_on_the_original_image(captured):
    name, _, _, _, trace = captured
    stack, side = image_side(name, trace)
    assert trace.tokens(stack, side=side).tiles == TILES.get(name, ())


def test_any_resolution_tiles_of_a_padded_image():
    """A 48×30 image fits the 32×32 pinpoint: resized to 32×20, padded by 6 rows above and below, so the
    2×2 tiles cut the image at half its width and height; the language model drops one padded row above
    and below the stitched 8×8 grid (transformers' unpadding), each kept row ended by a newline."""
    from mmviz.capture.layouts.tiles import tile_boxes

    model, processor, inputs = tiny_vlms.llava_next(tiny_vlms.random_image(48, seed=2).resize((48, 30)))
    boxes = tile_boxes(model.config, inputs, None)
    assert [boxes[k] for k in range(5)] == [
        (0, 0.0, 0.0, 1.0, 1.0), (0, 0.0, 0.0, 0.5, 0.5), (0, 0.0, 0.5, 0.5, 1.0),
        (0, 0.5, 0.0, 1.0, 0.5), (0, 0.5, 0.5, 1.0, 1.0),
    ]  # fmt: skip
    with torch.no_grad(), mmviz.capture(model, processor=processor) as cap:
        model(**inputs)
    table = cap.attention.tokens("language_model", side="query")
    assert table.tiles == tuple(boxes[k] for k in range(5))
    stitched = laid_out(table)[16:]
    assert stitched.count(NEWLINE) == 6 and len(stitched) == 6 * (8 + 1)
    rows = [stitched[i * 9 : i * 9 + 8] for i in range(6)]
    for i, row in enumerate(rows):
        left, right, r = (1, 2, i + 1) if i < 3 else (3, 4, i - 3)
        assert row == [(left, r, c) for c in range(4)] + [(right, r, c) for c in range(4)]
    check = verify_layout(model, inputs, table, "language_model", processor)
    assert check.ok, check.failures


def test_batch_of_prompts_with_different_tile_grids():
    model, processor, _ = tiny_vlms.llava_next()
    processor.tokenizer.padding_side = "left"
    texts = ["<image> what shape", "a red <image> what"]
    inputs = dict(processor(text=texts, images=[tiny_vlms.WIDE, tiny_vlms.IMG], return_tensors="pt", padding=True))
    with torch.no_grad(), mmviz.capture(model, processor=processor) as cap:
        model(**inputs)
    wide, square = (cap.attention.tokens("language_model", b, side="query") for b in range(2))
    assert (wide.kind == "pad").sum() == 37 and laid_out(wide) == any_resolution()
    assert square.grids == ((4, 4),) * 5 and len(square.tiles) == 5  # the base image and 2×2 tiles
    assert square.tiles[4] == (0, 0.5, 0.5, 1.0, 1.0)
    assert laid_out(square)[16:25] == [(1, 0, c) for c in range(4)] + [(2, 0, c) for c in range(4)] + [NEWLINE]
    for b, table in enumerate((wide, square)):
        check = verify_layout(model, inputs, table, "language_model", processor, batch_index=b)
        assert check.ok and check.image_tokens == (48 if b == 0 else 80), check.failures


def test_resampled_image_tokens_are_queries():
    model, processor, inputs = tiny_vlms.kosmos2()
    with torch.no_grad(), mmviz.capture(model, processor=processor) as cap:
        model(**inputs)
    table = cap.attention.tokens("text_model", side="query")
    slots = np.flatnonzero(inputs["image_embeds_position_mask"][0].numpy() == 1)
    assert table.tokens[slots[0] : slots[-1] + 1] == [f"<query {k}>" for k in range(4)]
    assert (table.kind[slots] == "special").all()
    resampler = cap.attention.modules["image_to_text_projection.x_attn"]
    assert cap.attention.tokens(resampler.name, side="query").tokens == [f"<query {k}>" for k in range(4)]


def test_cross_attention_keys_of_tiles():
    model, processor, inputs = tiny_vlms.mllama()
    with torch.no_grad(), mmviz.capture(model, processor=processor) as cap:
        model(**inputs)
    keys = cap.attention.tokens("language_model.cross_attention", side="key")
    # per tile: its CLS, then the 4×4 patches; the vision tower pads each tile to a multiple of 8 positions
    assert [p for p in range(len(keys)) if keys.text[p] == "[CLS]"] == [0, 17]
    assert keys.kind.tolist().count("image") == 32
    tower = cap.attention.tokens("vision_model")
    assert len(tower) == 48 and tower.tokens[16:25] == ["<img0 3,3>", *(f"[{p}]" for p in range(17, 24)), "[CLS]"]


def test_layout_verified_against_the_model(captured):
    name, model, processor, inputs, trace = captured
    stack, side = image_side(name, trace)
    check = verify_layout(model, inputs, trace.tokens(stack, side=side), stack, processor, side=side)
    assert check.ok, check.failures
    assert check.image_tokens == sum(1 for x in EXPECTED[name][0] if x != NEWLINE)


def test_vision_tower_patches(captured):
    _, _, _, _, trace = captured
    towers = [m for m in trace.modules if trace.modules[m].query_table.endswith(".pixels")]
    assert towers
    tower = trace.tokens(towers[0])
    grid = tower.grids[0]
    assert grid[0] * grid[1] == int((tower.image_index == 0).sum())
    cells = {
        (int(r), int(c))
        for r, c in zip(tower.patch_row[tower.image_index == 0], tower.patch_col[tower.image_index == 0])
    }
    assert cells == {(r, c) for r in range(grid[0]) for c in range(grid[1])}


def test_generate_keeps_the_layout(captured):
    name, model, processor, inputs, _ = captured
    with torch.no_grad(), mmviz.capture(model, processor=processor) as cap:
        seq = model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=0)
    stack, side = image_side(name, cap.attention)
    table = cap.attention.tokens(stack, side=side)
    assert laid_out(table) == EXPECTED[name][0] and table.tiles == TILES.get(name, ())
    text = cap.attention.tokens(language_stack(cap.attention), side="query")
    assert len(text) == seq.shape[1] - 1 and text.generated.sum() == 1 and text.generated[-1]
    with torch.no_grad(), mmviz.capture(model, processor=processor) as forward:
        model(**inputs)
    prompt = forward.attention.tokens(language_stack(forward.attention), side="query")
    assert text.tokens[: len(prompt)] == prompt.tokens  # the prompt laid out as in the forward
    assert (text.kind[: len(prompt)] == prompt.kind).all()


def test_git_image_prefix_is_verified():
    model, processor, inputs = tiny_vlms.git()
    with torch.no_grad(), mmviz.capture(model, processor=processor) as cap:
        model(**inputs)
    trace = cap.attention
    if "encoder" not in trace.modules:
        pytest.skip("GIT's decoder is recorded once capture handles attention modules of their own (issue 15)")
    table = trace.tokens("encoder", side="query")
    assert laid_out(table) == row_major(0, 4, 4)
    check = verify_layout(model, inputs, table, "encoder", processor)
    assert check.ok, check.failures


# -- hand-written layouts against the derived one ------------------------------------------------
def derived_tables(model: Any, processor: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
    """The trace with the family's hand-written layout, and the same capture laid out by the derived one."""
    with torch.no_grad(), mmviz.capture(model, processor=processor) as cap:
        model(**inputs)
    hand = cap.attention
    model_type = model.config.model_type
    layouts.resolve_layout  # noqa: B018 (imports the built-in layouts)
    saved = layouts._LAYOUTS.pop(model_type)
    try:
        cap._traces = None
        derived = cap.attention
    finally:
        layouts._LAYOUTS[model_type] = saved
    return hand, derived


def same_layout(a: Any, b: Any) -> None:
    np.testing.assert_array_equal(a.kind == "image", b.kind == "image")
    for column in ("image_index", "patch_row", "patch_col"):
        np.testing.assert_array_equal(getattr(a, column), getattr(b, column), err_msg=column)
    assert a.grids == b.grids


@pytest.mark.parametrize("family", ["llava", "paligemma", "qwen2_vl"])
def test_hand_written_layouts_match_the_derived_one(family):
    if family == "qwen2_vl":
        model, processor = tiny.make_qwen2_vl()
        text = ["<|vision_start|><|image_pad|><|vision_end|> what shape"]
        inputs = tiny.qwen2_vl_inputs(processor, text, [tiny_vlms.IMG])
    else:
        model, processor = getattr(tiny, f"make_{family}")()
        inputs = dict(processor(text=["<image> what shape"], images=[tiny_vlms.IMG], return_tensors="pt"))
    hand, derived = derived_tables(model, processor, inputs)
    same_layout(hand.tokens("language_model"), derived.tokens("language_model"))
    for tower in set(hand.modules) - {"language_model"}:
        same_layout(hand.tokens(tower), derived.tokens(tower))
