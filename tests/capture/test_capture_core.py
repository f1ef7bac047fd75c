"""Core guarantees of mmviz.capture on a tiny GPT-2: exactness, restoration, generation, filters, errors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import mmviz  # noqa: E402
from mmviz.capture import _interface  # noqa: E402
from mmviz.errors import CaptureError  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=3, n_head=4, n_embd=32, vocab_size=64, n_positions=64, bos_token_id=0, eos_token_id=0, pad_token_id=0
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 64, (2, 9), generator=g)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0  # left padding in item 1
    return ids, mask


def eager_attentions(model, **inputs):
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return model(**inputs, output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")


def real_rows(mask):
    return mask.bool()


def test_outputs_equal_and_probs_equal_eager(gpt2, batch):
    ids, mask = batch
    with torch.no_grad():
        ref = gpt2(input_ids=ids, attention_mask=mask).logits
        with mmviz.capture(gpt2) as cap:
            out = gpt2(input_ids=ids, attention_mask=mask, output_attentions=True)
    keep = real_rows(mask)
    assert (out.logits - ref)[keep].abs().max() <= 1e-5
    eager = eager_attentions(gpt2, input_ids=ids, attention_mask=mask)
    for layer in range(3):
        # what the recorder received, before float16 storage
        assert (out.attentions[layer] - eager.attentions[layer]).abs().max() <= 1e-5
        stored = cap.attention.probs(batch_index=1, layers=[layer])[0]
        assert np.abs(stored - eager.attentions[layer][1].numpy()).max() <= 1e-3
    assert cap.attention.module().dense.dtype == np.float16


def test_model_is_restored_even_when_the_block_raises(gpt2, batch):
    ids, mask = batch
    before = gpt2.config._attn_implementation
    hooks = dict(gpt2._forward_pre_hooks)
    with pytest.raises(RuntimeError, match="boom"), mmviz.capture(gpt2):
        gpt2(input_ids=ids, attention_mask=mask)
        raise RuntimeError("boom")
    assert gpt2.config._attn_implementation == before
    assert dict(gpt2._forward_pre_hooks) == hooks
    assert "generate" not in gpt2.__dict__
    assert _interface.ACTIVE.get() in (None, [])
    with torch.no_grad():
        plain = gpt2(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert plain.attentions in ((), None) or all(a is None for a in plain.attentions)


def test_repeated_and_nested_captures(gpt2, batch):
    ids, mask = batch
    with torch.no_grad():
        with mmviz.capture(gpt2) as first:
            gpt2(input_ids=ids, attention_mask=mask)
        with mmviz.capture(gpt2) as outer:
            with mmviz.capture(gpt2, layers=[1]) as inner:
                gpt2(input_ids=ids, attention_mask=mask)
            assert gpt2.config._attn_implementation == _interface.IMPLEMENTATION
    assert gpt2.config._attn_implementation == "sdpa"
    assert np.array_equal(first.attention.module().dense, outer.attention.module().dense)
    assert inner.attention.module().layers == (1,)
    assert np.array_equal(inner.attention.probs(layers=[1]), outer.attention.probs(layers=[1]))


def test_layers_and_heads_filters(gpt2, batch):
    ids, mask = batch
    with torch.no_grad():
        ref = gpt2(input_ids=ids, attention_mask=mask).logits
        with mmviz.capture(gpt2, layers=[2], heads=[0, 3]) as cap:
            out = gpt2(input_ids=ids, attention_mask=mask).logits
    assert (out - ref)[real_rows(mask)].abs().max() <= 1e-5
    m = cap.attention.module()
    assert m.layers == (2,)
    assert m.heads == (0, 3)
    assert m.dense.shape == (2, 1, 2, 9, 9)
    full = eager_attentions(gpt2, input_ids=ids, attention_mask=mask).attentions[2][:, [0, 3]]
    assert np.abs(m.dense[:, 0].astype(np.float32) - full.numpy()).max() <= 1e-3


def test_unknown_module_is_refused_before_the_run(gpt2):
    with pytest.raises(CaptureError, match="no attention stack 'vision'; its stacks are language_model"):
        mmviz.capture(gpt2, modules=["vision"])


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_marked_and_batch_index(gpt2, side):
    ids = torch.randint(1, 64, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    if side == "left":
        mask[0, :2] = 0
    else:
        mask[0, -2:] = 0
    with torch.no_grad(), mmviz.capture(gpt2) as cap:
        gpt2(input_ids=ids, attention_mask=mask)
    kinds = cap.attention.tokens(batch_index=0).kind.tolist()
    assert kinds.count("pad") == 2
    assert (kinds[:2] if side == "left" else kinds[-2:]) == ["pad", "pad"]
    assert "pad" not in cap.attention.tokens(batch_index=1).kind.tolist()
    assert cap.attention.tokens(batch_index=1).token_id.tolist() == ids[1].tolist()


def test_generate_assembles_one_causal_matrix(gpt2):
    prompt = torch.randint(1, 64, (1, 5))
    with torch.no_grad(), mmviz.capture(gpt2) as cap:
        seq = gpt2.generate(input_ids=prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
    trace = cap.attention
    fed = seq.shape[1] - 1  # the last token is produced but never fed back
    table = trace.tokens()
    assert len(table) == fed
    assert table.generated.tolist() == [False] * 5 + [True] * (fed - 5)
    assert table.token_id.tolist() == seq[0, :fed].tolist()
    p = trace.probs()
    assert p.shape == (3, 4, fed, fed)
    assert np.allclose(np.triu(p, 1), 0)
    # every step's rows equal a single forward over the whole sequence
    full = eager_attentions(gpt2, input_ids=seq[:, :fed])
    for layer in range(3):
        assert np.abs(p[layer] - full.attentions[layer][0].numpy()).max() <= 1e-3
    assert trace.info["generate"] is True


def test_several_forward_calls_give_several_traces(gpt2):
    with torch.no_grad(), mmviz.capture(gpt2) as cap:
        gpt2(input_ids=torch.randint(1, 64, (1, 4)))
        gpt2(input_ids=torch.randint(1, 64, (1, 7)))
    assert [t.probs().shape[-1] for t in cap.traces] == [4, 7]
    assert cap.attention is cap.traces[-1]


def test_trace_round_trips_through_a_file(gpt2, batch, tmp_path):
    ids, mask = batch
    with torch.no_grad(), mmviz.capture(gpt2) as cap:
        gpt2(input_ids=ids, attention_mask=mask)
    cap.attention.save(tmp_path / "run.mmviz")
    back = mmviz.load(tmp_path / "run.mmviz")
    assert np.array_equal(back.probs(batch_index=1), cap.attention.probs(batch_index=1))
    assert back.tokens(batch_index=1).kind.tolist() == cap.attention.tokens(batch_index=1).kind.tolist()


def test_not_a_transformers_model():
    with pytest.raises(CaptureError, match="not a transformers model"):
        mmviz.capture(torch.nn.Linear(2, 2))


class HandRolled(transformers.PreTrainedModel):
    """A model that computes attention by hand, outside the AttentionInterface."""

    config_class = transformers.PretrainedConfig

    def __init__(self, config):
        super().__init__(config)
        self.proj = torch.nn.Linear(4, 12)

    def forward(self, x):
        q, k, v = self.proj(x).chunk(3, dim=-1)
        return torch.softmax(q @ k.transpose(-1, -2), -1) @ v


def test_model_without_attention_interface_gets_a_clear_error():
    model = HandRolled(transformers.PretrainedConfig())
    with pytest.raises(CaptureError, match=r"does not route its attention|no attention went through"):
        with mmviz.capture(model):
            model(torch.randn(1, 3, 4))
    with pytest.raises(CaptureError, match="nothing was captured"):
        _ = mmviz.capture(model).attention


def test_capture_without_running_the_model(gpt2):
    with mmviz.capture(gpt2) as cap:
        pass
    with pytest.raises(CaptureError, match="nothing was captured"):
        _ = cap.attention


def test_bad_store_option(gpt2):
    with pytest.raises(ValueError, match="store must be"):
        mmviz.capture(gpt2, store="sparse")


def test_registered_function_is_harmless_outside_captures(gpt2, batch):
    ids, mask = batch
    with torch.no_grad():
        ref = gpt2(input_ids=ids, attention_mask=mask).logits
        with mmviz.capture(gpt2):
            pass
        after = gpt2(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(ref, after)
    assert _interface.IMPLEMENTATION in transformers.AttentionInterface._global_mapping


def test_beam_search_is_refused_before_it_runs_and_the_advice_works():
    from tests.capture import conftest as tiny

    model = tiny.make_llama("llama")
    tok = tiny.word_tokenizer()
    inputs = dict(tok(["a red square"], return_tensors="pt"))
    with torch.no_grad():
        before = model(**inputs).logits
        with pytest.raises(CaptureError, match=r"(?s)not beam search \(num_beams=2\).*model\(input_ids=sequences\)"):
            with mmviz.capture(model, processor=tok):
                model.generate(**inputs, max_new_tokens=2, num_beams=2, do_sample=False, pad_token_id=0)
        assert "generate" not in model.__dict__ and torch.equal(model(**inputs).logits, before)
        sequences = model.generate(**inputs, max_new_tokens=2, num_beams=2, do_sample=False, pad_token_id=0)
        with mmviz.capture(model, processor=tok) as cap:
            model(input_ids=sequences)
    assert cap.attention.probs().shape[-1] == sequences.shape[1]
