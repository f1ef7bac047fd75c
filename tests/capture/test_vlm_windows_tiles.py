"""Windowed vision towers, ``generate`` tables and tile placement of today's VLM families (issue 15).

* Qwen2.5-VL's tower attends within windows of patches in some layers and over the whole image in
  others; it is one stack whose positions are the tower's window order, each the raw patch it comes from.
* ``generate`` keeps the text table of the forward: Gemma 3 (its sliding-window cache keeps only the last
  keys) and Kosmos-2 (its ``generate`` runs the text model's ``generate``, never its own forward).
* Tiles of InternVL, Aya Vision (GOT-OCR2's tiles then a thumbnail) and Mllama (aspect-ratio ids, padded
  canvas) are placed on the image they were cut from.

Every expectation is written out by hand for the tiny models of ``tests/fixtures/tiny_vlms.py``.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import mmviz  # noqa: E402
from mmviz.capture.layouts.tiles import tile_boxes  # noqa: E402
from mmviz.capture.layouts.verify import verify_layout  # noqa: E402
from tests.capture.test_families import block_diagonal, eager_run  # noqa: E402
from tests.fixtures import tiny_vlms  # noqa: E402
from tests.fixtures.tiny_configs import random_image  # noqa: E402


def capture(model: Any, processor: Any, inputs: dict[str, Any], generate: bool = False) -> Any:
    with torch.no_grad(), mmviz.capture(model, processor=processor) as cap:
        if generate:
            model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=0)
        else:
            model(**inputs)
    return cap.attention


# -- Qwen2.5-VL's windowed tower -------------------------------------------------------------------
def window_order(rows: int, cols: int, window: int = 2, merge: int = 2) -> list[list[tuple[int, int]]]:
    """The tower's windows on a ``rows × cols`` raw grid, each its raw ``(row, col)`` in order: windows of
    ``window × window`` merged cells (the tiny tower: 16 px / patch 4 / merge 2 = 2), windows row-major
    (cut short at the bottom and right edges), cells row-major in a window, the 2×2 patches of a cell."""
    cells_r, cells_c = rows // merge, cols // merge
    windows = []
    for wr, wc in itertools.product(range(-(-cells_r // window)), range(-(-cells_c // window))):
        cells = [(r, c) for r in range(wr * window, min(wr * window + window, cells_r))
                 for c in range(wc * window, min(wc * window + window, cells_c))]  # fmt: skip
        windows.append(
            [(r * merge + dr, c * merge + dc) for r, c in cells for dr, dc in itertools.product(range(merge), repeat=2)]
        )
    return windows


@pytest.mark.parametrize("generate", [False, True])
def test_windowed_tower_is_one_stack_in_window_order(generate):
    model, processor, inputs = tiny_vlms.qwen2_5_vl()
    trace = capture(model, processor, inputs, generate)
    assert {m for m in trace.modules if m.startswith("visual")} == {"visual"}
    tower = trace.modules["visual"]
    assert tower.layers == (0, 1) and tower.dense is not None and tower.dense.shape[-2:] == (64, 64)
    table = trace.tokens("visual")
    assert list(zip(table.patch_row.tolist(), table.patch_col.tolist())) == list(itertools.chain(*window_order(8, 8)))
    assert (table.kind == "image").all() and (table.image_index == 0).all() and table.grids == ((8, 8),)
    windowed, full = tower.dense[0, 0].astype(np.float32), tower.dense[0, 1].astype(np.float32)
    inside = np.kron(np.eye(4, dtype=bool), np.ones((16, 16), dtype=bool))  # layer 0 attends within its window
    assert not windowed[:, ~inside].any() and (full[:, ~inside] > 0).all()  # layer 1 (full attention) to all
    np.testing.assert_allclose(windowed.sum(-1), 1.0, atol=1e-2)


def test_windowed_tower_of_two_images_with_windows_cut_short():
    """A 40×24 image (a 6×10 raw grid: 3×5 merged cells, so the last window row and column are cut short)
    and a 32×32 one: one block-diagonal stack over both images' windows, each image in its window order."""
    model, processor, _ = tiny_vlms.qwen2_5_vl()
    text = ["<|vision_start|><|image_pad|><|vision_end|> and <|vision_start|><|image_pad|><|vision_end|> what"]
    images = [random_image(48, seed=7).resize((40, 24)), random_image(32, seed=8)]
    inputs = dict(processor(text=text, images=[images], return_tensors="pt"))
    assert inputs["image_grid_thw"].tolist() == [[1, 6, 10], [1, 8, 8]]
    trace = capture(model, processor, inputs)
    table = trace.tokens("visual")
    windows = [(0, w) for w in window_order(6, 10)] + [(1, w) for w in window_order(8, 8)]
    want = [(i, r, c) for i, w in windows for r, c in w]
    assert list(zip(table.image_index.tolist(), table.patch_row.tolist(), table.patch_col.tolist())) == want
    inside = np.zeros((124, 124), dtype=bool)
    start = 0
    for _, w in windows:
        inside[start : start + len(w), start : start + len(w)] = True
        start += len(w)
    dense = trace.modules["visual"].dense
    assert dense is not None and not dense[0, 0][:, ~inside].any() and dense[0, 0][:, inside].all()
    for stack in ("visual", "language_model"):
        check = verify_layout(model, inputs, trace.tokens(stack), stack, processor)
        assert check.ok, (stack, check.failures)


