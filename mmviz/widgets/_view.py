"""The view contract: what every mmviz view is and does, in one base class.

A view is an anywidget whose front end is one application of the bundle (``js/src/views/registry.ts``
picks it by ``KIND``). The base class owns what all views share:

* the bundle (``_esm``/``_css``), the view kind (``_view``), the title, notes, colormap and the
  exported-page flag;
* keyword checking: a subclass writes a typed ``__init__``; unknown keyword arguments are refused once,
  here, with the list of valid ones;
* requests from the browser: ``answer(content, buffers)`` returns the reply, and whoever hosts the view
  (the view itself, or a Dashboard it joined) sends it, so a view keeps answering after it joins a
  Dashboard;
* the exported state: every synced trait the view classes declare, within a byte budget
  (``export_state``), and ``save()`` to ``.html`` (one offline page) or ``.png``/``.svg``/``.pdf``
  (``figure()``, drawn by ``mmviz.export``);
* ``tokens()``: the input the view shows, which a Dashboard checks its panes against.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import anywidget
import traitlets

from mmviz import _codec
from mmviz._static import STATIC_DIR, asset
from mmviz.data.display import colormap_names
from mmviz.errors import BudgetError

if TYPE_CHECKING:
    from matplotlib.figure import Figure, SubFigure

    from mmviz.data.tokens import TokenTable

__all__ = ["COLORMAPS", "DEFAULT_BUDGET", "SAVE_FORMATS", "Reply", "View"]

COLORMAPS = colormap_names()
"""Colormaps the views and figures know (``mmviz/colormaps.json``); viridis is the default."""

DEFAULT_BUDGET = 16_000_000
"""Bytes of binary data a view's state (and each view of an exported page) may hold by default."""

SAVE_FORMATS = ("html", "png", "svg", "pdf")
"""File types ``View.save`` writes."""

Reply = tuple[dict[str, Any], list[Any]]
"""A reply to the browser: JSON content and binary buffers."""


def _bundle(name: str) -> Any:
    path = STATIC_DIR / name
    # A missing bundle must not break `import mmviz.widgets`: the error comes when a view is made.
    return path if path.is_file() else "export default { render() {} };\n"


def trace_title(title: str | None, trace: Any) -> str:
    """A view's heading: ``title``, marked when the trace is partial (the run stopped before it ended)."""
    text = str(title or "")
    if getattr(trace, "complete", True) is False:
        mark = "partial trace: the run stopped early"
        text = f"{text} ({mark})" if text else mark.capitalize()
    return text


def _keywords(init: Callable[..., Any]) -> list[str]:
    params = inspect.signature(init).parameters.values()
    return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"]


