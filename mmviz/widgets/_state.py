"""What an AttentionView sends to the browser: token tables, thumbnails and attention maps as payloads.

All tensors go through ``mmviz._codec`` (binary, uint8 quantised per slice). Nothing here touches
widgets or traitlets, so the HTML export builds the same state.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmviz import _codec
from mmviz.data.attention import AttentionTrace
from mmviz.data.display import block_mean, select_map, steps
from mmviz.data.tokens import TokenTable

__all__ = ["MapKey", "SliceSource", "map_nbytes", "module_state", "table_state"]


@dataclass(frozen=True)
class MapKey:
    """One attention map of a view: ``module|layer|head`` (``head`` a number or a reduction name)."""

    module: str
    layer: int
    aggregate: str = "head"
    head: int = 0

    @property
    def key(self) -> str:
        """The string the front end uses (``js/src/model.ts: sliceKey``)."""
        return f"{self.module}|{self.layer}|{self.head if self.aggregate == 'head' else self.aggregate}"


def table_state(table: TokenTable) -> dict[str, Any]:
    """The browser's copy of a token table: text as JSON strings, integer columns and images binary."""
    return {
        "text": [str(t) for t in table.text.tolist()],
        "kind": [str(k) for k in table.kind.tolist()],
        "generated": _codec.encode_tensor(table.generated, "uint8"),
        "word_id": _codec.encode_tensor(table.word_id, "int32"),
        "image_index": _codec.encode_tensor(table.image_index, "int32"),
        "patch_row": _codec.encode_tensor(table.patch_row, "int32"),
        "patch_col": _codec.encode_tensor(table.patch_col, "int32"),
        "images": [_codec.encode_tensor(im, "uint8") for im in table.images],
        "grids": [[int(r), int(c)] for r, c in table.grids],
    }


def module_state(
    trace: AttentionTrace, name: str, layers: list[int], heads: list[int], max_matrix: int
) -> dict[str, Any]:
    """Description of one module for the front end (``js/src/model.ts: ModuleState``)."""
    m = trace.module(name)
    _, _, _, nq, nk = m.shape
    q_step, k_step = steps(nq, nk, max_matrix)
    return {
        "name": name,
        "layers": layers,
        "heads": heads,
        "query_table": m.query_table,
        "key_table": m.key_table,
        "n_query": int(nq),
        "n_key": int(nk),
        "q_step": q_step,
        "k_step": k_step,
        "self_attention": m.query_table == m.key_table,
    }


def map_nbytes(n_query: int, n_key: int, q_step: int, k_step: int) -> int:
    """Bytes one attention map costs on the wire (uint8 cells plus a float32 scale and offset per row)."""
    rows, cols = math.ceil(n_query / q_step), math.ceil(n_key / k_step)
    return rows * cols + 8 * rows


class SliceSource:
    """Computes attention maps of one trace and batch item, with a small cache.

    Args:
        trace: the trace.
        batch_index: the batch item.
        max_matrix: most rows/columns of a map; bigger maps are block-averaged.
        cache_size: maps kept in memory.
    """

    def __init__(self, trace: AttentionTrace, batch_index: int, max_matrix: int, cache_size: int = 8) -> None:
        self.trace = trace
        self.batch_index = batch_index
        self.max_matrix = max_matrix
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._rollout: dict[str, np.ndarray] = {}

    def steps(self, module: str) -> tuple[int, int]:
        """Downsampling steps of a module's maps."""
        _, _, _, nq, nk = self.trace.module(module).shape
        return steps(nq, nk, self.max_matrix)

    def matrix(self, key: MapKey) -> np.ndarray:
        """``[rows, cols]`` float32 attention map (block-averaged when the module is big).

        Raises:
            KeyError: the module, layer or head was not captured.
            ValueError: rollout of a cross-attention module, or an unknown aggregate.
        """
        hit = self._cache.get(key.key)
        if hit is not None:
            self._cache.move_to_end(key.key)
            return hit
        t, b = self.trace, self.batch_index
        module = t.module(key.module)
        if module.store == "qk" and key.aggregate != "rollout":
            heads = [key.head] if key.aggregate == "head" else list(module.heads)
            per_head, maxed = module.block_means(
                b, *self.steps(key.module), layers=[key.layer], heads=heads, head_max=key.aggregate == "max"
            )
            out = maxed[0] if maxed is not None else per_head[0].mean(axis=0)
            self._remember(key.key, out)
            return out
        rollout = None
        if key.aggregate == "rollout":
            if key.module not in self._rollout:
                self._rollout[key.module] = t.rollout(key.module, b)
            rollout = self._rollout[key.module]
        full = select_map(t, key.module, b, key.layer, key.aggregate, key.head, rollout=rollout)
        out = block_mean(full, *self.steps(key.module))
        self._remember(key.key, out)
        return out

    def _remember(self, key: str, value: np.ndarray) -> None:
        self._cache[key] = value
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def payload(self, key: MapKey) -> dict[str, Any]:
        """The map as a uint8 payload quantised per query row."""
        return _codec.encode_uint8(self.matrix(key), axes=1)

    def thumbnails(self, module: str, layers: list[int], heads: list[int], size: int) -> dict[str, Any]:
        """Thumbnails of every shown head, and of the head mean and max, per layer.

        Returns:
            ``{"heads": [layers, heads, s, s], "mean": [layers, s, s], "max": [layers, s, s]}`` payloads,
            each quantised per thumbnail.
        """
        stack = self.trace.module(module)
        _, _, _, nq, nk = stack.shape
        qs, ks = steps(nq, nk, size)
        # computed once per trace (cached on the module: the export and other views reuse it); store="qk"
        # recomputes rows a chunk at a time, layers in threads, with a progress bar on long traces
        per_head, maxed = stack.block_means(
            self.batch_index, qs, ks, layers=layers, heads=heads, head_max=True, progress=stack.store == "qk"
        )
        assert maxed is not None
        return {
            "heads": _codec.encode_uint8(per_head, axes=2),
            "mean": _codec.encode_uint8(per_head.mean(axis=1), axes=1),  # block means are linear: exact
            "max": _codec.encode_uint8(maxed, axes=1),
        }


def thumbs_nbytes(n_layers: int, n_heads: int, nq: int, nk: int, size: int) -> int:
    """Bytes of one module's thumbnails on the wire."""
    qs, ks = steps(nq, nk, size)
    cells = math.ceil(nq / qs) * math.ceil(nk / ks)
    return n_layers * (n_heads + 2) * (cells + 8)
