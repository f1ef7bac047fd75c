"""Exact attention recomputed on demand from stored queries and keys (``store="qk"``).

Dense probabilities cost ``layers·heads·N²``; at 16k tokens that is gigabytes per layer. Queries and
keys cost ``layers·heads·N·d``. :class:`QKAttention` keeps those (post-RoPE, as the model used them,
with grouped keys stored once) and the mask, and recomputes any rows, block or thumbnail of the
probabilities in numpy, a chunk of rows at a time, so the ``N × N`` matrix is never materialised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["QKAttention"]

_ROW_CHUNK = 512


@dataclass(eq=False)
class QKAttention:
    """Queries, keys and mask of one module, from which probabilities are recomputed exactly.

    Attributes:
        query: ``[batch, layers, heads, query, dim]`` queries after position encoding.
        key: ``[batch, layers, kv_heads, key, dim]`` keys; head ``h`` uses key head
            ``h // (heads // kv_heads)`` (grouped-query attention).
        scaling: ``[layers]`` softmax scale of each layer.
        mask: ``[batch, query, ceil(key / 8)]`` bit-packed ``uint8`` (1 = may attend), or ``None``.
        causal: when ``mask`` is ``None``: whether query ``i`` sees keys ``≤ i + key - query``.
        softcap: logit soft-capping (``tanh(x / c) · c``) where the model uses it.
        head_index: ``[heads]`` the model's head number of each stored query head.
        group: query heads per key head in the model (1 without grouped-query attention).
    """

    query: np.ndarray
    key: np.ndarray
    scaling: np.ndarray
    mask: np.ndarray | None
    causal: bool
    head_index: np.ndarray
    group: int = 1
    softcap: float | None = None

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """``(batch, layers, heads, query, key)``."""
        b, layers, heads, q, _ = self.query.shape
        return b, layers, heads, q, int(self.key.shape[3])

    def _key_head(self, head: int) -> int:
        return int(self.head_index[head]) // self.group

    def _allowed(self, batch: int, queries: np.ndarray) -> np.ndarray:
        """``[len(queries), key]`` bool: which keys each query may attend to."""
        nk = self.key.shape[3]
        if self.mask is not None:
            return np.unpackbits(self.mask[batch, queries], axis=-1, count=nk).astype(bool)
        if not self.causal:
            return np.ones((queries.size, nk), dtype=bool)
        offset = nk - self.query.shape[3]
        return np.arange(nk)[None, :] <= (queries[:, None] + offset)

    def rows(self, batch: int, layer: int, head: int, queries: Sequence[int] | np.ndarray) -> np.ndarray:
        """Probabilities of some query rows of one head.

        Args:
            batch: batch item.
            layer: index into the stored layers.
            head: index into the stored heads.
            queries: query positions.

        Returns:
            ``[len(queries), key]`` float32; rows sum to 1 (or 0 where a query may attend to nothing).
        """
        q_idx = np.asarray(queries, dtype=np.int64).reshape(-1)
        q = self.query[batch, layer, head, q_idx].astype(np.float32)
        k = self.key[batch, layer, self._key_head(head)].astype(np.float32)
        logits = (q @ k.T) * np.float32(self.scaling[layer])
        if self.softcap:
            logits = np.tanh(logits / self.softcap) * self.softcap
        allowed = self._allowed(batch, q_idx)
        logits = np.where(allowed, logits, -np.inf)
        top = logits.max(axis=-1, keepdims=True)
        top = np.where(np.isfinite(top), top, 0.0)
        weights = np.exp(logits - top)
        total = weights.sum(axis=-1, keepdims=True)
        return np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)

    def block(self, batch: int, layer: int, head: int, queries: slice, keys: slice) -> np.ndarray:
        """A rectangular block ``[queries, keys]`` of one head's probabilities (rows normalised over all keys)."""
        q_idx = np.arange(self.query.shape[3])[queries]
        out = [
            self.rows(batch, layer, head, q_idx[i : i + _ROW_CHUNK])[:, keys] for i in range(0, q_idx.size, _ROW_CHUNK)
        ]
        return np.concatenate(out, axis=0) if out else np.zeros((0, 0), dtype=np.float32)

    def dense(self, batch: int, layers: Sequence[int], heads: Sequence[int]) -> np.ndarray:
        """Materialises ``[layers, heads, query, key]`` (only for the sizes a caller asked for)."""
        _, _, _, nq, nk = self.shape
        out = np.empty((len(layers), len(heads), nq, nk), dtype=np.float32)
        for li, layer in enumerate(layers):
            for hi, head in enumerate(heads):
                out[li, hi] = self.block(batch, layer, head, slice(None), slice(None))
        return out

    def thumbnails(self, batch: int, size: int = 64) -> np.ndarray:
        """Block means of every layer and head, computed a chunk of rows at a time.

        Args:
            batch: batch item.
            size: cells per side (at most the sequence length).

        Returns:
            ``[layers, heads, rows, cols]`` float32, each cell the mean probability of its block.
        """
        _, n_layers, n_heads, nq, nk = self.shape
        q_edges = np.linspace(0, nq, min(size, nq) + 1).astype(np.int64)
        k_edges = np.linspace(0, nk, min(size, nk) + 1).astype(np.int64)
        q_cell = np.searchsorted(q_edges, np.arange(nq), side="right") - 1
        out = np.zeros((n_layers, n_heads, q_edges.size - 1, k_edges.size - 1), dtype=np.float64)
        for layer in range(n_layers):
            for head in range(n_heads):
                for start in range(0, nq, _ROW_CHUNK):
                    rows = np.arange(start, min(start + _ROW_CHUNK, nq))
                    p = self.rows(batch, layer, head, rows)
                    per_key_cell = np.add.reduceat(p, k_edges[:-1], axis=1)
                    np.add.at(out[layer, head], q_cell[rows], per_key_cell)
        area = np.diff(q_edges)[:, None] * np.diff(k_edges)[None, :]
        return (out / area).astype(np.float32)
