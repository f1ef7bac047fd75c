"""Reductions of attention probabilities, in numpy: head mean/max, rollout, word merge, hiding tokens.

Every function takes probabilities whose last two axes are ``[query, key]`` and leaves leading axes
(layers, heads, ...) alone unless it says otherwise.
"""

from __future__ import annotations

import numpy as np

__all__ = ["head_max", "head_mean", "hide_positions", "merge_words", "rollout"]


def head_mean(probs: np.ndarray, axis: int = -3) -> np.ndarray:
    """Mean over heads.

    Args:
        probs: ``[..., heads, query, key]`` probabilities.
        axis: the heads axis.

    Returns:
        ``[..., query, key]`` float32.
    """
    return np.asarray(probs, dtype=np.float32).mean(axis=axis)


def head_max(probs: np.ndarray, axis: int = -3) -> np.ndarray:
    """Maximum over heads.

    Args:
        probs: ``[..., heads, query, key]`` probabilities.
        axis: the heads axis.

    Returns:
        ``[..., query, key]`` float32.
    """
    return np.asarray(probs, dtype=np.float32).max(axis=axis)


def rollout(probs: np.ndarray, residual: bool = True, start_layer: int = 0) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema, 2020).

    Each layer's head-mean attention ``A`` becomes ``0.5·A + 0.5·I`` when ``residual`` (the residual
    stream carries half of each token), rows are renormalised, and layers are multiplied from the first
    upwards: ``R_l = Â_l · R_{l-1}``.

    Args:
        probs: ``[layers, heads, query, key]`` self-attention (query and key are the same positions).
        residual: add the identity for the residual connection.
        start_layer: first layer of the product.

    Returns:
        ``[layers, query, key]`` float32: rollout up to and including each layer (layers before
        ``start_layer`` hold the identity).
    """
    p = np.asarray(probs, dtype=np.float32)
    if p.ndim != 4 or p.shape[-1] != p.shape[-2]:
        raise ValueError(f"rollout needs square self-attention [layers, heads, n, n], got shape {p.shape}")
    n = p.shape[-1]
    eye = np.eye(n, dtype=np.float32)
    result = np.empty((p.shape[0], n, n), dtype=np.float32)
    joint = eye
    for layer in range(p.shape[0]):
        if layer >= start_layer:
            a = p[layer].mean(axis=0)
            if residual:
                a = 0.5 * a + 0.5 * eye
            a = a / np.maximum(a.sum(axis=-1, keepdims=True), 1e-12)
            joint = a @ joint
        result[layer] = joint
    return result


def hide_positions(probs: np.ndarray, hidden: np.ndarray, renormalize: bool = True) -> np.ndarray:
    """Zeros the attention paid to hidden key positions (e.g. special or sink tokens).

    Args:
        probs: ``[..., query, key]`` probabilities.
        hidden: ``[key]`` bool, ``True`` for positions to hide.
        renormalize: rescale each query row to sum to 1 over the visible keys.

    Returns:
        ``[..., query, key]`` float32 with hidden columns zero.
    """
    p = np.array(probs, dtype=np.float32)
    p[..., np.asarray(hidden, dtype=bool)] = 0.0
    if renormalize:
        total = p.sum(axis=-1, keepdims=True)
        p = np.divide(p, total, out=np.zeros_like(p), where=total > 0)
    return p


def merge_words(probs: np.ndarray, query_words: np.ndarray, key_words: np.ndarray | None = None) -> np.ndarray:
    """Merges subword tokens into words.

    Attention *to* a word is the sum over its subwords (rows keep summing to 1); attention *from* a
    word is the mean of its subwords' rows.

    Args:
        probs: ``[..., query, key]`` probabilities.
        query_words: ``[query]`` word id per query position.
        key_words: ``[key]`` word id per key position (default: ``query_words``).

    Returns:
        ``[..., query_words, key_words]`` float32, words in order of first appearance.
    """
    key_words = query_words if key_words is None else key_words
    q_onehot = _word_onehot(np.asarray(query_words))
    k_onehot = _word_onehot(np.asarray(key_words))
    q_weights = q_onehot / q_onehot.sum(axis=1, keepdims=True)
    p = np.asarray(probs, dtype=np.float32)
    return np.einsum("wq,...qk,vk->...wv", q_weights, p, k_onehot, optimize=True)


def _word_onehot(word_ids: np.ndarray) -> np.ndarray:
    """``[words, positions]`` membership, words ordered by first appearance."""
    _, first, inverse = np.unique(word_ids, return_index=True, return_inverse=True)
    rank = np.empty_like(first)
    rank[np.argsort(first)] = np.arange(first.size)
    onehot = np.zeros((first.size, word_ids.size), dtype=np.float32)
    onehot[rank[inverse.reshape(-1)], np.arange(word_ids.size)] = 1.0
    return onehot
