"""mmviz.capture on models whose attention modules compute attention themselves (no AttentionInterface).

One model per kind: decoder LM (BLOOM), encoder (DeBERTa-v2), encoder-decoder (FSMT), vision
(Data2Vec-Vision, whose sdpa class is swapped for its eager base), BLIP (text and vision towers), and
Longformer's sliding window. For each: the stored trace equals what the same weights built with
``attn_implementation="eager"`` return with ``output_attentions=True`` (≤ 1e-3, float16), the outputs
equal the uncaptured run and hold no attentions unless asked for, and the model is restored after the
block, also when it raises.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import mmviz  # noqa: E402
from mmviz.capture._legacy import unband  # noqa: E402
from mmviz.errors import CaptureError  # noqa: E402

SMALL = {"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 37, "vocab_size": 64}


def eager_twin(model: Any) -> Any:
    """The same weights in a model built with ``attn_implementation="eager"`` (legacy classes pick at build)."""
    config = copy.deepcopy(model.config)
    pending = [config]
    while pending:
        c = pending.pop()
        c._attn_implementation_internal = "eager"
        pending.extend(getattr(c, k) for k in c.sub_configs if getattr(c, k, None) is not None)
    twin = type(model)(config).eval()
    twin.load_state_dict(model.state_dict())
    return twin


def eager_attentions(model: Any, inputs: dict[str, Any]) -> dict[str, tuple[torch.Tensor, ...]]:
    with torch.no_grad():
        out = eager_twin(model)(**inputs, output_attentions=True)
    found = {}
    for key, value in out.items():
        fields = value.items() if hasattr(value, "items") else [("", value)]
        for inner, tensors in fields:
            name = f"{key}.{inner}" if inner else key
            if name.endswith("attentions") and tensors and isinstance(tensors[0], torch.Tensor):
                found[name] = tensors
    return found


def state(model: Any) -> tuple[Any, ...]:
    """What a capture changes on a model: attention implementations, module classes, mmviz's hooks."""
    configs = [m.config for m in model.modules() if hasattr(m, "config")]
    return (
        [c._attn_implementation_internal for c in configs],
        [type(m) for m in model.modules()],
        [h for m in model.modules() for h in [*m._forward_hooks.values(), *m._forward_pre_hooks.values()] if ours(h)],
    )


def ours(hook: Any) -> bool:
    """Whether a hook comes from mmviz (transformers keeps hooks of its own once attentions were asked for)."""
    return str(getattr(hook, "__module__", "")).startswith("mmviz")


def check(model: Any, inputs: dict[str, Any], expected: dict[str, str]) -> mmviz.AttentionTrace:
    """Captures one forward; ``expected`` maps an eager ``*attentions`` field to the trace's stack name.

    Also checks that the model is restored after a block that raises.
    """
    before = state(model)
    with torch.no_grad():
        reference = model(**inputs)
        with mmviz.capture(model) as cap:
            out = model(**inputs)
        assert state(model) == before
        with pytest.raises(RuntimeError, match="boom"), mmviz.capture(model):
            model(**inputs)
            raise RuntimeError("boom")
    assert state(model) == before
    assert list(out.keys()) == list(reference.keys())  # no attentions handed back unasked
    for key, value in reference.items():
        if isinstance(value, torch.Tensor):
            assert torch.allclose(out[key], value, atol=1e-5), key
    eager = eager_attentions(model, inputs)
    assert set(eager) == set(expected)
    trace = cap.attention
    assert set(trace.modules) == set(expected.values())
    for field, stack in expected.items():
        module = trace.modules[stack]
        assert module.layers == tuple(range(len(eager[field])))
        for layer, probs in enumerate(eager[field]):
            stored = module.dense[:, layer].astype(np.float32)
            assert np.abs(stored - probs.numpy()).max() <= 1e-3, (field, layer)
    return trace


