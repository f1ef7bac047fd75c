"""Exact attention recomputed on demand from stored queries and keys (``store="qk"``).

Dense probabilities cost ``layers·heads·N²``; at 16k tokens that is gigabytes per layer. Queries and
keys cost ``layers·heads·N·d``. ``QKAttention`` keeps those (post-RoPE, as the model used them,
with grouped keys stored once) and the mask, and recomputes any rows, columns, block or thumbnail of the
probabilities in numpy, a chunk of rows at a time, so the ``N × N`` matrix is never materialised.

The recomputation follows ``attn_implementation="eager"``: ``softmax(tanh(q·kᵀ·s / c)·c + mask)`` in
float32, and a query that may attend to no key gets a uniform row (as eager's additive mask gives).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from mmviz.data._blas import single_threaded_blas
from mmviz.errors import BudgetError

__all__ = ["QKAttention"]

_CHUNK_ELEMENTS = 1 << 22
"""Logits computed at once (``rows × keys``, float32: 16 MiB)."""

_BLOCK_ROWS = 64
"""Query rows recomputed at once by ``block_means``: ``64 × keys`` float32 stays in a core's cache at 4k keys."""
_SAFE_LOGIT = 80.0
"""Below this bound on ``|logits|``, ``exp`` can neither overflow nor underflow to 0 in float32: no max pass."""

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called as work units (a chunk of rows of one layer) finish."""

DENSE_BUDGET = 2 << 30
"""Largest array (bytes) ``QKAttention.dense`` materialises; past it, it raises ``BudgetError``."""


@dataclass(eq=False)
class QKAttention:
    """Queries, keys and mask of one module, from which probabilities are recomputed exactly.

    Attributes:
        query: ``[batch, layers, heads, query, dim]`` queries after position encoding.
        key: ``[batch, layers, kv_heads, key, dim]`` keys; stored head ``h`` uses key head
            ``head_index[h] // group`` (grouped-query attention).
        scaling: ``[layers]`` softmax scale of each layer.
        mask: bit-packed ``uint8`` (1 = may attend), ``[batch, query, ceil(key / 8)]`` shared by all layers
            or ``[batch, layers, query, ceil(key / 8)]`` per layer (sliding-window layers), or ``None``.
        causal: when ``mask`` is ``None``: whether query ``i`` sees keys ``≤ i + key - query``
            (otherwise it sees every key).
        head_index: ``[heads]`` the model's head number of each stored query head.
        group: query heads per key head in the model (1 without grouped-query attention).
        softcap: logit soft-capping (``tanh(x / c) · c``) where the model uses it.
    """

    query: np.ndarray
    key: np.ndarray
    scaling: np.ndarray
    mask: np.ndarray | None
    causal: bool
    head_index: np.ndarray
    group: int = 1
    softcap: float | None = None

    def __post_init__(self) -> None:
        b, n_layers, _, nq, _ = self.query.shape
        kb, kl, _, nk, _ = self.key.shape
        if (kb, kl) != (b, n_layers):
            raise ValueError(f"query {self.query.shape} and key {self.key.shape} differ in batch or layers")
        if self.mask is not None:
            packed = (nk + 7) // 8
            if self.mask.shape not in ((b, nq, packed), (b, n_layers, nq, packed)):
                raise ValueError(
                    f"mask {self.mask.shape} should be [batch, query, ceil(key / 8)] = {(b, nq, packed)} "
                    f"or [batch, layers, query, ceil(key / 8)]"
                )

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """``(batch, layers, heads, query, key)``."""
        b, layers, heads, q, _ = self.query.shape
        return b, layers, heads, q, int(self.key.shape[3])

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        return int(self.query.nbytes + self.key.nbytes + (0 if self.mask is None else self.mask.nbytes))

    # -- the core: logits of some rows, masked, softmax-ed ------------------------------------------
    def _key_head(self, head: int) -> int:
        return int(self.head_index[head]) // self.group

    def _packed(self, batch: int, layer: int) -> np.ndarray | None:
        if self.mask is None:
            return None
        return self.mask[batch] if self.mask.ndim == 3 else self.mask[batch, layer]

    def _allowed(
        self, batch: int, layer: int, queries: np.ndarray, start: int, stop: int
    ) -> tuple[int, np.ndarray] | None:
        """Which keys of ``[start, stop)`` each query may see.

        Returns:
            ``None`` when every query sees every key, else ``(first, allowed)``: keys before
            ``start + first`` are all allowed, ``allowed [len(queries), stop - start - first]`` bool covers
            the rest (for a causal chunk of rows, only the band around the diagonal).
        """
        packed = self._packed(batch, layer)
        nk = self.key.shape[3]
        if packed is not None:
            bits = np.unpackbits(packed[queries, start // 8 : (stop + 7) // 8], axis=-1)
            first = start - (start // 8) * 8
            return 0, bits[:, first : first + stop - start].view(bool)
        if not self.causal or queries.size == 0:
            return None
        offset = nk - self.query.shape[3]
        first = min(max(int(queries.min()) + offset + 1, start), stop)
        if first >= stop:
            return None
        return first - start, np.arange(first, stop)[None, :] <= (queries[:, None] + offset)

    def _key_range(self, batch: int, layer: int, queries: np.ndarray) -> tuple[int, int]:
        """Keys ``[start, stop)`` outside of which every query of ``queries`` has zero probability.

        A query that may see no key at all has a uniform row, so it widens the range to every key.
        """
        nk = self.key.shape[3]
        packed = self._packed(batch, layer)
        if queries.size == 0:
            return 0, nk
        if packed is not None:
            rows = packed[queries]
            if not rows.any(axis=1).all():
                return 0, nk
            seen = np.bitwise_or.reduce(rows, axis=0)
            used = np.flatnonzero(seen)
            first, last = int(used[0]), int(used[-1])
            start = first * 8 + int(np.unpackbits(seen[first : first + 1]).argmax())
            stop = last * 8 + 8 - int(np.unpackbits(seen[last : last + 1])[::-1].argmax())
            return start, min(stop, nk)
        if self.causal:
            stop = int(queries.max()) + 1 + nk - self.query.shape[3]
            if int(queries.min()) + nk - self.query.shape[3] < 0:
                return 0, nk
            return 0, min(stop, nk)
        return 0, nk

    def _weights(
        self, batch: int, layer: int, head: int, queries: np.ndarray, start: int, stop: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Unnormalised ``exp`` weights of keys ``[start, stop)`` for some queries.

        Returns:
            ``(weights [len(queries), stop - start] float32, dead [len(queries)] bool)``, each row scaled by
            its own maximum; a dead row may see no key (its probabilities are ``1 / key`` everywhere).
        """
        q = self.query[batch, layer, head, queries].astype(np.float32) * np.float32(self.scaling[layer])
        k = self.key[batch, layer, self._key_head(head), start:stop].astype(np.float32, copy=False)
        logits = q @ k.T
        if self.softcap:
            cap = np.float32(self.softcap)
            logits /= cap
            np.tanh(logits, out=logits)
            logits *= cap
        allowed = self._allowed(batch, layer, queries, start, stop)
        if allowed is not None:
            first, bits = allowed
            np.copyto(logits[:, first:], np.float32(-np.inf), where=~bits)
        if logits.shape[1]:
            top = logits.max(axis=1, keepdims=True)
        else:
            top = np.full((len(queries), 1), -np.inf, np.float32)
        dead = ~np.isfinite(top[:, 0])
        top[dead] = 0.0
        logits -= top
        np.exp(logits, out=logits)
        return logits, dead

    def _chunks(self, queries: np.ndarray, width: int) -> Iterator[np.ndarray]:
        step = max(1, _CHUNK_ELEMENTS // max(width, 1))
        for i in range(0, queries.size, step):
            yield queries[i : i + step]

    # -- public accessors --------------------------------------------------------------------------
    def rows(self, batch: int, layer: int, head: int, queries: Sequence[int] | np.ndarray) -> np.ndarray:
        """Probabilities of some query rows of one head.

        Args:
            batch: batch item.
            layer: index into the stored layers.
            head: index into the stored heads.
            queries: query positions.

        Returns:
            ``[len(queries), key]`` float32; every row sums to 1.
        """
        q_idx = np.asarray(queries, dtype=np.int64).reshape(-1)
        nk = self.key.shape[3]
        out = np.empty((q_idx.size, nk), dtype=np.float32)
        done = 0
        for chunk in self._chunks(q_idx, nk):
            weights, dead = self._weights(batch, layer, head, chunk, 0, nk)
            total = weights.sum(axis=1)
            total[dead] = 1.0
            weights /= total[:, None]
            weights[dead] = np.float32(1.0 / nk)
            out[done : done + chunk.size] = weights
            done += chunk.size
        return out

    def columns(self, batch: int, layer: int, head: int, keys: Sequence[int] | np.ndarray) -> np.ndarray:
        """Probabilities that every query gives some keys (rows are normalised over all keys).

        Returns:
            ``[query, len(keys)]`` float32.
        """
        k_idx = np.asarray(keys, dtype=np.int64).reshape(-1)
        nq, nk = self.query.shape[3], self.key.shape[3]
        out = np.empty((nq, k_idx.size), dtype=np.float32)
        for chunk in self._chunks(np.arange(nq), nk):
            out[chunk] = self.rows(batch, layer, head, chunk)[:, k_idx]
        return out

    def block(self, batch: int, layer: int, head: int, queries: slice, keys: slice) -> np.ndarray:
        """A rectangular block ``[queries, keys]`` of one head's probabilities (rows normalised over all keys)."""
        q_idx = np.arange(self.query.shape[3])[queries]
        k_idx = np.arange(self.key.shape[3])[keys]
        out = np.empty((q_idx.size, k_idx.size), dtype=np.float32)
        done = 0
        for chunk in self._chunks(q_idx, self.key.shape[3]):
            out[done : done + chunk.size] = self.rows(batch, layer, head, chunk)[:, k_idx]
            done += chunk.size
        return out

    def dense(self, batch: int, layers: Sequence[int], heads: Sequence[int]) -> np.ndarray:
        """Materialises ``[layers, heads, query, key]`` float32 (only the layers and heads asked for).

        Raises:
            BudgetError: the array would exceed ``DENSE_BUDGET`` bytes.
        """
        _, _, _, nq, nk = self.shape
        size = len(layers) * len(heads) * nq * nk * 4
        if size > DENSE_BUDGET:
            raise BudgetError(
                f"the probabilities of {len(layers)} layer(s) × {len(heads)} head(s) over {nq} × {nk} positions "
                f"take {size / 2**30:.1f} GiB (budget {DENSE_BUDGET / 2**30:.1f} GiB): ask for fewer layers=/heads=, "
                "use rows(), columns() or thumbnails(), or raise mmviz.data.qk.DENSE_BUDGET"
            )
        out = np.empty((len(layers), len(heads), nq, nk), dtype=np.float32)
        for li, layer in enumerate(layers):
            for hi, head in enumerate(heads):
                out[li, hi] = self.rows(batch, layer, head, np.arange(nq))
        return out

    def thumbnails(
        self,
        batch: int,
        size: int = 64,
        layers: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
        workers: int = 1,
    ) -> np.ndarray:
        """Block means of some layers and heads, computed a chunk of rows at a time.

        Keys a chunk of queries cannot see (beyond the causal diagonal, outside a sliding window) are
        skipped, which halves the work of a causal matrix. With ``workers`` > 1, heads are computed in
        parallel threads (numpy's matmul and ufuncs release the GIL); the default, one, leaves the
        cores to the BLAS library's own threads.

        Args:
            batch: batch item.
            size: cells per side (at most the sequence length).
            layers: indices into the stored layers (default: all).
            heads: indices into the stored heads (default: all).
            workers: threads computing heads in parallel (default 1; ``0``: one per CPU core).

        Returns:
            ``[layers, heads, rows, cols]`` float32, each cell the mean probability of its block.
        """
        _, n_layers, n_heads, nq, nk = self.shape
        ls = list(range(n_layers)) if layers is None else [int(x) for x in layers]
        hs = list(range(n_heads)) if heads is None else [int(x) for x in heads]
        q_edges = np.linspace(0, nq, min(size, nq) + 1).astype(np.int64)
        k_edges = np.linspace(0, nk, min(size, nk) + 1).astype(np.int64)
        out = np.zeros((len(ls), len(hs), q_edges.size - 1, k_edges.size - 1), dtype=np.float64)
        tasks = [(li, hi) for li in range(len(ls)) for hi in range(len(hs))]

        def one(task: tuple[int, int]) -> None:
            li, hi = task
            out[li, hi] = self._thumbnail(batch, ls[li], hs[hi], q_edges, k_edges)

        n_workers = min(len(tasks), workers if workers > 0 else os.cpu_count() or 1)
        if n_workers <= 1:
            for task in tasks:
                one(task)
        else:
            with ThreadPoolExecutor(n_workers) as pool:
                list(pool.map(one, tasks))
        area = np.diff(q_edges)[:, None] * np.diff(k_edges)[None, :]
        return (out / area).astype(np.float32)

    def _thumbnail(self, batch: int, layer: int, head: int, q_edges: np.ndarray, k_edges: np.ndarray) -> np.ndarray:
        """``[cells, cells]`` float64 sums of one head's probabilities over blocks."""
        nk = self.key.shape[3]
        out = np.zeros((q_edges.size - 1, k_edges.size - 1), dtype=np.float64)
        cell_widths = np.diff(k_edges)
        # chunks of whole query cells, so that rows reduce with one reduceat
        cell_rows = int(np.diff(q_edges).max()) if q_edges.size > 1 else 1
        per_chunk = max(1, _CHUNK_ELEMENTS // max(nk * cell_rows, 1))
        for c0 in range(0, q_edges.size - 1, per_chunk):
            c1 = min(c0 + per_chunk, q_edges.size - 1)
            rows = np.arange(q_edges[c0], q_edges[c1])
            start, stop = self._key_range(batch, layer, rows)
            kc0 = int(np.searchsorted(k_edges, start, side="right")) - 1
            kc1 = int(np.searchsorted(k_edges, stop, side="left"))
            weights, dead = self._weights(batch, layer, head, rows, start, stop)
            per_cell = np.add.reduceat(weights, np.maximum(k_edges[kc0:kc1], start) - start, axis=1)
            total = per_cell.sum(axis=1)
            total[dead] = 1.0
            per_cell /= total[:, None]
            if dead.any():
                per_cell[dead] = cell_widths[kc0:kc1] / nk
            out[c0:c1, kc0:kc1] += np.add.reduceat(per_cell, q_edges[c0:c1] - q_edges[c0], axis=0)
        return out


def _block_edges(start: int, stop: int, step: int) -> tuple[int, np.ndarray]:
    """First cell and the cell starts (relative to ``start``) of columns ``[start, stop)`` in cells of ``step``."""
    first = start // step
    last = -(-stop // step)
    starts = np.arange(first, last, dtype=np.int64) * step
    return first, np.maximum(starts, start) - start


class _BlockSweep:
    """Block sums of some heads' probabilities (and of their maximum) over one layer, a chunk of rows at a time.

    The recomputation of ``QKAttention._weights`` without its max pass where a bound on the logits makes it
    safe, and with the columns and rows summed into blocks as each chunk is made, so a layer costs about
    one matrix product, one ``exp`` and one sum per visible cell.
    """

    def __init__(
        self, qk: QKAttention, batch: int, layer: int, heads: list[int], q_step: int, k_step: int, head_max: bool
    ) -> None:
        self.qk, self.batch, self.layer, self.heads = qk, batch, layer, heads
        self.q_step, self.k_step, self.head_max = q_step, k_step, head_max
        _, _, _, nq, nk = qk.shape
        rows, cols = -(-nq // q_step), -(-nk // k_step)
        self.sums = np.zeros((len(heads), rows, cols), dtype=np.float64)
        self.max_sums = np.zeros((rows, cols), dtype=np.float64) if head_max else None
        scale = float(qk.scaling[layer])
        keys = qk.key[batch, layer].astype(np.float32)
        self.keys = keys
        key_norm = np.sqrt((keys * keys).sum(-1)).max(axis=-1) if nk else np.zeros(keys.shape[0])
        query_norm = np.sqrt((qk.query[batch, layer].astype(np.float32) ** 2).sum(-1)).max(axis=-1)
        self.no_max = [
            bool(qk.softcap and abs(qk.softcap) < _SAFE_LOGIT)
            or float(query_norm[h]) * abs(scale) * float(key_norm[qk._key_head(h)]) < _SAFE_LOGIT
            for h in heads
        ]
        self.scale = np.float32(scale)

    def rows(self, queries: np.ndarray) -> None:
        """Adds the blocks of one chunk of query rows."""
        qk, nk = self.qk, self.qk.key.shape[3]
        start, stop = qk._key_range(self.batch, self.layer, queries)
        first, edges = _block_edges(start, stop, self.k_step)
        allowed = qk._allowed(self.batch, self.layer, queries, start, stop)
        top = None
        for slot, head in enumerate(self.heads):
            q = qk.query[self.batch, self.layer, head, queries].astype(np.float32) * self.scale
            w = q @ self.keys[qk._key_head(head), start:stop].T
            if qk.softcap:
                cap = np.float32(qk.softcap)
                w /= cap
                np.tanh(w, out=w)
                w *= cap
            if allowed is not None:
                np.copyto(w[:, allowed[0] :], np.float32(-np.inf), where=~allowed[1])
            if not self.no_max[slot] and w.shape[1]:
                peak = w.max(axis=1, keepdims=True)
                peak[~np.isfinite(peak)] = 0.0
                w -= peak
            np.exp(w, out=w)
            cells = np.add.reduceat(w, edges, axis=1) if w.shape[1] else np.zeros((len(queries), 0), np.float32)
            total = cells.sum(axis=1)
            dead = total <= 0  # a query that may see no key: uniform over every key, as eager gives
            total[dead] = 1.0
            cells /= total[:, None]
            if dead.any():
                cells[dead] = np.diff(np.append(edges, stop - start)) / nk
            self._add_rows(self.sums[slot], queries, first, cells)
            if self.head_max:
                w /= total[:, None]
                if dead.any():
                    w[dead] = np.float32(1.0 / nk)
                top = w if top is None else np.maximum(top, w, out=top)
        if self.max_sums is not None and top is not None:
            cells = np.add.reduceat(top, edges, axis=1) if top.shape[1] else top
            self._add_rows(self.max_sums, queries, first, cells)

    def _add_rows(self, out: np.ndarray, queries: np.ndarray, first: int, cells: np.ndarray) -> None:
        """Adds per-row cell sums into the row blocks they belong to (a chunk may straddle blocks)."""
        block = queries // self.q_step
        starts = np.flatnonzero(np.r_[True, block[1:] != block[:-1]])
        out[block[starts], first : first + cells.shape[1]] += np.add.reduceat(cells, starts, axis=0)

    def means(self) -> tuple[np.ndarray, np.ndarray | None]:
        """``([heads, rows, cols], [rows, cols] or None)`` float32 block means."""
        _, _, _, nq, nk = self.qk.shape
        rows, cols = self.sums.shape[1:]
        q_count = np.minimum(self.q_step, nq - np.arange(rows) * self.q_step)
        k_count = np.minimum(self.k_step, nk - np.arange(cols) * self.k_step)
        area = (q_count[:, None] * k_count[None, :]).astype(np.float64)
        maxed = None if self.max_sums is None else (self.max_sums / area).astype(np.float32)
        return (self.sums / area).astype(np.float32), maxed


def qk_block_means(
    qk: QKAttention,
    batch: int,
    layers: Sequence[int],
    heads: Sequence[int],
    q_step: int,
    k_step: int,
    head_max: bool = False,
    progress: Progress | None = None,
    workers: int = 0,
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Block means of some layers' and heads' probabilities (and of the maximum over those heads).

    Exact: each block is the mean of the probabilities ``rows`` gives, recomputed a chunk of
    ``_BLOCK_ROWS`` query rows at a time over the keys those rows can see.

    Args:
        qk: the stored queries and keys.
        batch: batch item.
        layers: indices into the stored layers.
        heads: indices into the stored heads.
        q_step: query rows per block (the last block may be smaller).
        k_step: key columns per block.
        head_max: also the block means of the maximum over ``heads`` (the "max" aggregate).
        progress: ``progress(done, total)`` after each chunk of rows of a layer.
        workers: threads, one layer each (``0``: one per CPU core; numpy releases the GIL).

    Returns:
        Per layer, ``([heads, rows, cols] float32, [rows, cols] float32 or None)``.
    """
    nq = qk.shape[3]
    chunk = max(1, _BLOCK_ROWS)
    starts = list(range(0, nq, chunk))
    total = len(layers) * len(starts)
    done = [0]

    def one(layer: int) -> tuple[np.ndarray, np.ndarray | None]:
        sweep = _BlockSweep(qk, batch, int(layer), [int(h) for h in heads], q_step, k_step, head_max)
        for start in starts:
            sweep.rows(np.arange(start, min(start + chunk, nq)))
            done[0] += 1
            if progress is not None:
                progress(done[0], total)
        return sweep.means()

    n_workers = min(len(layers), workers if workers > 0 else os.cpu_count() or 1)
    with single_threaded_blas():  # small products, one layer a thread: BLAS threads would only contend
        if n_workers <= 1:
            return [one(layer) for layer in layers]
        with ThreadPoolExecutor(n_workers) as pool:
            return list(pool.map(one, layers))
