"""mmviz.capture across model families, each built from a tiny random config (no downloads).

For every family: outputs equal the uncaptured run; the probabilities the recorder hands back to the
model (``output_attentions=True`` inside the capture, before float16 storage) equal eager's; the stored
float16 trace equals what each eager attention function computed (every stack, including those eager
``output_attentions`` does not return, such as Qwen2-VL's vision tower or BLIP-2's Q-Former); and image
tokens know their image and patch ``(row, col)``.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import mmviz  # noqa: E402
from mmviz._hf.modules import module_group, stack_names  # noqa: E402
from tests.capture import conftest as tiny  # noqa: E402

IMG = tiny.random_image(32, seed=0)
IMG2 = tiny.random_image(24, seed=1)


# -- references ------------------------------------------------------------------------------------
@contextlib.contextmanager
def eager_spy(model: Any) -> Iterator[dict[tuple[str, int], list[torch.Tensor]]]:
    """Records what every eager attention function of ``model`` returns, by (stack, layer), in call order."""
    names = stack_names(model)
    calls: dict[tuple[str, int], list[torch.Tensor]] = {}
    patched = []
    for owner in {type(m).__module__ for m in model.modules()}:
        module = sys.modules[owner]
        original = getattr(module, "eager_attention_forward", None)
        if original is None:
            continue

        def spy(mod: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            out, weights = _original(mod, *args, **kwargs)
            calls.setdefault(names[id(mod)], []).append(weights.detach().clone())
            return out, weights

        module.eager_attention_forward = spy
        patched.append((module, original))
    try:
        yield calls
    finally:
        for module, original in patched:
            module.eager_attention_forward = original


def eager_run(model: Any, inputs: dict[str, Any]) -> tuple[Any, dict[tuple[str, int], list[torch.Tensor]]]:
    """A separate eager copy of ``model`` run with ``output_attentions=True``, and its spied probabilities."""
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad(), eager_spy(eager) as calls:
        out = eager(**inputs, output_attentions=True)
    return out, calls


def attention_fields(out: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every ``*attentions`` tensor in a (nested) model output, by dotted name and layer."""
    found = {}
    for key, value in out.items():
        if key.endswith("attentions") and isinstance(value, tuple):
            found.update({f"{prefix}{key}.{i}": v for i, v in enumerate(value) if isinstance(v, torch.Tensor)})
        elif hasattr(value, "items"):
            found.update(attention_fields(value, f"{prefix}{key}."))
    return found


def output_tensors(out: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    found = {}
    for key, value in out.items():
        if "attentions" in key or key == "past_key_values":
            continue
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            found[prefix + key] = value
        elif hasattr(value, "items"):
            found.update(output_tensors(value, f"{prefix}{key}."))
    return found


def block_diagonal(chunks: list[torch.Tensor]) -> torch.Tensor:
    n = sum(c.shape[-1] for c in chunks)
    out = torch.zeros(*chunks[0].shape[:2], n, n)
    start = 0
    for c in chunks:
        out[:, :, start : start + c.shape[-1], start : start + c.shape[-1]] = c
        start += c.shape[-1]
    return out


def expected_layers(calls: dict[int, list[torch.Tensor]], packed: int | None) -> dict[int, torch.Tensor]:
    """Eager probabilities per layer label: a module called once per packed image is one block-diagonal
    matrix, the same probabilities computed twice count once, and a module applied ``r`` times (shared
    layers) gives layers ``r · (last layer + 1) + layer``."""
    span = max(calls) + 1
    out = {}
    for layer, tensors in calls.items():
        if len(tensors) == 1 or all(torch.equal(tensors[0], t) for t in tensors[1:]):
            out[layer] = tensors[0]
        elif len(tensors) == packed:
            out[layer] = block_diagonal(tensors)
        else:
            out.update({r * span + layer: t for r, t in enumerate(tensors)})
    return out


def check_exact(model: Any, inputs: dict[str, Any], processor: Any = None, modules: set[str] | None = None) -> Any:
    """The three exactness checks; returns the captured trace."""
    with torch.no_grad():
        ref = model(**inputs)
        with mmviz.capture(model, processor=processor) as cap:
            out = model(**inputs, output_attentions=True)
    eager_out, spied = eager_run(model, inputs)

    # 1. outputs equal the uncaptured (sdpa) run
    assert_outputs_equal(ref, out, inputs.get("attention_mask"))

    # 2. probabilities handed back by the recorder (before float16 storage) equal eager output_attentions
    expected = attention_fields(eager_out)
    got = attention_fields(out)
    assert expected and set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].shape == value.shape, name
        assert (got[name] - value).abs().max() <= 1e-5, name

    # 3. the stored float16 trace equals every eager attention call
    trace = cap.attention
    if modules is not None:
        assert set(trace.modules) == modules
    assert_trace_matches(trace, spied, len(inputs["image_grid_thw"]) if "image_grid_thw" in inputs else None)
    return trace


