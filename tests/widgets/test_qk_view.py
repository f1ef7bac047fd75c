"""An AttentionView of a store="qk" trace serves maps and thumbnails recomputed from queries and keys."""

from __future__ import annotations

import numpy as np
import pytest

from mmviz import _codec
from mmviz.data import AttentionTrace, ModuleAttention, QKAttention, TokenTable
from mmviz.data.display import block_mean, steps
from mmviz.widgets._state import MapKey, SliceSource


def _qk_trace(n: int = 300, heads: int = 3, layers: int = 2) -> AttentionTrace:
    rng = np.random.default_rng(0)
    qk = QKAttention(
        query=rng.normal(size=(1, layers, heads, n, 8)).astype(np.float32),
        key=rng.normal(size=(1, layers, heads, n, 8)).astype(np.float32),
        scaling=np.full(layers, 8**-0.5),
        mask=None,
        causal=True,
        head_index=np.arange(heads),
    )
    module = ModuleAttention("language_model", tuple(range(layers)), tuple(range(heads)), "text", "text", qk=qk)
    return AttentionTrace({"language_model": module}, {"text": [TokenTable.build([f"t{i}" for i in range(n)])]})


@pytest.mark.parametrize("aggregate", ["head", "mean", "max"])
def test_qk_maps_equal_block_means_of_the_dense_probabilities(aggregate):
    trace = _qk_trace()
    source = SliceSource(trace, batch_index=0, max_matrix=64)
    full = trace.probs(layers=[1])[0]
    reduced = {"head": full[2], "mean": full.mean(0), "max": full.max(0)}[aggregate]
    got = source.matrix(MapKey("language_model", 1, aggregate, 2))
    assert np.allclose(got, block_mean(reduced, *source.steps("language_model")), atol=1e-6)


def test_qk_thumbnails_match_dense():
    trace = _qk_trace()
    source = SliceSource(trace, batch_index=0, max_matrix=64)
    thumbs = source.thumbnails("language_model", [0, 1], [0, 1, 2], size=16)
    heads = _codec.decode_tensor(thumbs["heads"])
    full = trace.probs()
    expected = block_mean(full, *steps(300, 300, 16))
    assert heads.shape == expected.shape
    assert np.abs(heads - expected).max() < 1e-2  # uint8 quantisation per thumbnail
