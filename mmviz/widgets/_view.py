"""What every view shares: checking its keyword options, and saving to HTML or to a figure."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmviz import _codec
from mmviz._static import asset
from mmviz.errors import BudgetError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SAVE_FORMATS = ("html", "png", "svg", "pdf")


def check_options(view: str, options: Mapping[str, Any], valid: Iterable[str]) -> None:
    """Refuses unknown keyword arguments, naming the valid ones, and checks the front end is built.

    Raises:
        TypeError: an unknown keyword argument.
        MissingBundleError: the JavaScript bundle is missing (the message names the build command).
    """
    allowed = list(valid)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"{view} got unexpected keyword argument(s) {unknown}; valid options: {', '.join(allowed)}")
    asset("widget.js")
    asset("widget.css")


def save_view(
    view: Any,
    path: str | os.PathLike[str],
    figure: Callable[[], Figure],
    *,
    title: str | None = None,
    notes: str | None = None,
    budget: int | None = None,
    dpi: float | None = None,
) -> Path:
    """Writes a view: ``.html`` (one offline page) or ``.png``/``.svg``/``.pdf`` (``figure()`` drawn by matplotlib).

    Raises:
        ValueError: another extension (the message lists the ones written).
    """
    from mmviz.export.figures import check_format

    if check_format(path, SAVE_FORMATS) == "html":
        from mmviz.export import save_html

        return save_html([view], path, title=title, notes=notes, budget=budget)
    from mmviz.export.figures import save_figure

    return save_figure(figure(), path, dpi=dpi)


def embedded_state(view: Any, view_name: str, names: Iterable[str], budget: int, trim: str) -> dict[str, Any]:
    """The traits ``names`` of a view as an exported page embeds them, checked against a size budget.

    Args:
        view: the view.
        view_name: its class name, for the message.
        names: the traits to embed.
        budget: bytes the page may hold.
        trim: what the user can do instead, ending the message (e.g. ``"show fewer layers ..."``).

    Raises:
        BudgetError: the state exceeds ``budget``.
    """
    state: dict[str, Any] = {name: getattr(view, name) for name in names}
    state["_standalone"] = True
    need = _codec.payload_nbytes(state)
    if need > budget:
        raise BudgetError(
            f"{view_name}: the page would embed {need / 1e6:.1f} MB, over the export budget of "
            f"{budget / 1e6:.1f} MB; {trim}"
        )
    return state
