"""QKAttention on hand-made arrays: exact softmax recomputation, masks, grouped heads, soft-capping, chunking."""

from __future__ import annotations

import numpy as np
import pytest

from mmviz.data import AttentionTrace, ModuleAttention, TokenTable
from mmviz.data import qk as qk_module
from mmviz.data.qk import QKAttention
from mmviz.errors import BudgetError

RNG = np.random.default_rng(0)


def reference(q, k, scaling, allowed, softcap=None):
    """Eager attention: ``softmax(logits + additive mask)``; a row with no allowed key is uniform."""
    logits = (q.astype(np.float64) @ k.astype(np.float64).T) * scaling
    if softcap:
        logits = np.tanh(logits / softcap) * softcap
    logits = np.where(allowed, logits, np.finfo(np.float32).min)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def block_means(p, size):
    nq, nk = p.shape[-2:]
    qe = np.linspace(0, nq, min(size, nq) + 1).astype(int)
    ke = np.linspace(0, nk, min(size, nk) + 1).astype(int)
    out = np.zeros((*p.shape[:-2], qe.size - 1, ke.size - 1))
    for i in range(qe.size - 1):
        for j in range(ke.size - 1):
            out[..., i, j] = p[..., qe[i] : qe[i + 1], ke[j] : ke[j + 1]].mean(axis=(-1, -2))
    return out


def make(b=2, layers=2, heads=4, kv_heads=2, nq=11, nk=11, d=8, dtype=np.float32, **kw):
    q = RNG.normal(size=(b, layers, heads, nq, d)).astype(dtype)
    k = RNG.normal(size=(b, layers, kv_heads, nk, d)).astype(dtype)
    args = {
        "query": q,
        "key": k,
        "scaling": np.asarray([0.5, 0.25, 0.7][:layers]),
        "mask": None,
        "causal": True,
        "head_index": np.arange(heads),
        "group": heads // kv_heads,
    }
    args.update(kw)
    return QKAttention(**args)


def expected(a: QKAttention, allowed_of_layer, softcap=None):
    """``[batch, layers, heads, query, key]`` from the definition, with the key head of each query head."""
    b, n_layers, n_heads, nq, nk = a.shape
    out = np.zeros((b, n_layers, n_heads, nq, nk))
    for bi in range(b):
        for li in range(n_layers):
            allowed = allowed_of_layer(bi, li)
            for hi in range(n_heads):
                kh = int(a.head_index[hi]) // a.group
                out[bi, li, hi] = reference(a.query[bi, li, hi], a.key[bi, li, kh], a.scaling[li], allowed, softcap)
    return out


def causal_allowed(nq, nk):
    return np.arange(nk)[None, :] <= np.arange(nq)[:, None] + nk - nq


def check_all_accessors(a: QKAttention, want: np.ndarray, tol: float = 1e-5) -> None:
    b, n_layers, n_heads, nq, nk = a.shape
    for bi in range(b):
        dense = a.dense(bi, range(n_layers), range(n_heads))
        assert dense.dtype == np.float32
        np.testing.assert_allclose(dense, want[bi], atol=tol)
        np.testing.assert_allclose(a.rows(bi, 1, 2, [0, nq - 1, 3]), want[bi, 1, 2][[0, nq - 1, 3]], atol=tol)
        np.testing.assert_allclose(a.columns(bi, 0, 3, [nk - 1, 0]), want[bi, 0, 3][:, [nk - 1, 0]], atol=tol)
        np.testing.assert_allclose(a.block(bi, 1, 1, slice(2, 7), slice(1, 5)), want[bi, 1, 1, 2:7, 1:5], atol=tol)
        for size in (4, 5, 64):
            np.testing.assert_allclose(a.thumbnails(bi, size), block_means(want[bi], size), atol=tol)


def test_causal_without_mask():
    a = make()
    want = expected(a, lambda b, li: causal_allowed(11, 11))
    check_all_accessors(a, want)
    assert np.allclose(np.triu(want, 1), 0)


def test_causal_with_fewer_queries_than_keys():
    a = make(nq=4, nk=9)
    check_all_accessors(a, expected(a, lambda b, li: causal_allowed(4, 9)))


def test_full_attention_without_mask():
    a = make(causal=False, nq=7, nk=13)
    check_all_accessors(a, expected(a, lambda b, li: np.ones((7, 13), bool)))


def test_packed_mask_with_padding_rows_and_windows():
    nq = nk = 21
    allowed = np.zeros((2, nq, nk), bool)
    allowed[0] = causal_allowed(nq, nk) & (np.arange(nk)[None, :] > np.arange(nq)[:, None] - 5)  # window of 5
    allowed[1] = causal_allowed(nq, nk)
    allowed[1, :, :6] = False  # left padding: keys 0-5 hidden, rows 0-5 see nothing
    a = make(nq=nq, nk=nk, mask=np.packbits(allowed, axis=-1), causal=False)
    want = expected(a, lambda b, li: allowed[b])
    check_all_accessors(a, want)
    # a query that may see no key gets a uniform row, as eager's additive mask gives
    np.testing.assert_allclose(a.rows(1, 0, 0, [0, 5]), np.full((2, nk), 1 / nk))
    assert np.allclose(a.rows(0, 0, 0, range(nq)).sum(-1), 1)


