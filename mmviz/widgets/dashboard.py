"""Dashboard: views of one input in one widget, linked in the browser through one store.

``mmviz.Dashboard(cap.attention, attr).show()`` puts a pane per view side by side in one widget with one
ES module. The front end creates one link store (``js/src/link.ts``) and hands it to every pane: a token,
word or image patch pointed at in one pane lights up in the others, without a kernel round trip and
without any pane knowing another's DOM. Panes that serve data on request (the attention pane's maps)
ask through this widget; the Dashboard passes the request to the pane's view and sends its answer back,
so a view shown on its own before keeps working after it joins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import traitlets

from mmviz.data.attribution import Attribution
from mmviz.widgets._inputs import check_same_input
from mmviz.widgets._view import View
from mmviz.widgets.attention_view import DEFAULT_EXPORT_BUDGET
from mmviz.widgets.attribution_view import AttributionView

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mmviz.data.tokens import TokenTable

__all__ = ["Dashboard"]


def _panes(items: Sequence[Any], options: dict[str, Any]) -> list[View]:
    """One view per item; consecutive attributions (or a list of them) share an AttributionView."""
    panes: list[View] = []
    pending: list[Attribution] = []

    def flush() -> None:
        if pending:
            panes.append(AttributionView(list(pending)))
            pending.clear()

    for item in items:
        if isinstance(item, Attribution):
            pending.append(item)
            continue
        flush()
        if isinstance(item, Sequence) and item and all(isinstance(a, Attribution) for a in item):
            panes.append(AttributionView(list(item)))
        elif isinstance(item, View):
            panes.append(item)
        elif callable(getattr(item, "show", None)) and hasattr(item, "save"):  # a trace: its own view
            panes.append(item.show(**options) if options and _is_attention(item) else item.show())
        else:
            raise TypeError(
                f"Dashboard shows mmviz traces, attributions and views, not {type(item).__name__} "
                "(pass cap.attention, cap.cross_attention, an Attribution or a view)"
            )
    flush()
    return panes


def _is_attention(item: Any) -> bool:
    from mmviz.data.attention import AttentionTrace

    return isinstance(item, AttentionTrace)


class Dashboard(View):
    """Linked composite of views of one input: attention, attributions, cross-attention and every later view.

    Example::

        mmviz.Dashboard(cap.attention, attr).show()
        mmviz.Dashboard(trace.show(layer=5), [ig, saliency], title="why 'red'?").save("why.html")
        mmviz.Dashboard(diffusion_cap.cross_attention, encoder_cap.attention)   # words link to the encoder

    Args:
        *items: traces (each shown with its own view), views, and ``Attribution``s or lists of them
            (consecutive attributions share one pane with a selector, also when their targets differ).
        title: heading of the dashboard.
        **options: passed to the AttentionView of every attention trace given (``layer=``, ``head=``, ...).

    Raises:
        TypeError: an item is not a trace, an attribution or a view.
        InputMismatchError: the panes show different inputs; the message names the two panes and the
            token texts that differ.
    """

    KIND = "dashboard"

    _panes: traitlets.List[dict[str, Any]] = traitlets.List().tag(sync=True)

    def __init__(self, *items: Any, title: str | None = None, **options: Any) -> None:
        self.panes: list[View] = _panes(items, options)
        if not self.panes:
            raise ValueError("Dashboard needs at least one trace, attribution or view")
        check_same_input([(f"pane {i} ({p.KIND})", p.tokens()) for i, p in enumerate(self.panes)])
        super().__init__(title=title, _panes=[self._pane_state(p, live=True) for p in self.panes])

    @staticmethod
    def _pane_state(pane: View, live: bool, budget: int | None = None) -> dict[str, Any]:
        state = pane.export_state(DEFAULT_EXPORT_BUDGET if budget is None else budget)
        state["_standalone"] = not live
        return {"kind": pane.KIND, "state": state}

    def tokens(self) -> TokenTable:
        """The input every pane shows (the first pane's token table)."""
        return self.panes[0].tokens()

    # -- requests ------------------------------------------------------------------------------------
    def answer(self, content: dict[str, Any], buffers: Sequence[Any]) -> tuple[dict[str, Any], list[Any]] | None:
        """Passes a pane's request (``{"pane": i, "content": ...}``) to its view and wraps the view's answer."""
        index = content.get("pane")
        if not isinstance(index, int) or not 0 <= index < len(self.panes):
            return None
        inner = content.get("content")
        reply = self.panes[index].answer(inner if isinstance(inner, dict) else {}, buffers)
        if reply is None:
            return None
        return {"pane": index, "content": reply[0]}, reply[1]

    # -- export --------------------------------------------------------------------------------------
    def export_state(self, budget: int | None = None) -> dict[str, Any]:
        """The state an exported page embeds: every pane's export state (each within ``budget``)."""
        return {
            "_view": self._view,
            "_title": self._title,
            "_notes": self._notes,
            "cmap": self.cmap,
            "_panes": [self._pane_state(p, live=False, budget=budget) for p in self.panes],
            "_standalone": True,
        }

    def figure(self, **options: Any) -> Figure:
        """A matplotlib ``Figure`` of every pane's current selection, one subfigure per pane, top to bottom.

        Args:
            **options: ``title=`` (default: the dashboard's title, if any), ``pane_height=`` (inches per pane,
                default 6.5), ``width=`` (inches, default 12).
        """
        from matplotlib.figure import Figure

        title, pane_height, width = (
            options.pop("title", None),
            options.pop("pane_height", 6.5),
            options.pop("width", 12.0),
        )
        if options:
            raise TypeError(
                f"Dashboard.figure got unexpected option(s) {sorted(options)}; valid: title, pane_height, width"
            )

        fig = Figure(figsize=(width, pane_height * len(self.panes)), layout="constrained")
        subfigures = fig.subfigures(len(self.panes), 1, squeeze=False)[:, 0]
        for pane, sub in zip(self.panes, subfigures):
            pane.figure(into=sub)
        heading = title or self._title
        if heading:
            fig.suptitle(heading, fontsize=13, parse_math=False)
        return fig