def test_windowed_tower_equals_eager_windows():
    model, processor, inputs = tiny_vlms.qwen2_5_vl()
    trace = capture(model, processor, inputs)
    _, spied = eager_run(model, inputs)
    windows = spied[("visual", 0)]
    assert [w.shape[-1] for w in windows] == [16] * 4  # the model called attention once per window
    np.testing.assert_allclose(
        trace.modules["visual"].dense[:, 0].astype(np.float32), block_diagonal(windows), atol=1e-3
    )
    np.testing.assert_allclose(
        trace.modules["visual"].dense[:, 1].astype(np.float32), spied[("visual", 1)][0], atol=1e-3
    )


def test_windowed_tower_layout_is_verified():
    model, processor, inputs = tiny_vlms.qwen2_5_vl()
    trace = capture(model, processor, inputs)
    check = verify_layout(model, inputs, trace.tokens("visual"), "visual", processor)
    assert check.ok and check.image_tokens == 64, check.failures


# -- generate keeps the text table -------------------------------------------------------------------
def test_sliding_window_generate_equals_the_forward_over_the_sequence():
    """Gemma 3's local layers (window 8) keep 8 cached keys: the decoding step's 9 keys are positions 1-9."""
    model, processor, inputs = tiny_vlms.gemma3()
    generated = capture(model, processor, inputs, generate=True)
    lm = generated.modules["language_model"]
    assert (lm.query_table, lm.key_table) == ("text", "text") and lm.dense is not None
    assert lm.dense.shape[-2:] == (10, 10)
    with torch.no_grad():
        sequence = model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=0)
    forced = {**inputs, "input_ids": sequence[:, :10], "attention_mask": torch.ones(1, 10, dtype=torch.long)}
    forced["token_type_ids"] = torch.cat([inputs["token_type_ids"], torch.zeros(1, 1, dtype=torch.long)], dim=1)
    forward = capture(model, processor, forced)
    want = forward.modules["language_model"].dense
    np.testing.assert_allclose(lm.dense.astype(np.float32), want.astype(np.float32), atol=2e-3)
    text, prompt = generated.tokens("language_model"), forward.tokens("language_model")
    assert text.tokens[:9] == prompt.tokens[:9] and text.generated.tolist() == [False] * 9 + [True]
    assert [(int(r), int(c)) for r, c in zip(text.patch_row, text.patch_col) if r >= 0] == [
        (0, 0), (0, 1), (1, 0), (1, 1)
    ]  # fmt: skip