def test_per_layer_masks():
    nq = nk = 13
    full = causal_allowed(nq, nk)
    window = full & (np.arange(nk)[None, :] > np.arange(nq)[:, None] - 3)
    per_layer = np.stack([np.stack([window, full])] * 2)  # [batch, layers, query, key]
    a = make(nq=nq, nk=nk, mask=np.packbits(per_layer, axis=-1), causal=False)
    check_all_accessors(a, expected(a, lambda b, li: per_layer[b, li]))


def test_grouped_query_heads_map_to_their_key_head():
    # stored heads 1 and 3 of a model with 4 query heads and 2 key heads: key heads 0 and 1
    a = make(heads=2, kv_heads=2, head_index=np.array([1, 3]), group=2)
    want = expected(a, lambda b, li: causal_allowed(11, 11))
    assert a._key_head(0) == 0 and a._key_head(1) == 1
    np.testing.assert_allclose(a.dense(0, [0, 1], [0, 1]), want[0], atol=1e-5)
    q0 = a.query[0, 0, 1]
    wrong = reference(q0, a.key[0, 0, 0], a.scaling[0], causal_allowed(11, 11))
    assert not np.allclose(a.rows(0, 0, 1, range(11)), wrong, atol=1e-3)


def test_softcap():
    a = make(softcap=2.0, scaling=np.asarray([3.0, 2.0]))
    want = expected(a, lambda b, li: causal_allowed(11, 11), softcap=2.0)
    check_all_accessors(a, want)
    plain = expected(make(scaling=np.asarray([3.0, 2.0])), lambda b, li: causal_allowed(11, 11))
    assert not np.allclose(want, plain, atol=1e-3)


def test_float16_storage():
    a = make(dtype=np.float16)
    check_all_accessors(a, expected(a, lambda b, li: causal_allowed(11, 11)))


def test_chunked_paths_equal_one_chunk(monkeypatch):
    nq = nk = 37
    allowed = causal_allowed(nq, nk) & (np.arange(nk)[None, :] > np.arange(nq)[:, None] - 9)
    allowed = np.stack([allowed, allowed])
    allowed[1, :, :3] = False  # item 1: left padding, rows 0-2 see nothing
    a = make(nq=nq, nk=nk, mask=np.packbits(allowed, axis=-1), causal=False)
    want = expected(a, lambda b, li: allowed[b])
    monkeypatch.setattr(qk_module, "_CHUNK_ELEMENTS", 50)  # one or two rows at a time
    check_all_accessors(a, want)
    c = make(nq=nq, nk=nk)
    check_all_accessors(c, expected(c, lambda b, li: causal_allowed(nq, nk)))


def test_thumbnail_subsets():
    a = make()
    full = a.thumbnails(1, 4)
    np.testing.assert_allclose(a.thumbnails(1, 4, layers=[1], heads=[2, 0]), full[[1]][:, [2, 0]], atol=1e-6)
    np.testing.assert_array_equal(a.thumbnails(1, 4, workers=2), full)


def test_dense_has_a_budget(monkeypatch):
    a = make()
    monkeypatch.setattr(qk_module, "DENSE_BUDGET", 11 * 11 * 4 * 2)
    assert a.dense(0, [0], [0, 1]).shape == (1, 2, 11, 11)
    with pytest.raises(BudgetError, match="heads="):
        a.dense(0, [0, 1], [0, 1])


def test_bad_mask_shape_is_refused():
    with pytest.raises(ValueError, match="mask"):
        make(mask=np.zeros((2, 11, 1), np.uint8))


def test_trace_with_qk_module_round_trips(tmp_path):
    import mmviz

    nq = nk = 9
    allowed = np.broadcast_to(causal_allowed(nq, nk), (2, 2, nq, nk)).copy()
    allowed[1, 0, :, :2] = False
    a = make(nq=nq, nk=nk, mask=np.packbits(allowed, axis=-1), causal=False, softcap=5.0, head_index=np.arange(4))
    module = ModuleAttention("language_model", (3, 5), (0, 1, 2, 3), "text", "text", qk=a)
    table = TokenTable.build([f"t{i}" for i in range(nq)])
    trace = AttentionTrace({"language_model": module}, {"text": [table, table]})
    trace.save(tmp_path / "qk.mmviz")
    back = mmviz.load(tmp_path / "qk.mmviz")
    m = back.module()
    assert m.store == "qk" and m.qk is not None and m.qk.softcap == 5.0
    for b in range(2):
        np.testing.assert_array_equal(back.probs(batch_index=b), trace.probs(batch_index=b))
    np.testing.assert_array_equal(back.thumbnails(batch_index=1, size=4), trace.thumbnails(batch_index=1, size=4))
    np.testing.assert_array_equal(
        back.rows([8], batch_index=1, layer=5, head=2), trace.rows([8], batch_index=1, layer=5, head=2)
    )
