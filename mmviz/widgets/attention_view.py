"""AttentionView: linked token strip, image patches, attention matrix and layers × heads thumbnails.

The trace stays in Python. The widget state holds the token tables, per-head thumbnails (with head mean
and max) and the selected attention map; the browser asks for other maps over custom messages and this
class answers with binary payloads. Hover linking happens entirely in the browser (``js/src/store.ts``).
Durable selections are traits: ``view.observe(fn, names=["layer"])`` and ``view.layer = 3`` both work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import traitlets

from mmviz.data.attention import AttentionTrace
from mmviz.data.display import AGGREGATES
from mmviz.errors import BudgetError
from mmviz.widgets import _state
from mmviz.widgets._view import DEFAULT_BUDGET, Reply, View, trace_title

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mmviz.data.tokens import TokenTable

__all__ = ["DEFAULT_EXPORT_BUDGET", "AttentionView"]

DEFAULT_EXPORT_BUDGET = 16_000_000
"""Bytes of attention maps an HTML export embeds per view."""


class AttentionView(View):
    """Linked, interactive view of an ``AttentionTrace`` (``trace.show(...)``).

    Args:
        trace: the trace to show.
        module: module shown first (default: the language model, else the first module).
        layer: model layer shown first (default: the last captured layer).
        head: model head shown first; ``None`` shows the mean over heads.
        aggregate: ``"head"``, ``"mean"``, ``"max"`` or ``"rollout"`` (default: ``"head"`` when ``head`` is
            given, else ``"mean"``).
        token: query position pinned at start (``-1``: none).
        batch_index: batch item to show.
        modules: modules offered by the module selector (default: all captured).
        layers: model layers to offer (default: all captured); trims the state.
        heads: model heads to offer (default: all captured); trims the state.
        direction: colour tokens by the attention they pay (``"from"``) or receive (``"to"``).
        hide_special: hide special and padding tokens, renormalising each row over the rest.
        merge_words: merge subword tokens into words.
        cmap: colormap (``mmviz.widgets.COLORMAPS``).
        title: heading shown above the view.
        thumb_size: thumbnail cells per side (at least 1).
        max_matrix: most rows/columns of an attention map sent to the browser (at least 1); bigger maps
            are block-averaged (a 4096-token trace opens with 1024 × 1024 cells).
        budget: bytes of binary data the initial state may hold.

    Raises:
        BudgetError: the initial state would exceed ``budget``; the message names ``layers=``,
            ``heads=`` and ``module=``/``modules=``.
        TypeError: an unknown keyword argument (the message lists the valid ones).
        IndexError: ``token`` is not a query position of the module shown.
    """

    KIND = "attention"

    module = traitlets.Unicode().tag(sync=True)
    """Selected module name."""
    layer = traitlets.Int(0).tag(sync=True)
    """Selected model layer index."""
    head = traitlets.Int(0).tag(sync=True)
    """Selected model head index (when ``aggregate == "head"``)."""
    aggregate = traitlets.Enum(AGGREGATES, default_value="head").tag(sync=True)
    """``"head"`` or a reduction over heads: ``"mean"``, ``"max"``, ``"rollout"``."""
    token = traitlets.Int(-1).tag(sync=True)
    """Pinned query position, ``-1`` for none (clicking a token pins it)."""
    direction = traitlets.Enum(("from", "to"), default_value="from").tag(sync=True)
    """Colour tokens by the attention they pay (``"from"``) or receive (``"to"``)."""
    hide_special = traitlets.Bool(False).tag(sync=True)
    """Hide special and padding tokens, renormalising rows."""
    merge_words = traitlets.Bool(False).tag(sync=True)
    """Merge subword tokens into words."""
    batch_index = traitlets.Int(0).tag(sync=True)
    """Batch item shown (setting it re-sends the tables and thumbnails)."""

    _modules: traitlets.List[dict[str, Any]] = traitlets.List().tag(sync=True)
    _tables = traitlets.Dict().tag(sync=True)
    _thumbs = traitlets.Dict().tag(sync=True)
    _slices = traitlets.Dict().tag(sync=True)

    def __init__(
        self,
        trace: AttentionTrace,
        *,
        module: str | None = None,
        layer: int | None = None,
        head: int | None = None,
        aggregate: str | None = None,
        token: int = -1,
        batch_index: int = 0,
        modules: Sequence[str] | None = None,
        layers: int | Sequence[int] | None = None,
        heads: int | Sequence[int] | None = None,
        direction: str = "from",
        hide_special: bool = False,
        merge_words: bool = False,
        cmap: str = "viridis",
        title: str | None = None,
        thumb_size: int = 32,
        max_matrix: int = 1024,
        budget: int = DEFAULT_BUDGET,
    ) -> None:
        if not isinstance(trace, AttentionTrace):
            raise TypeError(f"AttentionView needs an AttentionTrace, not {type(trace).__name__}")
        for name, value in (("thumb_size", thumb_size), ("max_matrix", max_matrix)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number of cells, at least 1, not {value!r}")
        self.trace = trace
        self.thumb_size = thumb_size
        self.max_matrix = max_matrix
        self.budget = budget
        names = list(modules or trace.modules)
        for name in names:
            trace.module(name)  # KeyError naming the captured modules
        module = module or (trace.default_module if trace.default_module in names else names[0])
        if module not in names:
            names.insert(0, trace.module(module).name)
        self._layer_filter = _labels(layers)
        self._head_filter = _labels(heads)
        self._module_names = names
        trace.module(module)._check_batch(batch_index)
        described = self._describe_modules()
        first = next(m for m in described if m["name"] == module)
        if not -1 <= token < first["n_query"]:
            raise IndexError(
                f"token {token} is not a query position of {module!r}: it has {first['n_query']} "
                "(0 … n - 1; -1 pins nothing)"
            )
        super().__init__(
            title=trace_title(title, trace),
            budget=budget,
            module=module,
            layer=first["layers"][-1] if layer is None else int(layer),
            head=first["heads"][0] if head is None else int(head),
            aggregate=aggregate or ("mean" if head is None else "head"),
            token=token,
            batch_index=batch_index,
            direction=direction,
            hide_special=bool(hide_special),
            merge_words=bool(merge_words),
            cmap=cmap,
            _modules=described,
        )
        self._check_selection()
        self._load_batch()

    def tokens(self) -> TokenTable:
        """The query token table of the module shown, for the batch item shown."""
        m = self.trace.module(self.module)
        return self.trace.tables[m.query_table][self.batch_index]

    # -- state ---------------------------------------------------------------------------------------
    def _describe_modules(self) -> list[dict[str, Any]]:
        out = []
        for name in self._module_names:
            m = self.trace.module(name)
            layers = [lab for lab in m.layers if self._layer_filter is None or lab in self._layer_filter]
            heads = [lab for lab in m.heads if self._head_filter is None or lab in self._head_filter]
            if not layers or not heads:
                raise KeyError(
                    f"module {name!r} has none of the requested layers/heads (captured layers {list(m.layers)}, "
                    f"heads {list(m.heads)}); pass modules=[...] to leave it out"
                )
            out.append(_state.module_state(self.trace, name, layers, heads, self.max_matrix))
        return out

    def _initial_nbytes(self) -> int:
        total = 0
        seen_tables: set[str] = set()
        for m in self._modules:
            total += _state.thumbs_nbytes(len(m["layers"]), len(m["heads"]), m["n_query"], m["n_key"], self.thumb_size)
            for table in (m["query_table"], m["key_table"]):
                if table not in seen_tables:
                    seen_tables.add(table)
                    tab = self.trace.tables[table][self.batch_index]
                    total += 16 * len(tab) + sum(im.nbytes for im in tab.images)
        m = next(m for m in self._modules if m["name"] == self.module)
        total += _state.map_nbytes(m["n_query"], m["n_key"], m["q_step"], m["k_step"])
        return total

    def _load_batch(self) -> None:
        need = self._initial_nbytes()
        if need > self.budget:
            sizes = ", ".join(f"{m['name']!r}: {len(m['layers'])}×{len(m['heads'])}" for m in self._modules)
            raise BudgetError(
                f"AttentionView: the initial state would hold {need / 1e6:.1f} MB, over the budget of "
                f"{self.budget / 1e6:.1f} MB (modules, layers × heads: {sizes}). Show less with "
                f"layers=[...], heads=[...] or module='...' with modules=['...'], use a smaller thumb_size=, "
                f"or raise budget=."
            )
        self.source = _state.SliceSource(self.trace, self.batch_index, self.max_matrix)
        tables: dict[str, Any] = {}
        thumbs: dict[str, Any] = {}
        for m in self._modules:
            for table in (m["query_table"], m["key_table"]):
                if table not in tables:
                    tables[table] = _state.table_state(self.trace.tables[table][self.batch_index])
            thumbs[m["name"]] = self.source.thumbnails(m["name"], m["layers"], m["heads"], self.thumb_size)
        notes = []
        for m in self._modules:
            if m["q_step"] > 1 or m["k_step"] > 1:
                notes.append(
                    f"{m['name']}: the {m['n_query']}×{m['n_key']} matrix is shown averaged over blocks of "
                    f"{m['q_step']}×{m['k_step']} cells (max_matrix={self.max_matrix}); word merge and hiding "
                    "are off there."
                )
        key = self._key()
        with self.hold_sync():
            self._tables = tables
            self._thumbs = thumbs
            self._notes = notes
            self._slices = {key.key: self.source.payload(key)}

    def _key(self) -> _state.MapKey:
        return _state.MapKey(self.module, self.layer, self.aggregate, self.head)

    def _check_selection(self) -> None:
        m = next((m for m in self._modules if m["name"] == self.module), None)
        if m is None:
            raise KeyError(f"module {self.module!r} is not in this view; modules: {self._module_names}")
        if self.layer not in m["layers"]:
            raise KeyError(f"layer {self.layer} is not shown for module {self.module!r}; layers: {m['layers']}")
        if self.aggregate == "head" and self.head not in m["heads"]:
            raise KeyError(f"head {self.head} is not shown for module {self.module!r}; heads: {m['heads']}")
        if self.aggregate == "rollout" and not m["self_attention"]:
            raise ValueError(f"rollout needs self-attention; module {self.module!r} is cross-attention")

    @traitlets.validate("module", "layer", "head", "aggregate")
    def _valid_selection(self, proposal: dict[str, Any]) -> Any:
        modules = {m["name"]: m for m in self._modules}
        if not modules:  # still constructing: __init__ checks once everything is set
            return proposal["value"]
        name, value = proposal["trait"].name, proposal["value"]
        module = modules.get(value if name == "module" else self.module)
        if module is None:
            raise traitlets.TraitError(f"module {value!r} is not in this view; modules: {list(modules)}")
        if name == "layer" and value not in module["layers"]:
            raise traitlets.TraitError(f"layer {value} is not shown for {module['name']!r}; layers: {module['layers']}")
        if name == "head" and value not in module["heads"]:
            raise traitlets.TraitError(f"head {value} is not shown for {module['name']!r}; heads: {module['heads']}")
        if name == "aggregate" and value == "rollout" and not module["self_attention"]:
            raise traitlets.TraitError(f"rollout needs self-attention; {module['name']!r} is cross-attention")
        return value

    @traitlets.observe("module")
    def _on_module(self, change: dict[str, Any]) -> None:
        module = next((m for m in self._modules if m["name"] == change["new"]), None)
        if module is None:
            return
        with self.hold_trait_notifications():
            if self.layer not in module["layers"]:
                self.set_trait("layer", module["layers"][-1])
            if self.head not in module["heads"]:
                self.set_trait("head", module["heads"][0])
            if self.aggregate == "rollout" and not module["self_attention"]:
                self.set_trait("aggregate", "mean")

    @traitlets.observe("batch_index")
    def _on_batch(self, change: dict[str, Any]) -> None:
        if hasattr(self, "source") and change["new"] != self.source.batch_index:
            self.trace.module(self.module)._check_batch(change["new"])
            self._load_batch()

    # -- requests ------------------------------------------------------------------------------------
    def answer(self, content: dict[str, Any], buffers: Sequence[Any]) -> Reply | None:
        """Serves an attention map the browser asks for (``{"type": "slice", module, layer, aggregate, head}``)."""
        if content.get("type") != "slice":
            return None
        try:
            key = _state.MapKey(
                str(content.get("module")),
                int(content.get("layer", 0)),
                str(content.get("aggregate", "head")),
                int(content.get("head", 0)),
            )
            payload = self.source.payload(key)
        except (KeyError, ValueError, IndexError, TypeError) as err:
            return {"type": "slice", "key": content.get("key", ""), "error": str(err)}, []
        meta = {k: payload[k] for k in ("dtype", "shape", "axes")}
        return {"type": "slice", "key": key.key, **meta}, [payload["data"], payload["scale"], payload["offset"]]

    # -- export --------------------------------------------------------------------------------------
    def export_state(self, budget: int | None = None) -> dict[str, Any]:
        """The state an exported page embeds: the view's state plus as many attention maps as fit.

        Maps are chosen in order: the current selection; the head mean of every layer; every head of
        the current layer; the head max of every layer; the rollout of the current layer; then the
        other layers' heads, nearest layer first. What is left out is listed in ``_notes``.

        Args:
            budget: bytes of attention maps to embed (default 16 MB).

        Returns:
            A JSON-able dict whose binary leaves are ``bytes``.
        """
        from mmviz.widgets._export import choose_maps

        chosen, notes = choose_maps(self, DEFAULT_EXPORT_BUDGET if budget is None else budget)
        state: dict[str, Any] = {name: getattr(self, name) for name in self.state_names()}
        state.update(
            _slices={key.key: self.source.payload(key) for key in chosen},
            _notes=[*self._notes, *notes],
            _standalone=True,
        )
        return state

    def figure(self, **options: Any) -> Figure:
        """A matplotlib ``Figure`` of the current selection (see ``mmviz.export.figures.attention_figure``).

        Args:
            **options: overrides of the selection (``layer=``, ``head=``, ``token=``, ...) and figure
                options (``max_labels=``, ``images=``, ``figsize=``, ``title=``, ``into=``).
        """
        from mmviz.export.figures import view_figure

        return view_figure(self, **options)


def _labels(value: Any) -> set[int] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, int) else list(value)
    return {int(v) for v in items}
