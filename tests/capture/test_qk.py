"""``store="qk"``: queries and keys captured from real (tiny) models recompute eager attention exactly."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import mmviz  # noqa: E402
from mmviz.errors import CaptureError  # noqa: E402

torch.set_num_threads(1)
TOL = 1e-5
N = 10


def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=32, vocab_size=64, n_positions=64, bos_token_id=0, eos_token_id=0, pad_token_id=0
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


def llama_gqa():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval()


def gemma2_sliding():
    """Alternating sliding-window (4) and full layers, with logit soft-capping."""
    torch.manual_seed(0)
    cfg = transformers.Gemma2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, sliding_window=4, attn_logit_softcapping=2.0, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, layer_types=["sliding_attention", "full_attention"],
    )  # fmt: skip
    return transformers.Gemma2ForCausalLM(cfg).eval()


MODELS = {"gpt2": gpt2, "llama_gqa": llama_gqa}


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    return MODELS[request.param]()


def inputs(padding: str | None, n: int = N, batch: int = 2):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 64, (batch, n), generator=g)
    mask = torch.ones(batch, n, dtype=torch.long)
    if padding == "left":
        mask[1, :3] = 0
    elif padding == "right":
        mask[1, -3:] = 0
    return ids, mask


def eager(model, **kw):
    """``[batch, layers, heads, query, key]`` float32 of ``attn_implementation="eager"``."""
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(**kw, output_attentions=True)
    finally:
        model.set_attn_implementation(before)
    return torch.stack(out.attentions, dim=1).float().numpy()


def block_means(p, size):
    nq, nk = p.shape[-2:]
    qe = np.linspace(0, nq, min(size, nq) + 1).astype(int)
    ke = np.linspace(0, nk, min(size, nk) + 1).astype(int)
    out = np.zeros((*p.shape[:-2], qe.size - 1, ke.size - 1))
    for i in range(qe.size - 1):
        for j in range(ke.size - 1):
            out[..., i, j] = p[..., qe[i] : qe[i + 1], ke[j] : ke[j + 1]].mean(axis=(-1, -2))
    return out


@pytest.mark.parametrize("padding", [None, "left", "right"])
def test_qk_recomputes_eager_probabilities(model, padding):
    ids, mask = inputs(padding)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        with mmviz.capture(model, store="qk") as cap:
            out = model(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert (out - ref)[real].abs().max() <= TOL
    trace = cap.attention
    m = trace.module()
    assert m.store == "qk" and m.shape == (2, 2, 4, N, N)
    want = eager(model, input_ids=ids, attention_mask=mask)
    for b in range(2):
        p = trace.probs(batch_index=b)
        assert p.dtype == np.float32
        assert np.abs(p - want[b]).max() <= TOL
        rows = trace.rows([0, 4, N - 1], batch_index=b, layer=1, head=3)
        assert np.abs(rows - want[b, 1, 3][[0, 4, N - 1]]).max() <= TOL
        for size in (3, 4, 64):
            assert np.abs(trace.thumbnails(batch_index=b, size=size) - block_means(want[b], size)).max() <= TOL
    # a batch without padding keeps no mask at all: the causal rule is enough
    assert (m.qk.mask is None) == (padding is None)


def test_qk_matches_the_dense_store(model):
    ids, mask = inputs("left")
    with torch.no_grad(), mmviz.capture(model, store="qk") as qk_cap:
        model(input_ids=ids, attention_mask=mask)
    with torch.no_grad(), mmviz.capture(model, store="dense") as dense_cap:
        model(input_ids=ids, attention_mask=mask)
    qk, dense = qk_cap.attention, dense_cap.attention
    assert dense.module().store == "dense"
    for b in range(2):
        assert np.abs(qk.probs(batch_index=b) - dense.probs(batch_index=b)).max() <= 1e-3  # float16 store
        assert np.abs(qk.thumbnails(batch_index=b, size=4) - dense.thumbnails(batch_index=b, size=4)).max() <= 1e-3
    assert qk.tokens(batch_index=1).kind.tolist()[:3] == ["pad"] * 3


def test_sliding_window_layers_and_softcap():
    model = gemma2_sliding()
    ids, mask = inputs("left", n=9)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        with mmviz.capture(model, store="qk") as cap:
            out = model(input_ids=ids, attention_mask=mask).logits
    assert (out - ref)[mask.bool()].abs().max() <= TOL
    qk = cap.attention.module().qk
    assert qk.softcap == 2.0
    assert qk.mask is not None and qk.mask.shape[:2] == (2, 2)  # one mask per layer: window and full
    want = eager(model, input_ids=ids, attention_mask=mask)
    for b in range(2):
        assert np.abs(cap.attention.probs(batch_index=b) - want[b]).max() <= TOL
    # the sliding layer hides keys more than 4 back, the full layer does not
    p = cap.attention.probs(batch_index=0)
    assert p[0, :, 8, :5].max() == 0 and p[1, :, 8, :5].min() > 0


def test_prefix_lm_mask():
    """PaliGemma: image and prompt attend bidirectionally, the suffix causally."""
    torch.manual_seed(0)
    cfg = transformers.PaliGemmaConfig(
        text_config={
            "model_type": "gemma", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "pad_token_id": 0,
        },
        vision_config={
            "model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "image_size": 16, "patch_size": 8,
        },
        image_token_index=5, projection_dim=32,
    )  # fmt: skip
    model = transformers.PaliGemmaForConditionalGeneration(cfg).eval()
    ids = torch.tensor([[5] * 4 + [1, 7, 8, 9, 10, 11, 12]])
    kw = {
        "input_ids": ids, "token_type_ids": torch.tensor([[0] * 8 + [1] * 3]), "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)),
    }  # fmt: skip
    with torch.no_grad():
        ref = model(**kw).logits
        with mmviz.capture(model, store="qk", modules=["language_model"]) as cap:
            out = model(**kw).logits
    assert (out - ref).abs().max() <= TOL
    p = cap.attention.probs()
    assert np.abs(p - eager(model, **kw)[0]).max() <= TOL
    assert p[:, :, 0, 1:8].min() > 0 and p[:, :, 8, 9:].max() == 0  # prefix sees ahead, suffix does not


@pytest.mark.parametrize("padding", [None, "left"])
def test_generate_under_qk(model, padding):
    ids, mask = inputs(padding, n=6)
    with torch.no_grad(), mmviz.capture(model, store="qk") as cap:
        seq = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    fed = seq.shape[1] - 1  # the last token is produced but never fed back
    trace = cap.attention
    assert trace.module().store == "qk" and trace.module().shape[3:] == (fed, fed)
    assert trace.tokens().generated.tolist() == [False] * 6 + [True] * (fed - 6)
    full_mask = torch.cat([mask, torch.ones(2, fed - 6, dtype=torch.long)], dim=1)
    positions = (full_mask.cumsum(-1) - 1).masked_fill(full_mask == 0, 1)  # as generate() makes them
    want = eager(model, input_ids=seq[:, :fed], attention_mask=full_mask, position_ids=positions)
    for b in range(2):
        assert np.abs(trace.probs(batch_index=b) - want[b]).max() <= TOL
    # decoding steps store only their new keys: every key is kept once
    steps = next(iter(cap.recorder.runs[-1].qk.values()))
    assert all(s["key"].untyped_storage().nbytes() <= s["key"].element_size() for s in steps[1:])
    assert sum(s.get("key_new", s["key"]).shape[2] for s in steps) == fed


def test_qk_trace_round_trips_through_a_file(model, tmp_path):
    ids, mask = inputs("left")
    with torch.no_grad(), mmviz.capture(model, store="qk") as cap:
        model(input_ids=ids, attention_mask=mask)
    cap.attention.save(tmp_path / "qk.mmviz")
    back = mmviz.load(tmp_path / "qk.mmviz")
    assert back.module().store == "qk"
    assert back.module().qk.group == cap.attention.module().qk.group
    for b in range(2):
        np.testing.assert_array_equal(back.probs(batch_index=b), cap.attention.probs(batch_index=b))
        np.testing.assert_array_equal(
            back.thumbnails(batch_index=b, size=4), cap.attention.thumbnails(batch_index=b, size=4)
        )
    assert back.tokens(batch_index=1).kind.tolist() == cap.attention.tokens(batch_index=1).kind.tolist()


@pytest.mark.parametrize(("threshold", "store"), [(N, "qk"), (N + 1, "dense")])
def test_auto_store_switches_at_the_threshold(model, threshold, store):
    ids, mask = inputs(None)
    with torch.no_grad(), mmviz.capture(model, qk_threshold=threshold) as cap:
        model(input_ids=ids, attention_mask=mask)
    assert cap.attention.module().store == store
    want = eager(model, input_ids=ids, attention_mask=mask)
    assert np.abs(cap.attention.probs() - want[0]).max() <= (TOL if store == "qk" else 1e-3)


def test_heads_and_layers_filters_under_qk():
    model = llama_gqa()  # heads 0,1 use key head 0; heads 2,3 key head 1
    ids, mask = inputs("left")
    with torch.no_grad(), mmviz.capture(model, store="qk", layers=[1], heads=[1, 3]) as cap:
        model(input_ids=ids, attention_mask=mask)
    m = cap.attention.module()
    assert m.layers == (1,) and m.heads == (1, 3) and m.shape[1:3] == (1, 2)
    assert m.qk.key.shape[2] == 2  # grouped keys stored once, not per query head
    want = eager(model, input_ids=ids, attention_mask=mask)
    for b in range(2):
        p = cap.attention.probs(batch_index=b, layers=[1], heads=[1, 3])
        assert np.abs(p - want[b][[1]][:, [1, 3]]).max() <= TOL
        row = cap.attention.rows([N - 1], batch_index=b, layer=1, head=3)
        assert np.abs(row - want[b, 1, 3, [N - 1]]).max() <= TOL
    with pytest.raises(KeyError, match="head 2"):
        cap.attention.probs(heads=[2])


def test_bfloat16_model_stores_float32_queries():
    model = llama_gqa().to(torch.bfloat16)
    ids, mask = inputs("right")
    with torch.no_grad(), mmviz.capture(model, store="qk") as cap:
        model(input_ids=ids, attention_mask=mask)
    qk = cap.attention.module().qk
    assert qk.query.dtype == np.float32 and qk.key.dtype == np.float32
    want = eager(model, input_ids=ids, attention_mask=mask)
    for b in range(2):
        assert np.abs(cap.attention.probs(batch_index=b) - want[b]).max() <= 2e-2  # eager rounds logits to bf16


def test_position_bias_cannot_be_recomputed():
    torch.manual_seed(0)
    cfg = transformers.T5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2,
        decoder_start_token_id=0, pad_token_id=0,
    )  # fmt: skip
    t5 = transformers.T5Model(cfg).eval()
    ids = torch.randint(1, 64, (1, 5))
    with pytest.raises(CaptureError, match="position_bias"), torch.no_grad(), mmviz.capture(t5, store="qk"):
        t5(input_ids=ids, decoder_input_ids=ids)


@pytest.mark.cuda
@pytest.mark.parametrize("store", ["dense", "qk"])
def test_capture_on_gpu(store):
    cpu_model = llama_gqa()
    model = llama_gqa().to("cuda")
    ids, mask = inputs("left")
    with torch.no_grad():
        ref = model(input_ids=ids.cuda(), attention_mask=mask.cuda()).logits
        with mmviz.capture(model, store=store) as cap:
            out = model(input_ids=ids.cuda(), attention_mask=mask.cuda()).logits
    assert out.device.type == "cuda"
    assert (out - ref)[mask.cuda().bool()].abs().max() <= TOL
    trace = cap.attention
    m = trace.module()
    arrays = [m.dense] if m.dense is not None else [m.qk.query, m.qk.key]
    assert all(isinstance(a, np.ndarray) for a in arrays)  # numpy on CPU, viewable anywhere
    want = eager(cpu_model, input_ids=ids, attention_mask=mask)
    for b in range(2):
        assert np.abs(trace.probs(batch_index=b) - want[b]).max() <= (1e-4 if store == "qk" else 1e-3)
    assert torch.cuda.memory_allocated() < 64 * 2**20
