"""Synthetic traces for widget, export and browser tests (random softmax attention, no torch)."""

from __future__ import annotations

import numpy as np
import pytest

from mmviz.data import AttentionTrace, ModuleAttention, TokenTable


def softmax_probs(rng: np.random.Generator, shape: tuple[int, ...], causal: bool = False) -> np.ndarray:
    logits = rng.normal(size=shape).astype(np.float32) * 2.0
    if causal:
        n = shape[-1]
        logits = np.where(np.tril(np.ones((n, n), dtype=bool)), logits, -np.inf)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float16)


def make_image(size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.zeros((size, size, 3), dtype=np.uint8)
    img[..., 0] = (xx * 255 // max(1, size - 1)).astype(np.uint8)
    img[..., 1] = (yy * 255 // max(1, size - 1)).astype(np.uint8)
    img[(xx - size // 3) ** 2 + (yy - size // 3) ** 2 < (size // 6) ** 2] = (230, 40, 40)
    return img


def vlm_table(words: list[str], grid: tuple[int, int] = (4, 4), evil: bool = False) -> TokenTable:
    """<s> + image patches + text words (some split into subwords) + </s>."""
    rows, cols = grid
    text, kind, word, img_idx, prow, pcol = ["<s>"], ["special"], [0], [-1], [-1], [-1]
    for r in range(rows):
        for c in range(cols):
            text.append(f"<patch {r},{c}>")
            kind.append("image")
            word.append(len(word))
            img_idx.append(0)
            prow.append(r)
            pcol.append(c)
    for w in words:
        pieces = [w[: len(w) // 2], w[len(w) // 2 :]] if len(w) > 5 else [w]
        wid = len(word) + 1000
        for j, piece in enumerate(pieces):
            text.append((" " if j == 0 else "") + piece)
            kind.append("text")
            word.append(wid)
            img_idx.append(-1)
            prow.append(-1)
            pcol.append(-1)
    if evil:
        for piece in ("<img src=x onerror=alert(1)>", "</script><script>alert(2)</script>"):
            text.append(piece)
            kind.append("text")
            word.append(len(word) + 5000)
            img_idx.append(-1)
            prow.append(-1)
            pcol.append(-1)
    text.append("</s>")
    kind.append("special")
    word.append(len(word) + 9000)
    img_idx.append(-1)
    prow.append(-1)
    pcol.append(-1)
    return TokenTable.build(
        text,
        kind=kind,
        word_id=word,
        image_index=img_idx,
        patch_row=prow,
        patch_col=pcol,
        images=[make_image(32)],
        grids=[grid],
    )


def make_trace(
    n_layers: int = 3,
    n_heads: int = 4,
    words: list[str] | None = None,
    grid: tuple[int, int] = (4, 4),
    batch: int = 1,
    evil: bool = False,
    seed: int = 0,
    vision: bool = True,
) -> AttentionTrace:
    rng = np.random.default_rng(seed)
    words = words or ["a", "photograph", "of", "a", "red", "circle", "beside", "squares"]
    table = vlm_table(words, grid, evil=evil)
    n = len(table)
    lm = ModuleAttention(
        name="language_model",
        layers=tuple(range(n_layers)),
        heads=tuple(range(n_heads)),
        query_table="lm",
        key_table="lm",
        dense=softmax_probs(rng, (batch, n_layers, n_heads, n, n), causal=True),
    )
    modules = {"language_model": lm}
    tables = {"lm": [table] * batch}
    if vision:
        rows, cols = grid
        vt = TokenTable.build(
            ["<cls>"] + [f"p{r},{c}" for r in range(rows) for c in range(cols)],
            kind=["special"] + ["image"] * (rows * cols),
            image_index=[-1] + [0] * (rows * cols),
            patch_row=[-1] + [r for r in range(rows) for _ in range(cols)],
            patch_col=[-1] + [c for _ in range(rows) for c in range(cols)],
            images=[make_image(32)],
            grids=[grid],
        )
        nv = len(vt)
        modules["vision_tower"] = ModuleAttention(
            name="vision_tower",
            layers=(0, 1),
            heads=(0, 1),
            query_table="vision",
            key_table="vision",
            dense=softmax_probs(rng, (batch, 2, 2, nv, nv)),
        )
        tables["vision"] = [vt] * batch
    return AttentionTrace(modules, tables, {"model": "synthetic"})


def big_trace(n_tokens: int, n_layers: int = 12, n_heads: int = 12, seed: int = 0) -> AttentionTrace:
    """A text-only self-attention trace of ``n_tokens`` positions (built without a full softmax pass)."""
    rng = np.random.default_rng(seed)
    table = TokenTable.build([f" w{i}" for i in range(n_tokens)])
    dense = rng.random((1, n_layers, n_heads, n_tokens, n_tokens), dtype=np.float32).astype(np.float16)
    dense /= np.float16(n_tokens / 2)
    lm = ModuleAttention("language_model", tuple(range(n_layers)), tuple(range(n_heads)), "lm", "lm", dense=dense)
    return AttentionTrace({"language_model": lm}, {"lm": [table]})


@pytest.fixture
def trace() -> AttentionTrace:
    return make_trace()