def assert_outputs_equal(ref: Any, out: Any, valid: torch.Tensor | None) -> None:
    """Every floating output of ``out`` equals ``ref`` (≤ 1e-5), padding positions aside."""
    for name, value in output_tensors(ref).items():
        diff = (output_tensors(out)[name] - value).abs()
        if valid is not None and diff.shape[:2] == valid.shape:
            diff = diff[valid.bool()]
        assert diff.max() <= 1e-5, name


def assert_trace_matches(trace: Any, spied: dict[tuple[str, int], list[torch.Tensor]], packed: int | None) -> None:
    """The stored float16 trace equals every eager attention call (``eager_spy``), stack by stack."""
    for group, m in trace.modules.items():
        want = expected_layers({k[1]: v for k, v in spied.items() if k[0] == group}, packed)
        assert m.layers == tuple(sorted(want)), group
        assert m.dense is not None
        for slot, layer in enumerate(m.layers):
            np.testing.assert_allclose(
                m.dense[:, slot].astype(np.float32), want[layer].numpy(), atol=1e-3, err_msg=group
            )


def assert_row_major(table: Any, positions: np.ndarray, grid: tuple[int, int], image: int = 0) -> None:
    rows, cols = grid
    k = np.arange(rows * cols)
    assert len(positions) == rows * cols
    assert (table.kind[positions] == "image").all()
    assert (table.image_index[positions] == image).all()
    np.testing.assert_array_equal(table.patch_row[positions], k // cols)
    np.testing.assert_array_equal(table.patch_col[positions], k % cols)
    assert table.grids[image] == grid


# -- text families ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_decoder_with_grouped_query_attention(kind):
    model = tiny.make_llama(kind)
    tok = tiny.word_tokenizer()
    tok.padding_side = "left"
    inputs = dict(tok(["a red square", "what is the blue circle"], return_tensors="pt", padding=True))
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    trace = check_exact(model, inputs, tok, {"language_model"})
    assert trace.module().heads == (0, 1, 2, 3)
    table = trace.tokens(batch_index=0)
    np.testing.assert_array_equal(table.kind == "pad", inputs["attention_mask"][0].numpy() == 0)
    assert table.tokens[-3:] == ["a", "red", "square"]


def test_llama_generate_matches_teacher_forced_eager():
    model = tiny.make_llama("llama")
    tok = tiny.word_tokenizer()
    inputs = dict(tok(["a red square"], return_tensors="pt"))
    with torch.no_grad(), mmviz.capture(model, processor=tok) as cap:
        seq = model.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=0)
    trace = cap.attention
    full = seq[:, :-1]
    eager_out, _ = eager_run(model, {"input_ids": full})
    for slot in range(2):
        np.testing.assert_allclose(trace.probs(layers=slot)[0], eager_out.attentions[slot][0].numpy(), atol=1e-3)
    table = trace.tokens()
    assert table.generated.tolist() == [False] * 4 + [True] * 2


