from __future__ import annotations

import numpy as np
import pytest

from mmviz.data import AttentionTrace, ModuleAttention, TokenTable


def test_probs_shape_and_default_module(trace):
    assert trace.default_module == "language_model"
    p = trace.probs(batch_index=1)
    assert p.shape == (3, 4, 9, 9)
    assert p.dtype == np.float32
    assert np.allclose(p.sum(-1), 1.0, atol=1e-2)


def test_layer_and_head_selection_uses_model_indices(trace):
    p = trace.probs(layers=[2], heads=[1, 3])
    assert p.shape == (1, 2, 9, 9)
    assert np.array_equal(p, trace.module().dense[0, 2][[1, 3]][None].astype(np.float32))
    with pytest.raises(KeyError, match="layer 7 was not captured"):
        trace.probs(layers=[7])


def test_batch_index_out_of_range(trace):
    with pytest.raises(IndexError, match="batch_index 5"):
        trace.probs(batch_index=5)


def test_unknown_module(trace):
    with pytest.raises(KeyError, match="captured modules"):
        trace.probs(module="vision_tower")


def test_rows_and_thumbnails(trace):
    full = trace.probs(layers=[1], heads=[2])[0, 0]
    assert np.allclose(trace.rows([3, 4], layer=1, head=2), full[[3, 4]])
    thumbs = trace.thumbnails(size=3)
    assert thumbs.shape == (3, 4, 3, 3)
    assert np.isclose(thumbs[1, 2, 0, 0], full[:3, :3].mean(), atol=1e-3)


def test_reductions_through_trace(trace):
    assert trace.head_mean().shape == (3, 9, 9)
    assert trace.head_max().shape == (3, 9, 9)
    assert trace.rollout().shape == (3, 9, 9)
    merged, q_words, _ = trace.word_probs()
    assert merged.shape == (3, 4, 8, 8)
    assert q_words[-1] == " circle"


def test_tables_must_match_lengths(image_table):
    probs = np.zeros((1, 1, 1, 4, 4), np.float16)
    m = ModuleAttention("language_model", (0,), (0,), "text", "text", dense=probs)
    with pytest.raises(ValueError, match="does not have 4 positions"):
        AttentionTrace({"language_model": m}, {"text": [image_table]})


def test_default_module_is_the_only_one():
    t = TokenTable.build(["a", "b"])
    m = ModuleAttention("encoder", (0,), (0,), "text", "text", dense=np.full((1, 1, 1, 2, 2), 0.5, np.float16))
    trace = AttentionTrace({"encoder": m}, {"text": [t]})
    assert trace.default_module == "encoder"
    assert "encoder: 1 layers × 1 heads" in repr(trace)


def test_module_repr_summarises_instead_of_printing_arrays():
    m = ModuleAttention("encoder", (0, 3), (1,), "text", "text", dense=np.full((1, 2, 1, 300, 300), 0.5, np.float16))
    text = repr(m)
    assert text == (
        "ModuleAttention('encoder', batch=1, layers=[0, 3], heads=[1], 300×300, store='dense', "
        "query_table='text', key_table='text')"
    )
