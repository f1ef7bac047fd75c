"""BLIP and Florence-2: capture and image layout on tiny models with their real processors (no downloads).

BLIP computes attention in modules of its own (its vision tower and text decoder), so the derived
layout switches identity attention on inside them (``mmviz.capture.layouts.identity``); its text
decoder reads the image embeddings, ``[CLS]`` + patches, through cross-attention. Florence-2's DaViT
tower has overlapping convolutions, so its tokens are placed by the centre of their receptive fields
(``mmviz.capture.layouts.overlap``); its language model's encoder and decoder are stacks of their own.
Each layout is checked against the known answer and against the model with ``verify_layout``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import mmviz  # noqa: E402
from mmviz.capture.layouts.verify import verify_layout  # noqa: E402
from tests.capture.test_legacy import eager_twin, state  # noqa: E402
from tests.fixtures import tiny_vlms  # noqa: E402

GRID = [(0, r, c) for r in range(4) for c in range(4)]


def patches(table: Any) -> list[tuple[int, int, int]]:
    image = np.flatnonzero(table.kind == "image")
    return [(int(table.image_index[p]), int(table.patch_row[p]), int(table.patch_col[p])) for p in image]


def captured(build: Any) -> tuple[Any, Any, dict[str, Any], Any]:
    """``(model, processor, inputs, trace)`` of one forward of a tiny model from ``tiny_vlms``."""
    torch.set_num_threads(1)
    model, processor, inputs = build()
    with torch.no_grad(), mmviz.capture(model, processor=processor) as cap:
        model(**inputs)
    return model, processor, inputs, cap.attention


@pytest.fixture(scope="module")
def blip() -> tuple[Any, Any, dict[str, Any], Any]:
    return captured(tiny_vlms.blip)


@pytest.fixture(scope="module")
def florence() -> tuple[Any, Any, dict[str, Any], Any]:
    return captured(tiny_vlms.florence2)


def test_blip_tower_and_cross_attention_keys_are_the_patches(blip):
    model, processor, inputs, trace = blip
    assert set(trace.modules) == {"vision_model", "text_decoder", "text_decoder.cross_attention"}
    for stack, side in (("vision_model", "query"), ("text_decoder.cross_attention", "key")):
        table = trace.tokens(stack, side=side)
        assert table.text[0] == "[CLS]" and patches(table) == GRID, stack
        check = verify_layout(model, inputs, table, stack, processor, side=side)
        assert check.ok and check.image_tokens == 16, check.failures
    assert trace.tokens("text_decoder").tokens == ["<bos>", "what", "shape"]


def test_blip_text_decoder_is_exact_against_eager(blip):
    model, _, inputs, trace = blip
    twin = eager_twin(model)
    with torch.no_grad():
        image = twin.vision_model(pixel_values=inputs["pixel_values"])[0]
        out = twin.text_decoder(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
            encoder_hidden_states=image, output_attentions=True,
        )  # fmt: skip
    for stack, eager in (("text_decoder", out.attentions), ("text_decoder.cross_attention", out.cross_attentions)):
        stored = trace.modules[stack].dense.astype(np.float32)
        assert stored.shape[1] == len(eager) == 2
        for layer, probs in enumerate(eager):
            assert np.abs(stored[:, layer] - probs.numpy()).max() <= 1e-3, (stack, layer)


def test_blip_generate_keeps_the_layout(blip):
    model, processor, inputs, _ = blip
    with torch.no_grad(), mmviz.capture(model, processor=processor) as cap:
        seq = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    keys = cap.attention.tokens("text_decoder.cross_attention", side="key")
    assert patches(keys) == GRID
    text = cap.attention.tokens("text_decoder")
    assert len(text) == seq.shape[1] - 1 and text.tokens[:2] == ["<bos>", "what"]  # BLIP drops the prompt's last
    assert text.generated.tolist() == [False, False, True, True]


def test_blip_question_answering(blip):
    """The question's encoder reads the image through cross-attention; the answer's decoder reads the question."""
    model, processor, inputs, _ = blip
    vqa = transformers.BlipForQuestionAnswering(model.config).eval()
    answer = torch.tensor([[2, 14]])
    with torch.no_grad(), mmviz.capture(vqa, processor=processor) as cap:
        vqa(**inputs, decoder_input_ids=answer)
    trace = cap.attention
    keys = trace.tokens("text_encoder.cross_attention", side="key")
    assert patches(keys) == GRID
    check = verify_layout(vqa, inputs, keys, "text_encoder.cross_attention", processor, side="key")
    assert check.ok, check.failures
    assert trace.modules["text_decoder"].query_table == "decoder"
    assert trace.modules["text_decoder.cross_attention"].key_table == "text"  # the question
    with torch.no_grad(), mmviz.capture(vqa, processor=processor) as cap:
        seq = vqa.generate(**inputs, max_new_tokens=3)
    trace = cap.attention
    assert patches(trace.tokens("text_encoder.cross_attention", side="key")) == GRID
    assert trace.tokens("text_encoder").tokens == ["<bos>", "what", "shape"]
    assert len(trace.tokens("text_decoder")) == seq.shape[1] - 1


def test_blip_restored_after_an_exception(blip):
    model, processor, inputs, _ = blip
    before = state(model)
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad(), mmviz.capture(model, processor=processor):
        model(**inputs)
        raise RuntimeError("boom")
    assert state(model) == before


def test_florence2_encoder_and_decoder_are_separate_stacks(florence):
    _, _, inputs, trace = florence
    enc, dec = inputs["input_ids"].shape[1], inputs["decoder_input_ids"].shape[1]
    assert trace.modules["language_model.encoder"].shape[-2:] == (enc, enc)
    assert trace.modules["language_model.decoder"].shape[-2:] == (dec, dec)
    assert trace.modules["language_model.decoder.cross_attention"].shape[-2:] == (dec, enc)
    assert "language_model" not in trace.modules


def test_florence2_image_tokens_are_placed_by_their_receptive_fields(florence):
    model, processor, _, trace = florence
    _, _, inputs, _ = florence
    table = trace.tokens("language_model.encoder")
    assert table.text[0] == "<query 0>"  # the pooled token mixes the whole image
    assert patches(table) == GRID and table.grids == ((4, 4),)
    check = verify_layout(model, inputs, table, "language_model.encoder", processor)
    assert check.ok and check.image_tokens == 16 and check.queries == 1, check.failures
    assert table.tokens[17:] == ["<bos>", "what", "shape", "<eos>"]  # the prompt after the image
    assert trace.modules["language_model.decoder.cross_attention"].key_table == "text"


def test_florence2_window_attention_stacks_are_laid_out(florence):
    """The DaViT tower's window attention: each window (batch item) a 2×2 block of the 8×8 or 4×4 grid."""
    model, processor, inputs, trace = florence
    for stack, side in (("vision_tower.stage0.spatial_block", 8), ("vision_tower.stage1.spatial_block", 4)):
        windows = trace.modules[stack].shape[0]
        assert windows == (side // 2) ** 2
        for w in range(windows):
            r, c = divmod(w, side // 2)
            expected = [(0, 2 * r + i, 2 * c + j) for i in range(2) for j in range(2)]
            assert patches(trace.tokens(stack, batch_index=w)) == expected, (stack, w)
    check = verify_layout(model, inputs, trace.tokens(stack, batch_index=1), stack, processor, batch_index=1)
    assert check.ok, check.failures


def test_verify_layout_fails_on_swapped_rows(florence, blip):
    for model, processor, inputs, trace, stack, side in (
        (*florence, "language_model.encoder", "query"),
        (*blip, "text_decoder.cross_attention", "key"),
    ):
        table = trace.tokens(stack, side=side)
        rows = table.patch_row.copy()
        rows[table.kind == "image"] = (3 - rows[table.kind == "image"]) % 4  # rows upside down
        swapped = type(table)(**{**table.__dict__, "patch_row": rows})
        check = verify_layout(model, inputs, swapped, stack, processor, side=side)
        assert not check.ok and check.verified < check.laid_out, stack


def test_florence2_generate_keeps_the_layout(florence):
    model, processor, inputs, _ = florence
    run = {k: v for k, v in inputs.items() if k != "decoder_input_ids"}
    with torch.no_grad(), mmviz.capture(model, processor=processor) as cap:
        model.generate(**run, max_new_tokens=2, do_sample=False)
    assert patches(cap.attention.tokens("language_model.encoder")) == GRID


def test_placement_over_its_time_budget_is_left_out_with_a_warning(florence, monkeypatch):
    model, processor, inputs, _ = florence
    monkeypatch.setenv("MMVIZ_LAYOUT_SECONDS", "0")
    with torch.no_grad(), mmviz.capture(model, processor=processor) as cap:
        model(**inputs)
    with pytest.warns(UserWarning, match="MMVIZ_LAYOUT_SECONDS="):
        trace = cap.attention  # the layout is made when the trace is first asked for
    assert not (trace.tokens("language_model.encoder").kind == "image").any()
    monkeypatch.setenv("MMVIZ_LAYOUT_SECONDS", "soon")
    from mmviz.capture.layouts.overlap import layout_seconds

    with pytest.raises(ValueError, match="not a number of seconds"):
        layout_seconds()


def traced_both_ways(model: Any, inputs: dict[str, Any], trace: Any, monkeypatch: Any) -> tuple[dict, dict]:
    """``trace_pixels`` of every stack with the band method, then with the gradient path (its fallback)."""
    from mmviz.capture.layouts import overlap
    from mmviz.capture.layouts.provenance import trace_pixels

    shapes = {name: (m.shape[0], m.shape[-2], m.shape[-1]) for name, m in trace.modules.items()}
    traced = trace_pixels(model, inputs, shapes)
    assert traced is not None
    bands = traced[0]
    used = []

    def unusable(*args: Any) -> Any:
        used.append(args)
        raise ValueError("the model's forward does not take the perturbed pixels")

    monkeypatch.setattr(overlap, "_band_centres", unusable)
    traced = trace_pixels(model, inputs, shapes)
    assert traced is not None and used, "the band method was not tried"
    return bands, traced[0]


def test_florence2_bands_and_gradients_place_the_same_cells(florence, monkeypatch):
    """The band method (one forward per band) and the gradient path (one backward per token) agree exactly."""
    model, _, inputs, trace = florence
    bands, gradients = traced_both_ways(model, inputs, trace, monkeypatch)
    assert bands.keys() == gradients.keys()
    placed = 0
    for key, prov in bands.items():
        np.testing.assert_array_equal(prov.unit, gradients[key].unit, err_msg=str(key))
        np.testing.assert_array_equal(prov.box, gradients[key].box, err_msg=str(key))
        placed += int((prov.unit >= 0).sum())
    assert placed >= 16 + 64 + 16  # the encoder's grid, stage 0's 8×8 and stage 1's 4×4 windows at least


def test_florence2_bands_one_forward_at_a_time_are_the_same(florence, monkeypatch):
    """Where perturbed images do not batch, one forward each: the same cells."""
    from mmviz.capture.layouts import overlap
    from mmviz.capture.layouts.provenance import trace_pixels

    model, _, inputs, trace = florence
    shapes = {"language_model.encoder": trace.modules["language_model.encoder"].shape}
    shapes = {k: (v[0], v[-2], v[-1]) for k, v in shapes.items()}
    batched = trace_pixels(model, inputs, shapes)
    monkeypatch.setattr(overlap, "BANDS_PER_PASS", 1)
    single = trace_pixels(model, inputs, shapes)
    assert batched is not None and single is not None
    key = ("language_model.encoder", "query")
    assert (batched[0][key].unit >= 0).sum() == 16
    np.testing.assert_array_equal(batched[0][key].box, single[0][key].box)


def test_florence2_non_square_image_is_placed_by_bands():
    """A 32×48 image: a 4×6 grid, rows and columns found by their bands separately.

    (The gradient path's one random projection per token leaves this grid's columns unsplit here.)
    """
    model, processor, _ = tiny_vlms.florence2()
    image_processor = processor.image_processor
    image_processor.size = {"height": 32, "width": 48}
    image_processor.image_seq_length = 4 * 6 + 1
    processor = transformers.Florence2Processor(image_processor=image_processor, tokenizer=processor.tokenizer)
    image = tiny_vlms.IMG.resize((48, 32))
    inputs = dict(processor(text=["what shape"], images=[image], return_tensors="pt"))
    inputs["decoder_input_ids"] = torch.tensor([[2, 5]])
    with torch.no_grad(), mmviz.capture(model, processor=processor) as cap:
        model(**inputs)
    table = cap.attention.tokens("language_model.encoder")
    assert patches(table) == [(0, r, c) for r in range(4) for c in range(6)] and table.grids == ((4, 6),)
    check = verify_layout(model, inputs, table, "language_model.encoder", processor)
    assert check.ok and check.image_tokens == 24 and check.queries == 1, check.failures
    windows = cap.attention.tokens("vision_tower.stage1.spatial_block", batch_index=5)  # 2×2 of the 4×6 grid
    assert patches(windows) == [(0, 2 + i, 4 + j) for i in range(2) for j in range(2)]


def test_florence2_two_images_are_placed_unit_by_unit():
    """Two images in a batch: every position changes with one image only, each image's grid its own."""
    from tests.fixtures.tiny_vlm_kit import random_image

    model, processor, _ = tiny_vlms.florence2()
    images = [tiny_vlms.IMG, random_image(32, seed=3)]
    inputs = dict(processor(text=["what shape"] * 2, images=images, return_tensors="pt"))
    inputs["decoder_input_ids"] = torch.tensor([[2, 5], [2, 5]])
    with torch.no_grad(), mmviz.capture(model, processor=processor) as cap:
        model(**inputs)
    for b in range(2):
        table = cap.attention.tokens("language_model.encoder", batch_index=b)
        assert table.text[0] == "<query 0>" and patches(table) == GRID, b
        check = verify_layout(model, inputs, table, "language_model.encoder", processor, batch_index=b)
        assert check.laid_out == check.verified == 16 and check.ok, check.failures  # the pooled query too


def test_rows_are_split_at_the_large_gaps_not_between_tiny_ones():
    """Tiny gaps within a row (0.016 and 0.002 px) must not count as the largest drop of the sorted gaps."""
    from mmviz.capture.layouts.overlap import _split

    rows = np.array([3.84, 3.84, 3.9, 3.92, 7.56, 8.07, 8.11, 8.17, 15.37, 15.49, 15.82, 15.93, 23.39, 23.41, 23.66])
    rows = np.append(rows, 23.662)
    split = _split(rows)
    assert split is not None and split[1] == 4
    assert split[0].tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    assert _split(np.array([1.0, 5.0, 9.0, 9.5])) is None  # groups of unequal size
