"""Dashboard: attention and attribution panes of one input in one widget, linked in the browser.

``mmviz.Dashboard(cap.attention, attr).show()`` puts an attention pane (the AttentionView's application)
and an attribution pane (the AttributionView's) side by side in one widget with one ES module; hovering a
token or an image patch in either pane highlights the same position in the other, without a kernel
round trip. In Jupyter the attention pane asks this widget for maps it does not hold, as the
AttentionView does; an exported page embeds what fits the budget.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anywidget
import traitlets

from mmviz._static import STATIC_DIR, asset
from mmviz.data.attention import AttentionTrace
from mmviz.data.attribution import Attribution
from mmviz.widgets._view import save_view
from mmviz.widgets.attention_view import DEFAULT_EXPORT_BUDGET, AttentionView
from mmviz.widgets.attribution_view import AttributionView

__all__ = ["Dashboard"]


def _bundle(name: str) -> Any:
    path = STATIC_DIR / name
    return path if path.is_file() else "export default { render() {} };\n"


class Dashboard(anywidget.AnyWidget):
    """Linked composite of attention traces and attributions of one input.

    Example::

        mmviz.Dashboard(cap.attention, attr).show()
        mmviz.Dashboard(trace.show(layer=5), [ig, saliency], title="why 'red'?").save("why.html")

    Args:
        *items: ``AttentionTrace``s or ``AttentionView`` s (one attention pane each),
            and ``Attribution``s, lists of them or ``AttributionView`` s (consecutive
            attributions share one pane with a selector).
        title: heading of the dashboard.
        **options: passed to every attention pane built from a trace (``layer=``, ``head=``, ...).

    Raises:
        TypeError: an item is neither attention nor attribution.
    """

    _esm = _bundle("widget.js")
    _css = _bundle("widget.css")

    _view = traitlets.Unicode("dashboard").tag(sync=True)
    _title = traitlets.Unicode("").tag(sync=True)
    _panes: traitlets.List[dict[str, Any]] = traitlets.List().tag(sync=True)
    _standalone = traitlets.Bool(False).tag(sync=True)

    def __init__(self, *items: Any, title: str | None = None, **options: Any) -> None:
        asset("widget.js")
        asset("widget.css")
        self.panes: list[AttentionView | AttributionView] = []
        pending: list[Attribution] = []

        def flush() -> None:
            if pending:
                self.panes.append(AttributionView(list(pending)))
                pending.clear()

        for item in items:
            if isinstance(item, Attribution):
                pending.append(item)
            elif isinstance(item, Sequence) and item and all(isinstance(a, Attribution) for a in item):
                flush()
                self.panes.append(AttributionView(list(item)))
            elif isinstance(item, AttributionView):
                flush()
                self.panes.append(item)
            elif isinstance(item, AttentionTrace):
                flush()
                self.panes.append(AttentionView(item, **options))
            elif isinstance(item, AttentionView):
                flush()
                self.panes.append(item)
            else:
                raise TypeError(
                    f"Dashboard shows AttentionTraces, Attributions and their views, not {type(item).__name__}"
                )
        flush()
        if not self.panes:
            raise ValueError("Dashboard needs at least one attention trace or attribution")
        super().__init__(_title=str(title or ""), _panes=[self._pane_state(p, live=True) for p in self.panes])
        for i, pane in enumerate(self.panes):
            if isinstance(pane, AttentionView):
                pane.send = self._sender(i)
        self.on_msg(self._on_msg)

    @staticmethod
    def _pane_state(pane: AttentionView | AttributionView, live: bool, budget: int | None = None) -> dict[str, Any]:
        kind = "attention" if isinstance(pane, AttentionView) else "attribution"
        if isinstance(pane, AttentionView):
            state = pane.export_state(DEFAULT_EXPORT_BUDGET if budget is None else budget)
        else:
            state = pane.export_state() if budget is None else pane.export_state(budget)
        state["_standalone"] = not live
        return {"kind": kind, "state": state}

    def _sender(self, index: int) -> Any:
        def send(content: dict[str, Any], buffers: Any = None) -> None:
            self.send({"pane": index, "content": content}, buffers=buffers)

        return send

    def _on_msg(self, _widget: Any, content: dict[str, Any], buffers: Sequence[Any]) -> None:
        if not isinstance(content, dict) or not isinstance(content.get("pane"), int):
            return
        index = content["pane"]
        if 0 <= index < len(self.panes) and isinstance(self.panes[index], AttentionView):
            view = self.panes[index]
            assert isinstance(view, AttentionView)
            view._on_msg(view, content.get("content") or {}, buffers)

    def show(self) -> Dashboard:
        """The widget itself (the last expression of a cell displays it)."""
        return self

    # -- export --------------------------------------------------------------------------------------
    def export_state(self, budget: int = DEFAULT_EXPORT_BUDGET) -> dict[str, Any]:
        """The state an exported page embeds: every pane's export state (each within ``budget``)."""
        return {
            "_view": self._view,
            "_title": self._title,
            "_panes": [self._pane_state(p, live=False, budget=budget) for p in self.panes],
            "_standalone": True,
        }

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        title: str | None = None,
        notes: str | None = None,
        budget: int | None = None,
        dpi: float | None = None,
    ) -> Path:
        """Writes the dashboard to a file; the extension picks what is written.

        ``.html``/``.htm``: one self-contained, interactive page (see ``mmviz.save_html``).
        ``.png``, ``.svg``, ``.pdf``: every pane's current selection drawn by matplotlib, one under the other
        (see ``figure``).

        Args:
            path: file to write.
            title: page heading (HTML) or figure title (default: the dashboard's title).
            notes: text under the page heading (HTML only).
            budget: bytes the page may embed (HTML only).
            dpi: resolution of a PNG (default 200).

        Raises:
            ValueError: another extension (the message lists the ones it writes).
        """
        return save_view(self, path, lambda: self.figure(title=title), title=title, notes=notes, budget=budget, dpi=dpi)

    def figure(self, title: str | None = None, pane_height: float = 6.5, width: float = 12.0) -> Any:
        """A matplotlib ``Figure`` of every pane's current selection, one subfigure per pane, top to bottom.

        Args:
            title: figure title (default: the dashboard's title, if any).
            pane_height: inches per pane.
            width: inches.
        """
        from matplotlib.figure import Figure

        fig = Figure(figsize=(width, pane_height * len(self.panes)), layout="constrained")
        subfigures = fig.subfigures(len(self.panes), 1, squeeze=False)[:, 0]
        for pane, sub in zip(self.panes, subfigures):
            pane.figure(into=sub)
        heading = title or self._title
        if heading:
            fig.suptitle(heading, fontsize=13, parse_math=False)
        return fig
