"""What every view shares: checking its keyword options, and saving to HTML or to a figure."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmviz._static import asset

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