def test_bert_token_types_and_wordpiece_words():
    model = tiny.make_bert()
    tok = tiny.wordpiece_tokenizer()
    inputs = dict(tok(["the cat sat on the mat"], ["unbelievable playing"], return_tensors="pt"))
    assert inputs["token_type_ids"].sum() > 0
    trace = check_exact(model, inputs, tok)
    words = [w for w, _ in trace.tokens().words()]
    assert "unbelievable" in words and "playing" in words
    merged, q_words, k_words = trace.word_probs()
    assert merged.shape[-2:] == (len(q_words), len(k_words)) == (len(words), len(words))
    np.testing.assert_allclose(merged.sum(-1), 1.0, atol=2e-3)


def test_t5_encoder_decoder_and_cross_attention():
    model = tiny.make_t5()
    tok = tiny.word_tokenizer()
    inputs = dict(tok(["what shape is the red", "a red square"], return_tensors="pt", padding=True))
    inputs["decoder_input_ids"] = torch.tensor([[0, 5, 6], [0, 7, 8]])
    trace = check_exact(model, inputs, tok, {"encoder", "decoder", "decoder.cross_attention"})
    cross = trace.modules["decoder.cross_attention"]
    assert (cross.query_table, cross.key_table) == ("decoder", "text")
    assert trace.modules["encoder"].query_table == "text"
    assert trace.tokens("encoder", 1).kind.tolist().count("pad") == 2


def test_t5_generate_records_decoder_and_cross_attention():
    model = tiny.make_t5()
    tok = tiny.word_tokenizer()
    inputs = dict(tok(["what shape is the red"], return_tensors="pt"))
    with torch.no_grad(), mmviz.capture(model, processor=tok) as cap:
        seq = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    trace = cap.attention
    eager_out, _ = eager_run(model, {**inputs, "decoder_input_ids": seq[:, :-1]})
    n = seq.shape[1] - 1
    for name, field in (("decoder", "decoder_attentions"), ("decoder.cross_attention", "cross_attentions")):
        got = trace.probs(name)
        assert got.shape[-2] == n
        want = torch.stack(getattr(eager_out, field))[:, 0].numpy()
        np.testing.assert_allclose(got, want, atol=1e-3)
    assert trace.tokens("decoder").generated.tolist() == [False] + [True] * (n - 1)


# -- vision and dual-tower families -----------------------------------------------------------------
def test_vit_patches_after_cls():
    model = tiny.make_vit()
    trace = check_exact(model, {"pixel_values": torch.randn(2, 3, 16, 16)})
    (name,) = trace.modules
    table = trace.tokens(name, 1)
    assert table.kind[0] == "special"
    assert_row_major(table, np.arange(1, 17), (4, 4))


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_dual_towers(kind):
    model = getattr(tiny, f"make_{kind}")()
    tok = tiny.word_tokenizer()
    text = tok(["a red square", "blue circle"], return_tensors="pt", padding="max_length", max_length=8)
    inputs = {**text, "pixel_values": torch.randn(2, 3, 16, 16)}
    trace = check_exact(model, inputs, tok, {"text_model", "vision_model"})
    vision = trace.tokens("vision_model", 1)
    cls = 1 if kind == "clip" else 0
    assert len(vision) == 16 + cls
    assert (vision.kind[:cls] == "special").all()
    assert_row_major(vision, np.arange(cls, cls + 16), (4, 4))
    assert trace.tokens("text_model", 1).kind.tolist().count("pad") == 5


# -- vision-language models ------------------------------------------------------------------------
def test_llava_row_major_placeholders():
    model, processor = tiny.make_llava()
    inputs = dict(processor(text=["<image> what shape is the red"], images=[IMG], return_tensors="pt"))
    trace = check_exact(model, inputs, processor, {"language_model", "vision_tower"})
    table = trace.tokens()
    positions = np.flatnonzero(inputs["input_ids"][0].numpy() == model.config.image_token_id)
    assert_row_major(table, positions, (4, 4))  # k-th image token is patch (k // 4, k % 4)
    tower = trace.tokens("vision_tower")
    assert tower.kind[0] == "special"
    assert_row_major(tower, np.arange(1, 17), (4, 4))
    assert table.images[0].shape == (16, 16, 3)


