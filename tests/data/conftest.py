from __future__ import annotations

import numpy as np
import pytest

from mmviz.data import AttentionTrace, ModuleAttention, TokenTable


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture
def image_table() -> TokenTable:
    """[bos] a red <img 0,0> <img 0,1> <img 1,0> <img 1,1> circ le"""
    image = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    return TokenTable.build(
        ["<s>", " a", " red", "p", "p", "p", "p", " circ", "le"],
        kind=["special", "text", "text", "image", "image", "image", "image", "text", "text"],
        word_id=[0, 1, 2, 3, 4, 5, 6, 7, 7],
        image_index=[-1, -1, -1, 0, 0, 0, 0, -1, -1],
        patch_row=[-1, -1, -1, 0, 0, 1, 1, -1, -1],
        patch_col=[-1, -1, -1, 0, 1, 0, 1, -1, -1],
        images=[image],
        grids=[(2, 2)],
    )


@pytest.fixture
def trace(image_table: TokenTable) -> AttentionTrace:
    rng = np.random.default_rng(1)
    n = len(image_table)
    logits = rng.normal(size=(2, 3, 4, n, n))
    logits = np.where(np.tril(np.ones((n, n), dtype=bool)), logits, -np.inf)
    probs = softmax(logits).astype(np.float16)
    module = ModuleAttention("language_model", (0, 1, 2), (0, 1, 2, 3), "text", "text", dense=probs)
    return AttentionTrace({"language_model": module}, {"text": [image_table, image_table]}, {"model": "test"})
