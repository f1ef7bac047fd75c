"""Attention traces: what ``mmviz.capture`` recorded, as numpy arrays.

An ``AttentionTrace`` holds one ``ModuleAttention`` per captured attention stack (the
language model, a vision tower, a Q-Former's cross-attention, an encoder-decoder's cross-attention, ...)
and the ``TokenTable`` of each batch item for the queries and keys.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mmviz.data import io, reductions
from mmviz.data._shown import Shown
from mmviz.data.qk import QKAttention
from mmviz.data.tokens import TokenTable

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mmviz.widgets.attention_view import AttentionView

__all__ = ["AttentionTrace", "ModuleAttention"]

DEFAULT_MODULE = "language_model"


@dataclass(eq=False)
class ModuleAttention:
    """Attention of one stack of layers.

    Exactly one of ``dense`` and ``qk`` is set.

    Attributes:
        name: module name, e.g. ``"language_model"``, ``"vision_tower"``, ``"decoder.cross_attention"``.
        layers: the model's layer index of each stored layer.
        heads: the model's head index of each stored head.
        query_table: key of ``AttentionTrace.tables`` describing the query positions.
        key_table: key of ``AttentionTrace.tables`` describing the key positions.
        dense: ``[batch, layers, heads, query, key]`` float16 probabilities.
        qk: queries and keys to recompute probabilities from (``store="qk"``).
    """

    name: str
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    query_table: str
    key_table: str
    dense: np.ndarray | None = None
    qk: QKAttention | None = None

    def __post_init__(self) -> None:
        if (self.dense is None) == (self.qk is None):
            raise ValueError("ModuleAttention needs exactly one of `dense` and `qk`")
        _, n_layers, n_heads, _, _ = self.shape
        if (n_layers, n_heads) != (len(self.layers), len(self.heads)):
            raise ValueError(
                f"module {self.name!r}: {n_layers} layers × {n_heads} heads stored but "
                f"{len(self.layers)} layer and {len(self.heads)} head labels given"
            )

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """``(batch, layers, heads, query, key)``."""
        if self.dense is not None:
            b, layers, heads, q, k = self.dense.shape
            return b, layers, heads, q, k
        assert self.qk is not None
        return self.qk.shape

    @property
    def store(self) -> str:
        """``"dense"`` or ``"qk"``."""
        return "dense" if self.dense is not None else "qk"

    def __repr__(self) -> str:  # the arrays are summarised, never printed
        b, _, _, q, k = self.shape
        return (
            f"ModuleAttention({self.name!r}, batch={b}, layers={list(self.layers)}, heads={list(self.heads)}, "
            f"{q}×{k}, store={self.store!r}, query_table={self.query_table!r}, key_table={self.key_table!r})"
        )

    def _layer_slots(self, layers: int | Sequence[int] | None) -> list[int]:
        return _slots(self.layers, layers, "layer", self.name)

    def _head_slots(self, heads: int | Sequence[int] | None) -> list[int]:
        return _slots(self.heads, heads, "head", self.name)

    def probs(
        self, batch_index: int = 0, layers: int | Sequence[int] | None = None, heads: int | Sequence[int] | None = None
    ) -> np.ndarray:
        """``[layers, heads, query, key]`` float32 probabilities of one batch item."""
        self._check_batch(batch_index)
        ls, hs = self._layer_slots(layers), self._head_slots(heads)
        if self.dense is not None:
            return self.dense[batch_index][np.ix_(ls, hs)].astype(np.float32)
        assert self.qk is not None
        return self.qk.dense(batch_index, ls, hs)

    def rows(
        self, queries: Sequence[int] | np.ndarray, batch_index: int = 0, layer: int = 0, head: int = 0
    ) -> np.ndarray:
        """``[len(queries), key]`` float32 probabilities of some query rows of one layer and head."""
        self._check_batch(batch_index)
        (li,), (hi,) = self._layer_slots(layer), self._head_slots(head)
        q = np.asarray(queries, dtype=np.int64).reshape(-1)
        if self.dense is not None:
            return self.dense[batch_index, li, hi, q].astype(np.float32)
        assert self.qk is not None
        return self.qk.rows(batch_index, li, hi, q)

    def thumbnails(self, batch_index: int = 0, size: int = 64) -> np.ndarray:
        """``[layers, heads, rows, cols]`` float32 block means, at most ``size`` cells per side."""
        self._check_batch(batch_index)
        if self.qk is not None:
            return self.qk.thumbnails(batch_index, size)
        assert self.dense is not None
        p = self.dense[batch_index]
        nq, nk = p.shape[-2:]
        q_edges = np.linspace(0, nq, min(size, nq) + 1).astype(np.int64)
        k_edges = np.linspace(0, nk, min(size, nk) + 1).astype(np.int64)
        sums = np.add.reduceat(np.add.reduceat(p.astype(np.float32), q_edges[:-1], axis=-2), k_edges[:-1], axis=-1)
        area = np.diff(q_edges)[:, None] * np.diff(k_edges)[None, :]
        return (sums / area).astype(np.float32)

    def _check_batch(self, batch_index: int) -> None:
        if not 0 <= batch_index < self.shape[0]:
            raise IndexError(f"batch_index {batch_index} is out of range: the trace holds {self.shape[0]} item(s)")


def _slots(labels: tuple[int, ...], wanted: int | Sequence[int] | None, what: str, module: str) -> list[int]:
    if wanted is None:
        return list(range(len(labels)))
    items = [wanted] if isinstance(wanted, (int, np.integer)) else list(wanted)
    slots = []
    for item in items:
        if int(item) not in labels:
            raise KeyError(
                f"{what} {item} was not captured in module {module!r} (captured: {list(labels)}); "
                f"capture it with mmviz.capture(..., {what}s=[...])"
            )
        slots.append(labels.index(int(item)))
    return slots


class AttentionTrace(Shown):
    """Attention captured from one model run, per module, with the token tables.

    Args:
        modules: captured modules by name.
        tables: token tables by name, one ``TokenTable`` per batch item.
        info: free-form JSON-able facts (model class, generation, capture options).
    """

    def __init__(
        self,
        modules: dict[str, ModuleAttention],
        tables: dict[str, Sequence[TokenTable]],
        info: dict[str, Any] | None = None,
    ) -> None:
        if not modules:
            raise ValueError("an AttentionTrace needs at least one module")
        self.modules = dict(modules)
        self.tables = {name: tuple(t) for name, t in tables.items()}
        self.info = dict(info or {})
        for m in self.modules.values():
            for table_name, length, side in ((m.query_table, m.shape[3], "query"), (m.key_table, m.shape[4], "key")):
                tabs = self.tables.get(table_name)
                if tabs is None or len(tabs) != m.shape[0]:
                    raise ValueError(
                        f"module {m.name!r}: {side} table {table_name!r} missing or not one per batch item"
                    )
                if any(len(t) != length for t in tabs):
                    raise ValueError(f"module {m.name!r}: {side} table {table_name!r} does not have {length} positions")

    # -- lookup ----------------------------------------------------------------------------------
    @property
    def default_module(self) -> str:
        """The language model when captured, else the only (or first) module."""
        return DEFAULT_MODULE if DEFAULT_MODULE in self.modules else next(iter(self.modules))

    @property
    def batch_size(self) -> int:
        """Number of batch items."""
        return self.module().shape[0]

    def module(self, name: str | None = None) -> ModuleAttention:
        """The ``ModuleAttention`` called ``name`` (default: ``default_module``)."""
        key = self.default_module if name is None else name
        if key not in self.modules:
            raise KeyError(f"no module {key!r} in this trace; captured modules: {list(self.modules)}")
        return self.modules[key]

    def tokens(self, module: str | None = None, batch_index: int = 0, side: str = "key") -> TokenTable:
        """The token table of a module's ``"query"`` or ``"key"`` positions for one batch item."""
        m = self.module(module)
        if side not in ("query", "key"):
            raise ValueError(f"side must be 'query' or 'key', not {side!r}")
        m._check_batch(batch_index)
        return self.tables[m.query_table if side == "query" else m.key_table][batch_index]

    # -- probabilities and reductions ------------------------------------------------------------
    def probs(
        self,
        module: str | None = None,
        batch_index: int = 0,
        layers: int | Sequence[int] | None = None,
        heads: int | Sequence[int] | None = None,
    ) -> np.ndarray:
        """Attention probabilities of one batch item.

        Args:
            module: module name (default: ``default_module``).
            batch_index: batch item.
            layers: model layer indices to return (default: all captured).
            heads: model head indices to return (default: all captured).

        Returns:
            ``[layers, heads, query, key]`` float32.
        """
        return self.module(module).probs(batch_index, layers, heads)

    def rows(
        self,
        queries: Sequence[int] | np.ndarray,
        module: str | None = None,
        batch_index: int = 0,
        layer: int = 0,
        head: int = 0,
    ) -> np.ndarray:
        """``[len(queries), key]`` probabilities of some query positions (cheap also for ``store="qk"``)."""
        return self.module(module).rows(queries, batch_index, layer, head)

    def thumbnails(self, module: str | None = None, batch_index: int = 0, size: int = 64) -> np.ndarray:
        """``[layers, heads, rows, cols]`` block-mean thumbnails of every captured layer and head."""
        return self.module(module).thumbnails(batch_index, size)

    def head_mean(
        self, module: str | None = None, batch_index: int = 0, layers: int | Sequence[int] | None = None
    ) -> np.ndarray:
        """``[layers, query, key]`` mean over the captured heads."""
        return reductions.head_mean(self.probs(module, batch_index, layers))

    def head_max(
        self, module: str | None = None, batch_index: int = 0, layers: int | Sequence[int] | None = None
    ) -> np.ndarray:
        """``[layers, query, key]`` maximum over the captured heads."""
        return reductions.head_max(self.probs(module, batch_index, layers))

    def rollout(self, module: str | None = None, batch_index: int = 0, residual: bool = True) -> np.ndarray:
        """``[layers, query, key]`` attention rollout up to each captured layer (see ``reductions.rollout``)."""
        m = self.module(module)
        if m.query_table != m.key_table:
            raise ValueError(f"rollout needs self-attention; module {m.name!r} is cross-attention")
        return reductions.rollout(m.probs(batch_index), residual=residual)

    def word_probs(
        self, module: str | None = None, batch_index: int = 0, layers: int | Sequence[int] | None = None
    ) -> tuple[np.ndarray, list[str], list[str]]:
        """Probabilities merged to words.

        Returns:
            ``([layers, heads, query_words, key_words]`` float32, query word texts, key word texts).
        """
        q_tab = self.tokens(module, batch_index, "query")
        k_tab = self.tokens(module, batch_index, "key")
        merged = reductions.merge_words(self.probs(module, batch_index, layers), q_tab.word_id, k_tab.word_id)
        return merged, [w for w, _ in q_tab.words()], [w for w, _ in k_tab.words()]

    # -- files -----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the trace to a ``.mmviz`` file (read it back with ``mmviz.load``)."""
        io.save(self, path, "attention")

    def to_payload(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Metadata and arrays for ``mmviz.data.io.save``."""
        arrays: dict[str, np.ndarray] = {}
        tables_meta: dict[str, list[dict[str, Any]]] = {}
        for t_index, (name, tabs) in enumerate(self.tables.items()):
            tables_meta[name] = []
            for b, tab in enumerate(tabs):
                meta, arr = tab.to_payload(f"table{t_index}.{b}")
                tables_meta[name].append(meta)
                arrays.update(arr)
        modules_meta = []
        for i, m in enumerate(self.modules.values()):
            entry: dict[str, Any] = {
                "name": m.name,
                "layers": list(m.layers),
                "heads": list(m.heads),
                "query_table": m.query_table,
                "key_table": m.key_table,
                "store": m.store,
                "prefix": f"module{i}",
            }
            if m.dense is not None:
                arrays[f"module{i}.dense"] = m.dense
            else:
                assert m.qk is not None
                qk = m.qk
                arrays.update(
                    {
                        f"module{i}.query": qk.query,
                        f"module{i}.key": qk.key,
                        f"module{i}.scaling": qk.scaling,
                        f"module{i}.head_index": qk.head_index,
                    }
                )
                if qk.mask is not None:
                    arrays[f"module{i}.mask"] = qk.mask
                entry.update(causal=qk.causal, softcap=qk.softcap, group=qk.group)
            modules_meta.append(entry)
        return {"modules": modules_meta, "tables": tables_meta, "info": self.info}, arrays

    @classmethod
    def from_payload(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> AttentionTrace:
        """Inverse of ``to_payload``."""
        tables: dict[str, Sequence[TokenTable]] = {
            name: [TokenTable.from_payload(t, arrays) for t in tabs] for name, tabs in meta["tables"].items()
        }
        modules = {}
        for entry in meta["modules"]:
            p = entry["prefix"]
            qk = None
            dense = None
            if entry["store"] == "dense":
                dense = arrays[f"{p}.dense"]
            else:
                qk = QKAttention(
                    query=arrays[f"{p}.query"],
                    key=arrays[f"{p}.key"],
                    scaling=arrays[f"{p}.scaling"],
                    mask=arrays.get(f"{p}.mask"),
                    causal=bool(entry["causal"]),
                    head_index=arrays[f"{p}.head_index"],
                    group=int(entry["group"]),
                    softcap=entry["softcap"],
                )
            modules[entry["name"]] = ModuleAttention(
                name=entry["name"],
                layers=tuple(entry["layers"]),
                heads=tuple(entry["heads"]),
                query_table=entry["query_table"],
                key_table=entry["key_table"],
                dense=dense,
                qk=qk,
            )
        return cls(modules, tables, meta.get("info"))

    # -- views -----------------------------------------------------------------------------------
    def show(self, **options: Any) -> AttentionView:
        """An interactive ``AttentionView`` of this trace.

        Args:
            **options: ``module=``, ``layer=``, ``head=``, ``batch_index=``, ``layers=``, ``heads=``,
                ``direction=``, ``hide_special=``, ``merge_words=``, ``cmap=``, ... (see AttentionView).
        """
        from mmviz.widgets import AttentionView

        return AttentionView(self, **options)

    def figure(self, **options: Any) -> Figure:
        """A matplotlib ``Figure`` of one attention selection, for composition or ``savefig``.

        Args:
            **options: ``module=``, ``layer=``, ``head=``, ``aggregate=``, ``token=``, ``batch_index=``,
                ``direction=``, ``hide_special=``, ``merge_words=``, ``cmap=``, ``title=``, ... (see
                ``mmviz.export.figures.attention_figure``).

        Returns:
            A ``matplotlib.figure.Figure`` (not attached to pyplot).
        """
        from mmviz.export.figures import attention_figure

        return attention_figure(self, **options)

    def __repr__(self) -> str:
        lines = [f"AttentionTrace(batch={self.batch_size})"]
        for m in self.modules.values():
            _, n_layers, n_heads, nq, nk = m.shape
            lines.append(f"  {m.name}: {n_layers} layers × {n_heads} heads, {nq}×{nk} ({m.store})")
        return "\n".join(lines)


io.register_type("attention", AttentionTrace.from_payload)