def test_paligemma_image_prefix_and_prefix_lm_mask():
    model, processor = tiny.make_paligemma()
    inputs = dict(processor(text=["<image> what shape"], images=[IMG], suffix=["red square"], return_tensors="pt"))
    inputs.pop("labels")
    trace = check_exact(model, inputs, processor, {"language_model", "vision_tower"})
    table = trace.tokens()
    assert_row_major(table, np.arange(16), (4, 4))  # the image is the prefix
    tower = trace.tokens("vision_tower")
    assert len(tower) == 16  # SigLIP: no CLS
    assert_row_major(tower, np.arange(16), (4, 4))
    prefix_end = int((inputs["token_type_ids"][0] == 0).sum())
    probs = trace.probs()[0, 0]
    assert (probs[0, 16:prefix_end] > 0).all()  # bidirectional over image and prompt
    assert (probs[0, prefix_end:] == 0).all()  # the suffix is causal
    assert (probs[prefix_end, prefix_end + 1 :] == 0).all()


def test_qwen2_vl_merged_grid_and_window_ordered_tower():
    model, processor = tiny.make_qwen2_vl()
    texts = [
        "<|vision_start|><|image_pad|><|vision_end|> what shape",
        "a <|vision_start|><|image_pad|><|vision_end|> red",
    ]
    inputs = tiny.qwen2_vl_inputs(processor, texts, [IMG, IMG2])
    assert inputs["image_grid_thw"].tolist() == [[1, 8, 8], [1, 6, 6]]
    trace = check_exact(model, inputs, processor, {"language_model", "visual"})

    # language model: image tokens row-major on the merged (h/2, w/2) grid, checked against M-RoPE positions
    position_ids, _ = model.model.get_rope_index(
        inputs["input_ids"],
        inputs["mm_token_type_ids"],
        inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    for b, grid in ((0, (4, 4)), (1, (3, 3))):
        table = trace.tokens(batch_index=b)
        positions = np.flatnonzero(table.kind == "image")
        assert_row_major(table, positions, grid)
        h = position_ids[1, b, positions].numpy()
        w = position_ids[2, b, positions].numpy()
        np.testing.assert_array_equal(h - h.min(), table.patch_row[positions])
        np.testing.assert_array_equal(w - w.min(), table.patch_col[positions])

    # vision tower: one sequence of raw patches, block-diagonal over the two images
    tower = trace.tokens("visual")
    assert len(tower) == 64 + 36 and tower.grids == ((8, 8), (6, 6))
    probs = trace.probs("visual")
    assert (probs[:, :, :64, 64:] == 0).all() and (probs[:, :, 64:, :64] == 0).all()
    # each position's pixels are the image's patch at its (row, col): the merge-window order is resolved
    ip = processor.image_processor
    pixels = inputs["pixel_values"].reshape(-1, 3, 2, 4, 4)[:, :, 0]
    pixels = pixels * torch.tensor(ip.image_std)[:, None, None] + torch.tensor(ip.image_mean)[:, None, None]
    for image, source in enumerate((IMG, IMG2)):
        original = np.asarray(source, dtype=np.float32) / 255
        np.testing.assert_allclose(trace.tokens("visual").images[image] / 255, original, atol=1 / 255 + 1e-6)
        for pos in np.flatnonzero(tower.image_index == image):
            r, c = tower.patch_row[pos], tower.patch_col[pos]
            patch = original[4 * r : 4 * r + 4, 4 * c : 4 * c + 4].transpose(2, 0, 1)
            np.testing.assert_allclose(pixels[pos].numpy(), patch, atol=1e-4)
    assert tower.patch_row[:4].tolist() == [0, 0, 1, 1] and tower.patch_col[:4].tolist() == [0, 1, 0, 1]


def test_qwen2_vl_generate():
    model, processor = tiny.make_qwen2_vl()
    inputs = tiny.qwen2_vl_inputs(processor, ["<|vision_start|><|image_pad|><|vision_end|> what shape"], [IMG])
    with torch.no_grad(), mmviz.capture(model, processor=processor) as cap:
        seq = model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=0)
    trace = cap.attention
    n = seq.shape[1] - 1
    assert trace.probs().shape[-2:] == (n, n)
    assert_row_major(trace.tokens(), np.flatnonzero(trace.tokens().kind == "image"), (4, 4))
    assert trace.tokens("visual").grids == ((8, 8),)