class View(anywidget.AnyWidget):
    """Base class of every mmviz view (``AttentionView``, ``AttributionView``, ``CrossAttentionView``, ...).

    Subclasses set ``KIND`` (the front-end application), declare their synced traits, and implement
    ``tokens()`` and ``figure()``; views that serve data on request implement ``answer()``.
    """

    KIND: ClassVar[str] = ""
    """The front-end application that renders the view (``js/src/views/registry.ts``)."""
    TRIM: ClassVar[str] = "raise budget="
    """What a user can do when the exported state is over budget (ends the ``BudgetError`` message)."""

    _esm = _bundle("widget.js")
    _css = _bundle("widget.css")

    _view = traitlets.Unicode("").tag(sync=True)
    _title = traitlets.Unicode("").tag(sync=True)
    _notes: traitlets.List[str] = traitlets.List(traitlets.Unicode()).tag(sync=True)
    _standalone = traitlets.Bool(False).tag(sync=True)
    cmap = traitlets.Enum(COLORMAPS, default_value="viridis").tag(sync=True)
    """Colormap name (``COLORMAPS``)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_mmviz_checked", False):
            return
        valid = _keywords(init)
        accepts_any = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(init).parameters.values())

        @functools.wraps(init)
        def checked(self: View, *args: Any, **options: Any) -> None:
            unknown = sorted(set(options) - set(valid))
            if unknown and not accepts_any:
                raise TypeError(
                    f"{cls.__name__} got unexpected keyword argument(s) {unknown}; valid options: {', '.join(valid)}"
                )
            init(self, *args, **options)

        checked._mmviz_checked = True  # type: ignore[attr-defined]
        cls.__init__ = checked  # type: ignore[method-assign]

    def __init__(self, *, title: str | None = None, budget: int = DEFAULT_BUDGET, **traits: Any) -> None:
        asset("widget.js")
        asset("widget.css")
        if not isinstance(budget, int) or budget <= 0:
            raise ValueError(f"budget must be a positive number of bytes, not {budget!r}")
        self.budget = budget
        super().__init__(_view=self.KIND, _title=str(title or ""), **traits)
        self.on_msg(self._on_msg)

    # -- what the view shows -----------------------------------------------------------------------------
    def tokens(self) -> TokenTable:
        """The token table of the input this view shows (a Dashboard checks its panes against it)."""
        raise NotImplementedError(f"{type(self).__name__} does not say which input it shows")

    def show(self) -> View:
        """The view itself (the last expression of a cell displays it)."""
        return self

    # -- the browser's requests ----------------------------------------------------------------------------
    def answer(self, content: dict[str, Any], buffers: Sequence[Any]) -> Reply | None:
        """The reply to a request from the front end, or ``None`` (views that hold all their data)."""
        return None

    def _on_msg(self, _widget: Any, content: Any, buffers: Sequence[Any]) -> None:
        if not isinstance(content, dict):
            return
        reply = self.answer(content, buffers)
        if reply is not None:
            self.send(reply[0], buffers=reply[1])

    # -- export --------------------------------------------------------------------------------------------
    @classmethod
    def state_names(cls) -> list[str]:
        """The synced traits the view classes declare: what an exported page embeds."""
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            if isinstance(klass, type) and issubclass(klass, View):
                for name, value in vars(klass).items():
                    if isinstance(value, traitlets.TraitType) and value.metadata.get("sync") and name not in names:
                        names.append(name)
        return names

    def export_state(self, budget: int | None = None) -> dict[str, Any]:
        """The state an exported page embeds: every declared synced trait, with ``_standalone`` set.

        Args:
            budget: bytes the state may hold (default: the view's ``budget``).

        Raises:
            BudgetError: the state exceeds ``budget``; the message says what to trim.
        """
        budget = self.budget if budget is None else budget
        state: dict[str, Any] = {name: getattr(self, name) for name in self.state_names()}
        state["_standalone"] = True
        need = _codec.payload_nbytes(state)
        if need > budget:
            raise BudgetError(
                f"{type(self).__name__}: the page would embed {need / 1e6:.1f} MB, over the export budget of "
                f"{budget / 1e6:.1f} MB; {self.TRIM}"
            )
        return state

    def figure(self, **options: Any) -> Figure | SubFigure:
        """A matplotlib ``Figure`` of what the view shows now (drawn by ``mmviz.export``; ``into=`` a subfigure)."""
        raise NotImplementedError(f"{type(self).__name__} has no figure")

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        title: str | None = None,
        notes: str | None = None,
        budget: int | None = None,
        dpi: float | None = None,
    ) -> Path:
        """Writes the view to a file; the extension picks what is written.

        ``.html``/``.htm``: one self-contained, interactive page (see ``mmviz.save_html``).
        ``.png``, ``.svg``, ``.pdf``: a matplotlib figure of what the view shows now (``figure()``); SVG and
        PDF keep text as text.

        Args:
            path: file to write.
            title: page heading (HTML) or figure title (default: the view's title).
            notes: text under the page heading (HTML only).
            budget: bytes the page may embed (HTML only).
            dpi: resolution of a PNG (default 200).

        Returns:
            The path written.

        Raises:
            ValueError: another extension (the message lists the ones written).
        """
        from mmviz.export.figures import check_format

        if check_format(path, SAVE_FORMATS) == "html":
            from mmviz.export import save_html

            return save_html([self], path, title=title, notes=notes, budget=budget)
        from matplotlib.figure import Figure

        from mmviz.export.figures import save_figure

        fig = self.figure(**({"title": title} if title else {}))
        assert isinstance(fig, Figure), "figure() without into= returns a whole Figure"
        return save_figure(fig, path, dpi=dpi)