def test_sliding_window_generate_stored_as_queries_and_keys():
    """``store="qk"``: the decoding step's keys join the full key sequence, the dropped ones masked out."""
    model, processor, inputs = tiny_vlms.gemma3()
    dense = capture(model, processor, inputs, generate=True).modules["language_model"].dense
    with torch.no_grad(), mmviz.capture(model, processor=processor, modules=["language_model"], store="qk") as cap:
        model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=0)
    qk = cap.attention.modules["language_model"].qk
    assert qk is not None and dense is not None and qk.shape[-2:] == (10, 10)
    np.testing.assert_allclose(qk.dense(0, [0, 1], [0, 1]), dense[0].astype(np.float32), atol=1e-3)


def test_generate_of_a_sub_model_gets_the_text_table():
    """Kosmos-2's generate runs its text model's generate: the text is the prompt and the generated tokens."""
    model, processor, inputs = tiny_vlms.kosmos2()
    generated = capture(model, processor, inputs, generate=True)
    with torch.no_grad():
        sequence = model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=0)
    text = generated.tokens("text_model")
    assert generated.modules["text_model"].query_table == "text"
    assert text.token_id.tolist() == sequence[0, :-1].tolist() and text.generated.tolist() == [False] * 9 + [True]
    slots = np.flatnonzero(inputs["image_embeds_position_mask"][0].numpy() == 1)
    assert text.tokens[slots[0] : slots[-1] + 1] == [f"<query {k}>" for k in range(4)]


# -- tiles placed on the source image ----------------------------------------------------------------
THIRDS = tuple((0, 0.0, k / 3, 1.0, (k + 1) / 3) for k in range(3))
WHOLE = (0, 0.0, 0.0, 1.0, 1.0)


def placed(trace: Any, stack: str, side: str = "query") -> tuple[Any, ...]:
    return tuple(tuple(round(v, 6) for v in box) for box in trace.tokens(stack, side=side).tiles)


def rounded(boxes: Any) -> tuple[Any, ...]:
    return tuple(tuple(round(v, 6) for v in box) for box in boxes)


@pytest.mark.parametrize("family", ["internvl", "aya_vision"])
def test_tiles_then_thumbnail_of_a_wide_image(family):
    """A 3:1 image becomes a 1×3 grid of tiles (the closest grid of at most 4), then its thumbnail."""
    model, processor, inputs = tiny_vlms.FAMILIES[family](random_image(48, seed=3).resize((48, 16)))
    assert inputs["pixel_values"].shape[0] == 4
    trace = capture(model, processor, inputs)
    assert placed(trace, "language_model") == rounded((*THIRDS, WHOLE))
    check = verify_layout(model, inputs, trace.tokens("language_model"), "language_model", processor)
    assert check.ok and check.image_tokens == 16, check.failures


def test_tiles_of_a_tall_image_are_rows():
    model, processor, inputs = tiny_vlms.internvl(random_image(32, seed=4).resize((16, 32)))
    boxes = tile_boxes(model.config, inputs, None, processor)
    assert [boxes[k] for k in range(3)] == [(0, 0.0, 0.0, 0.5, 1.0), (0, 0.5, 0.0, 1.0, 1.0), WHOLE]


def test_images_of_one_tile_and_of_several_are_told_apart():
    """A small square image is one tile (no thumbnail); the wide one after it is two tiles and a thumbnail."""
    model, processor, _ = tiny_vlms.internvl()
    text = ["<IMG_CONTEXT> and <IMG_CONTEXT> what shape"]
    images = [[random_image(16, seed=6), tiny_vlms.WIDE]]
    inputs = dict(processor(text=text, images=images, return_tensors="pt"))
    assert inputs["pixel_values"].shape[0] == 4
    boxes = tile_boxes(model.config, inputs, None, processor)
    assert boxes == {0: WHOLE, 1: (1, 0.0, 0.0, 1.0, 0.5), 2: (1, 0.0, 0.5, 1.0, 1.0), 3: (1, *WHOLE[1:])}
    trace = capture(model, processor, inputs)
    assert trace.tokens("language_model").tiles == (WHOLE, *(boxes[k] for k in (1, 2, 3)))