def test_blip2_qformer_cross_attention_and_image_map():
    from mmviz.capture.layouts.blip2 import image_map, query_positions

    model, processor = tiny.make_blip2()
    inputs = dict(processor(text=["what shape is the red"], images=[IMG], return_tensors="pt"))
    modules = {"language_model", "qformer", "qformer.cross_attention", "vision_model"}
    trace = check_exact(model, inputs, processor, modules)
    cross = trace.modules["qformer.cross_attention"]
    assert cross.shape[-2:] == (4, 17)
    assert (cross.query_table, cross.key_table) == ("qformer.queries", "vision_model.patches")
    patches = trace.tokens("qformer.cross_attention", side="key")
    assert patches.kind[0] == "special"
    assert_row_major(patches, np.arange(1, 17), (4, 4))

    lm_table = trace.tokens()
    slots = query_positions(lm_table)
    np.testing.assert_array_equal(slots, np.flatnonzero(inputs["input_ids"][0].numpy() == 4))
    assert lm_table.tokens[: len(slots)] == [f"<query {k}>" for k in range(4)]

    chain = image_map(trace, query=-1)
    lm = trace.probs().mean(axis=(0, 1))[-1, slots]
    x = trace.probs("qformer.cross_attention").mean(axis=(0, 1))[:, 1:]
    np.testing.assert_allclose(chain, (lm @ x).reshape(4, 4), rtol=1e-5, atol=1e-7)
    assert image_map(trace, query=[-1, -2], normalize=True).sum() == pytest.approx(1.0, abs=1e-5)


# -- accelerate ------------------------------------------------------------------------------------
def test_accelerate_dispatch_with_cpu_and_disk_offload(tmp_path):
    from accelerate import dispatch_model

    tok = tiny.word_tokenizer()
    inputs = dict(tok(["what is the blue circle"], return_tensors="pt"))
    plain = tiny.make_llama("llama")
    with torch.no_grad(), mmviz.capture(plain, processor=tok) as cap:
        ref = plain(**inputs).logits
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "disk", "model.norm": "cpu", "lm_head": "cpu"}  # fmt: skip
    dispatched = dispatch_model(tiny.make_llama("llama"), device_map=device_map, offload_dir=str(tmp_path))
    with torch.no_grad(), mmviz.capture(dispatched, processor=tok) as cap2:
        out = dispatched(**inputs).logits
    assert (out - ref).abs().max() <= 1e-5
    np.testing.assert_array_equal(cap2.attention.probs(), cap.attention.probs())
    assert cap2.attention.tokens().tokens == cap.attention.tokens().tokens


# -- generic structures: shared layers, duplicate calls, stages ------------------------------------
def test_shared_layer_applications_become_layers():
    torch.manual_seed(0)
    cfg = transformers.AlbertConfig(
        vocab_size=32,
        embedding_size=16,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
    )
    model = transformers.AlbertModel(cfg, add_pooling_layer=False).eval()
    # encoder.albert_layer_groups.0.albert_layers.0.attention: layer group 0 holds the one shared layer
    trace = check_exact(model, {"input_ids": torch.tensor([[2, 5, 6, 7, 3]])}, modules={"encoder.stage0"})
    assert trace.module().layers == (0, 1, 2)  # one attention module, applied three times


def test_duplicate_calls_of_one_layer_are_kept_once():
    torch.manual_seed(0)
    cfg = transformers.DiffLlamaConfig(**tiny.text_cfg(num_key_value_heads=2))
    model = transformers.DiffLlamaModel(cfg).eval()
    trace = check_exact(model, {"input_ids": torch.tensor([[2, 5, 6, 7, 3]])}, modules={"language_model"})
    assert trace.module().shape[:2] == (1, 2)