def ids(batch: int = 1, length: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randint(5, 60, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def bloom() -> Any:
    torch.manual_seed(0)
    cfg = transformers.BloomConfig(hidden_size=32, n_layer=2, n_head=4, vocab_size=64, pad_token_id=0)
    return transformers.BloomForCausalLM(cfg).eval()


def test_decoder_lm_bloom(bloom: Any) -> None:
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :2] = 0  # left padding
    trace = check(bloom, {"input_ids": ids(2), "attention_mask": mask}, {"attentions": "language_model"})
    assert list(trace.tokens("language_model", 1).kind[:2]) == ["pad", "pad"]


def test_generate_bloom_gives_one_causal_matrix(bloom: Any) -> None:
    prompt = ids(1, 5)
    with torch.no_grad():
        plain = bloom.generate(input_ids=prompt, max_new_tokens=3, do_sample=False)
        with mmviz.capture(bloom) as cap:
            sequences = bloom.generate(input_ids=prompt, max_new_tokens=3, do_sample=False)
        full = eager_twin(bloom)(input_ids=sequences[:, :-1], output_attentions=True).attentions
    assert torch.equal(sequences, plain)
    for layer in range(2):
        assert np.abs(cap.attention.probs(layers=[layer])[0] - full[layer][0].numpy()).max() <= 1e-3


def test_asked_attentions_tuples_filters_and_qk(bloom: Any) -> None:
    inputs = {"input_ids": ids()}
    with torch.no_grad():
        plain = bloom(**inputs, return_dict=False)
        eager = eager_twin(bloom)(**inputs, output_attentions=True)
        with mmviz.capture(bloom, layers=[1], heads=[0, 2]) as cap:
            asked = bloom(**inputs, output_attentions=True)
            as_tuple = bloom(**inputs, return_dict=False)
        with pytest.warns(UserWarning, match="store='qk' cannot apply"), mmviz.capture(bloom, store="qk") as qk:
            bloom(**inputs)
    assert all(torch.allclose(a, b) for a, b in zip(asked.attentions, eager.attentions))
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(plain)
    assert torch.allclose(as_tuple[0], plain[0], atol=1e-5)
    module = cap.traces[0].module()
    assert module.layers == (1,) and module.heads == (0, 2)
    assert np.abs(module.dense[0, 0] - eager.attentions[1][0, [0, 2]].numpy()).max() <= 1e-3
    assert qk.attention.module().dense is not None


def test_nested_captures_share_the_hooks(bloom: Any) -> None:
    before = state(bloom)
    with torch.no_grad(), mmviz.capture(bloom) as outer:
        with mmviz.capture(bloom, layers=[0]) as inner:
            out = bloom(input_ids=ids())
        assert state(bloom) != before  # the outer capture is still active
    assert state(bloom) == before
    assert "attentions" not in out
    assert inner.attention.module().layers == (0,) and outer.attention.module().layers == (0, 1)
    assert np.array_equal(inner.attention.probs(layers=[0]), outer.attention.probs(layers=[0]))


def test_restored_after_an_exception_in_the_block(bloom: Any) -> None:
    before = state(bloom)
    with pytest.raises(RuntimeError, match="boom"), mmviz.capture(bloom):
        bloom(input_ids=ids())
        raise RuntimeError("boom")
    assert state(bloom) == before
    with torch.no_grad():
        assert "attentions" not in bloom(input_ids=ids())


def test_encoder_deberta_v2() -> None:
    torch.manual_seed(0)
    cfg = transformers.DebertaV2Config(
        num_hidden_layers=2, relative_attention=True, pos_att_type=["p2c", "c2p"], **SMALL
    )
    model = transformers.DebertaV2Model(cfg).eval()
    check(model, {"input_ids": ids(2)}, {"attentions": "encoder"})


def test_encoder_decoder_fsmt() -> None:
    torch.manual_seed(0)
    cfg = transformers.FSMTConfig(
        langs=["en", "de"], src_vocab_size=64, tgt_vocab_size=64, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
    )  # fmt: skip
    model = transformers.FSMTModel(cfg).eval()
    inputs = {"input_ids": ids(1, 7), "decoder_input_ids": ids(1, 4, seed=1)}
    expected = {
        "encoder_attentions": "encoder",
        "decoder_attentions": "decoder",
        "cross_attentions": "decoder.cross_attention",
    }
    trace = check(model, inputs, expected)
    assert trace.modules["decoder.cross_attention"].shape[-2:] == (4, 7)


def test_vision_data2vec_swaps_its_sdpa_class_for_the_eager_one() -> None:
    torch.manual_seed(0)
    cfg = transformers.Data2VecVisionConfig(num_hidden_layers=2, image_size=32, patch_size=8, **SMALL)
    model = transformers.Data2VecVisionModel(cfg).eval()
    assert "Sdpa" in type(model.encoder.layer[0].attention.attention).__name__
    trace = check(model, {"pixel_values": torch.randn(1, 3, 32, 32)}, {"attentions": "encoder"})
    assert trace.modules["encoder"].shape[-2:] == (17, 17)  # [CLS] + 4×4 patches


def test_blip_text_and_vision_towers() -> None:
    torch.manual_seed(0)
    cfg = transformers.BlipConfig(
        text_config={"num_hidden_layers": 2, **SMALL},
        vision_config={"num_hidden_layers": 2, "image_size": 32, "patch_size": 8, **SMALL},
        projection_dim=16,
    )
    model = transformers.BlipModel(cfg).eval()
    inputs = {"input_ids": ids(2), "pixel_values": torch.randn(2, 3, 32, 32)}
    expected = {"text_model_output.attentions": "text_model", "vision_model_output.attentions": "vision_model"}
    check(model, inputs, expected)


def test_longformer_sliding_window_laid_out_over_key_positions() -> None:
    torch.manual_seed(0)
    cfg = transformers.LongformerConfig(num_hidden_layers=1, attention_window=4, **SMALL)
    model = transformers.LongformerModel(cfg).eval()
    with torch.no_grad(), mmviz.capture(model) as cap:
        out = model(input_ids=ids(1, 10), output_attentions=True)
    band = out.attentions[0]  # [batch, heads, query, 2·2 + 1]: query i's keys i-2 … i+2
    stored = cap.attention.probs(layers=[0])[0]
    for i in range(10):
        for j in range(5):
            if 0 <= i - 2 + j < 10:
                assert abs(stored[:, i, i - 2 + j] - band[0, :, i, j].numpy()).max() <= 1e-3
    assert np.allclose(stored.sum(-1), 1, atol=2e-3)
    assert torch.equal(unband(torch.ones(1, 1, 3, 3), 1)[0, 0], torch.tensor([[1.0, 1, 0], [1, 1, 1], [0, 1, 1]]))
    with pytest.raises(CaptureError, match="global tokens"), torch.no_grad(), mmviz.capture(model):
        model(input_ids=ids(1, 10), global_attention_mask=torch.tensor([[1] + [0] * 9]))


def test_five_axis_attention_folds_windows_into_the_batch_and_names_streams() -> None:
    from mmviz.capture._legacy import _fold, _stream

    module = torch.nn.Module()
    module.num_heads = 2  # type: ignore[assignment]
    windows = torch.arange(2 * 2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 2, 3, 4, 4)  # [b, heads, win, q, k]
    folded = _fold(module, windows)
    assert folded is not None and folded.shape == (6, 2, 4, 4)
    assert torch.equal(folded[1 * 3 + 2, 1], windows[1, 1, 2])  # batch 1, window 2, head 1
    module.ngram = 2  # type: ignore[assignment]
    streams = windows[:, :, :2]  # [b, ngram, heads, q, k] with ngram == heads: the ngram attribute decides
    assert torch.equal(_fold(module, streams)[1 * 2 + 0, 1], streams[1, 0, 1])  # type: ignore[index]
    assert _stream("decoder_ngram_attentions") == "ngram"
    assert _stream("attentions") is None and _stream("cross_attentions") is None


def test_blip_generate_which_calls_its_sub_models_only() -> None:
    torch.manual_seed(0)
    text = {"num_hidden_layers": 2, **SMALL, "bos_token_id": 5, "eos_token_id": 6, "pad_token_id": 0, "sep_token_id": 6}
    vision = {"num_hidden_layers": 2, "image_size": 32, "patch_size": 8, **SMALL}
    model = transformers.BlipForConditionalGeneration(transformers.BlipConfig(text_config=text, vision_config=vision))
    model.eval()
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        plain = model.generate(pixel_values=pixels, input_ids=ids(1, 4), max_new_tokens=3, do_sample=False)
        with mmviz.capture(model) as gen:
            sequences = model.generate(pixel_values=pixels, input_ids=ids(1, 4), max_new_tokens=3, do_sample=False)
        with mmviz.capture(model) as forced:  # teacher-forced over what was generated
            model(pixel_values=pixels, input_ids=sequences[:, :-1])
    assert torch.equal(sequences, plain)
    assert set(gen.attention.modules) == {"vision_model", "text_decoder", "text_decoder.cross_attention"}
    for stack in gen.attention.modules:
        got, want = gen.attention.modules[stack].dense, forced.attention.modules[stack].dense
        assert got.shape == want.shape and np.abs(got.astype(np.float32) - want).max() <= 2e-3, stack


def test_perceiver_latents_and_their_cross_attention() -> None:
    torch.manual_seed(0)
    cfg = transformers.PerceiverConfig(
        num_latents=8, d_latents=32, d_model=32, num_blocks=1, num_self_attends_per_block=2,
        num_self_attention_heads=2, num_cross_attention_heads=2, vocab_size=64,
    )  # fmt: skip
    model = transformers.PerceiverModel(cfg).eval()
    expected = {"attentions": "encoder", "cross_attentions": "encoder.cross_attention"}
    trace = check(model, {"inputs": torch.randn(1, 7, 32)}, expected)
    assert trace.modules["encoder.cross_attention"].shape[-2:] == (8, 7)  # latents × inputs


def test_gpt_neo_local_and_global_layers() -> None:
    torch.manual_seed(0)
    cfg = transformers.GPTNeoConfig(
        hidden_size=32, num_layers=2, attention_types=[[["global", "local"], 1]], num_heads=4, vocab_size=64,
        window_size=4, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    trace = check(transformers.GPTNeoModel(cfg).eval(), {"input_ids": ids(1, 9)}, {"attentions": "language_model"})
    local = trace.probs(layers=[1])[0]
    assert np.all(local[:, 8, :5] == 0) and local[:, 8, 5:].sum(-1) == pytest.approx(1, abs=2e-3)  # window 4