def test_aspect_ratio_tiles_on_a_padded_canvas():
    """Mllama fits a 28×16 image into its 1×2 canvas (32×16) at its own size, padding 4 columns on the
    right: the first tile covers 16 of its 28 columns."""
    model, processor, inputs = tiny_vlms.mllama(random_image(32, seed=5).resize((28, 16)))
    assert inputs["aspect_ratio_ids"].tolist() == [[2]]  # the config's supported ratio (1, 2)
    trace = capture(model, processor, inputs)
    assert placed(trace, "language_model.cross_attention", "key") == rounded(
        ((0, 0.0, 0.0, 1.0, 16 / 28), (0, 0.0, 16 / 28, 1.0, 1.0))
    )


def test_windowed_tower_stored_as_queries_and_keys():
    """``store="qk"`` joins the windows into one call with a block-diagonal mask: the same probabilities."""
    model, processor, inputs = tiny_vlms.qwen2_5_vl()
    dense = capture(model, processor, inputs).modules["visual"].dense
    with torch.no_grad(), mmviz.capture(model, processor=processor, modules=["visual"], store="qk") as cap:
        model(**inputs)
    qk = cap.attention.modules["visual"].qk
    assert qk is not None and dense is not None
    np.testing.assert_allclose(qk.dense(0, [0, 1], [0, 1]), dense[0].astype(np.float32), atol=1e-3)


def test_independent_images_are_not_taken_for_tiles():
    """Three unrelated images (LLaVA-style ``[images, C, H, W]``) stay whole images: none is a thumbnail."""
    pixels = torch.stack([torch.from_numpy(np.array(random_image(16, seed=s))).permute(2, 0, 1) for s in range(3)])
    boxes = tile_boxes(None, {"pixel_values": pixels.float() / 255}, None)
    assert boxes == {u: (u, *WHOLE[1:]) for u in range(3)}


def test_placing_tiles_is_cheap_for_many_large_units():
    import time

    pixels = torch.rand(24, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    boxes = tile_boxes(None, {"pixel_values": pixels}, None)
    assert time.perf_counter() - start < 5 and boxes == {u: (u, *WHOLE[1:]) for u in range(24)}


def test_aspect_ratio_tiles_of_a_batch():
    """A tall image (2×1 grid, padded on the right) and a wide one (1×2), one per prompt: each prompt's
    tiles are placed on its own image."""
    model, processor, _ = tiny_vlms.mllama()
    processor.tokenizer.padding_side = "left"
    texts = ["<|image|> what shape", "<|image|> a red what"]
    images = [[random_image(16, seed=1).resize((16, 40))], [tiny_vlms.WIDE]]
    inputs = dict(processor(text=texts, images=images, return_tensors="pt", padding=True))
    assert inputs["aspect_ratio_ids"].tolist() == [[3], [2]]
    trace = capture(model, processor, inputs)
    stack = "language_model.cross_attention"
    tall, wide = (trace.tokens(stack, b, side="key") for b in range(2))
    assert tall.tiles == ((0, 0.0, 0.0, 0.5, 1.0), (0, 0.5, 0.0, 1.0, 1.0))
    assert wide.tiles == ((0, 0.0, 0.0, 1.0, 0.5), (0, 0.0, 0.5, 1.0, 1.0))
    for b, table in enumerate((tall, wide)):
        assert verify_layout(model, inputs, table, stack, processor, batch_index=b, side="key").ok