def test_hierarchical_stages_are_separate_stacks():
    torch.manual_seed(0)
    cfg = transformers.SwinConfig(
        image_size=16, patch_size=2, embed_dim=16, depths=[2, 1], num_heads=[2, 4], window_size=2, mlp_ratio=2.0
    )
    model = transformers.SwinModel(cfg, add_pooling_layer=False).eval()
    trace = check_exact(
        model, {"pixel_values": torch.randn(1, 3, 16, 16)}, modules={"encoder.stage0", "encoder.stage1"}
    )
    assert trace.modules["encoder.stage0"].layers == (0, 1)
    assert trace.modules["encoder.stage0"].shape[0] == 16  # windows of 2×2 patches over the 8×8 grid


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("model.language_model.layers.3.self_attn", ("language_model", 3)),
        ("decoder.block.1.layer.0.SelfAttention", ("decoder", 1)),
        ("decoder.block.1.layer.1.EncDecAttention", ("decoder.cross_attention", 1)),
        ("model.decoder.layers.0.encoder_attn", ("decoder.cross_attention", 0)),
        ("qformer.encoder.layer.1.crossattention.attention", ("qformer.cross_attention", 1)),
        ("model.vision_tower.vision_model.encoder.layers.0.self_attn", ("vision_tower", 0)),
        ("model.visual.blocks.5.attn", ("visual", 5)),
        ("encoder.layers.2.blocks.1.attention", ("encoder.stage2", 1)),
        ("mask_decoder.transformer.layers.0.cross_attn_token_to_image", ("mask_decoder.cross_attn_token_to_image", 0)),
        ("mask_decoder.transformer.final_attn_token_to_image", ("mask_decoder.final_attn_token_to_image", 0)),
        ("layers.1.mlp_input", ("language_model.mlp_input", 1)),
        ("model.layers.4.self_attn.0", ("language_model", 4)),
        ("video_model.vision_model.temporal_layers.1.attention", ("video_model.temporal_layers", 1)),
        ("video_model.auxiliary_layers.0.attention", ("video_model.auxiliary_layers", 0)),
        ("spatial_layers.0.attention", ("spatial_layers", 0)),
        ("encoder.cross_attention.attention.self", ("encoder.cross_attention", 0)),
        ("model.layers.4.self_attn.1", ("language_model.self_attn1", 4)),
    ],
)
def test_module_group_names(path, expected):
    assert module_group(path) == expected


def test_halves_of_an_encoder_decoder_sub_model_are_stacks_of_their_own():
    from mmviz._hf.modules import encoder_decoder_paths

    paths = [
        "model", "model.language_model", "model.language_model.encoder", "model.language_model.decoder",
        "model.encoder", "model.decoder", "text_decoder.bert.encoder",
    ]  # fmt: skip
    halves = encoder_decoder_paths(paths)
    assert halves == {"model", "model.language_model"}
    for path, expected in (
        ("model.language_model.encoder.layers.1.self_attn", ("language_model.encoder", 1)),
        ("model.language_model.decoder.layers.0.self_attn", ("language_model.decoder", 0)),
        ("model.language_model.decoder.layers.0.encoder_attn", ("language_model.decoder.cross_attention", 0)),
        ("model.encoder.layers.0.self_attn", ("encoder", 0)),  # a top-level model's halves keep their names
        ("model.decoder.layers.0.encoder_attn", ("decoder.cross_attention", 0)),
        ("model.vision_tower.vision_model.encoder.layers.0.self_attn", ("vision_tower", 0)),
    ):
        assert module_group(path, halves=halves) == expected, path


def test_layers_of_different_shapes_split_into_runs():
    from mmviz.capture._build import _shape_runs

    a, b = np.zeros((1, 2, 4, 4)), np.zeros((1, 4, 2, 2))
    runs = _shape_runs("backbone", [0, 1, 2], [a, a, b])
    assert [(name, layers) for name, layers, _ in runs] == [("backbone.0-1", [0, 1]), ("backbone.2", [2])]
    assert _shape_runs("encoder", [0, 1], [a, a])[0][0] == "encoder"
