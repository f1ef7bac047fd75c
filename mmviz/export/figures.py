"""Matplotlib figures of an attention view's current selection, for papers, reports and slides.

``attention_figure`` draws what an ``AttentionView`` shows for one selection
(module, layer, head or a reduction over heads, pinned token, direction, hiding, word merge, colormap):
the attention matrix with token labels and a colorbar, plus the pinned token's attention over each image
as a translucent overlay. ``save_figure`` writes PNG, SVG (token text kept as ``<text>``) or PDF.

The colormaps come from ``mmviz/colormaps.json``, the definition the front end reads too, interpolated
to 256 entries exactly as ``js/src/render/colormap.ts`` does. Token text is data: TeX is off and every ``$``
is escaped (titles use ``parse_math=False``), so ``$x$`` shows as typed.
"""

from __future__ import annotations

import math
import os
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmviz.data.attention import AttentionTrace
from mmviz.data.display import (
    AGGREGATES,
    COLORMAP_FILE,
    Unit,
    colormap_lut,
    display_matrix,
    robust_max,
    select_map,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure, SubFigure

    from mmviz.data.tokens import TokenTable

__all__ = [
    "COLORMAP_FILE",
    "FIGURE_FORMATS",
    "attention_figure",
    "check_format",
    "colormap",
    "colormap_lut",
    "save_figure",
]

FIGURE_FORMATS = ("png", "svg", "pdf")
"""File types ``save_figure`` writes."""

MAX_LABEL_CHARS = 16

_RC: dict[Any, Any] = {
    "text.usetex": False,  # token text must never reach TeX
    "text.parse_math": True,  # tick labels escape every "$" (tick_text), which needs mathtext's escaping rules
    "svg.fonttype": "none",  # SVG keeps text as <text>, searchable and editable
    "pdf.fonttype": 42,  # TrueType in PDF: text stays text
    "ps.fonttype": 42,
    "font.size": 9,
}


def colormap(name: str = "viridis") -> ListedColormap:
    """The matplotlib colormap of a front-end colormap name (``"viridis"``, ``"cividis"``, ...)."""
    from matplotlib.colors import ListedColormap

    return ListedColormap(colormap_lut(name) / 255.0, name=f"mmviz.{name}")


# -- text ------------------------------------------------------------------------------------------
def clean_label(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    """Token text made printable: control characters escaped, long text cut with an ellipsis."""
    out = []
    for ch in str(text):
        if ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    s = "".join(out)
    if not s.strip():
        s = repr(s)
    return s if len(s) <= limit else s[: limit - 1] + "…"


@dataclass
class _Tick:
    at: float
    label: str
    span: tuple[float, float] | None = None  # a run of image patches labelled once


def _ticks(units: list[Unit], step: int, n_cells: int, max_labels: int, keep: int, short: bool) -> list[_Tick]:
    """Labels for one matrix axis: one per run of image patches, text tokens thinned to ``max_labels``."""
    if step > 1:  # block-averaged: label evenly spaced blocks by their first position's token
        n = min(max_labels, n_cells)
        cells = np.unique(np.linspace(0, n_cells - 1, n).round().astype(int))
        by_first = {u.positions[0]: u for u in units}
        return [
            _Tick(float(c), f"{c * step}: {clean_label(by_first[c * step].label)}")
            for c in cells
            if c * step in by_first
        ]
    ticks: list[_Tick] = []
    text_units: list[int] = []
    i = 0
    while i < len(units):
        unit = units[i]
        if unit.kind == "image":
            j = i
            while j + 1 < len(units) and units[j + 1].kind == "image" and units[j + 1].image == unit.image:
                j += 1
            name = f"image {unit.image}" if short else f"image {unit.image} ({j - i + 1} patches)"
            ticks.append(_Tick((i + j) / 2, name, (i - 0.5, j + 0.5)))
            i = j + 1
            continue
        text_units.append(i)
        i += 1
    budget = max(1, max_labels - len(ticks))
    if len(text_units) > budget:
        every = math.ceil(len(text_units) / budget)
        chosen = set(text_units[::every])
        if keep in text_units:
            chosen.add(keep)
        text_units = sorted(chosen)
    ticks.extend(_Tick(float(u), clean_label(units[u].label)) for u in text_units)
    return sorted(ticks, key=lambda t: t.at)


def tick_text(label: str) -> str:
    """Label text safe for a tick formatter: every ``$`` escaped, so mathtext never parses token text."""
    return label.replace("$", r"\$")


def _draw_axis_labels(ax: Axes, ticks: list[_Tick], axis: str, fontsize: float) -> None:
    """Token labels as fixed ticks (rotated on x); image runs get white separators."""
    positions = [t.at for t in ticks]
    labels = [tick_text(t.label) for t in ticks]
    if axis == "x":
        ax.set_xticks(positions, labels, rotation=60, ha="right", rotation_mode="anchor", fontsize=fontsize)
    else:
        ax.set_yticks(positions, labels, fontsize=fontsize)
    for t in ticks:
        if t.span is not None:
            for edge in t.span:
                line = ax.axvline if axis == "x" else ax.axhline
                line(edge, color="white", linewidth=0.6, alpha=0.8)


def _what(module: str, layer: int, aggregate: str, head: int, n_heads: int) -> str:
    if aggregate == "head":
        which = f"head {head}"
    elif aggregate == "mean":
        which = f"mean over {n_heads} heads"
    elif aggregate == "max":
        which = f"max over {n_heads} heads"
    else:
        which = "rollout"
    return f"{module} · layer {layer} · {which}"


# -- the figure ------------------------------------------------------------------------------------
@contextmanager
def _style() -> Iterator[None]:
    import matplotlib as mpl

    with mpl.rc_context(_RC):
        yield


def attention_figure(
    trace: AttentionTrace,
    *,
    module: str | None = None,
    layer: int | None = None,
    head: int | None = None,
    aggregate: str | None = None,
    token: int = -1,
    batch_index: int = 0,
    direction: str = "from",
    hide_special: bool = False,
    merge_words: bool = False,
    cmap: str = "viridis",
    title: str | None = None,
    max_matrix: int = 1024,
    max_labels: int = 48,
    images: bool = True,
    figsize: tuple[float, float] | None = None,
    into: SubFigure | None = None,
) -> Figure:
    """Draws one attention selection as a matplotlib figure (what ``AttentionView`` shows for it).

    The matrix is ``[query, key]`` (rows: queries, columns: keys); a run of image patches gets one label
    and thin separators, text tokens are thinned to ``max_labels`` per axis. When the other side holds
    images, one panel per image shows the selected token's attention over its patches as an overlay.

    Args:
        trace: the trace.
        module: module name (default: the language model, else the first module).
        layer: model layer (default: the last captured).
        head: model head; ``None`` with ``aggregate=None`` shows the mean over heads.
        aggregate: ``"head"``, ``"mean"``, ``"max"`` or ``"rollout"`` (default: ``"head"`` when ``head``
            is given, else ``"mean"``).
        token: query position whose attention the image panels show and the matrix outlines (``-1``: the
            last text token).
        batch_index: batch item.
        direction: ``"from"`` (attention the token pays: its row) or ``"to"`` (attention it receives:
            its column; self-attention only).
        hide_special: drop special and padding tokens, renormalising each row over the rest.
        merge_words: merge subword tokens into words (keys summed, queries averaged).
        cmap: colormap name (``mmviz/colormaps.json``: viridis, cividis, magma, blues, greys).
        title: figure title (default: model, module, layer and head).
        max_matrix: most rows/columns drawn; bigger maps are block-averaged (hiding and merging then off).
        max_labels: most token labels per axis.
        images: draw the image panels.
        figsize: figure size in inches (default: from the number of panels).
        into: draw into this subfigure (e.g. one pane of a composite) instead of a new figure.

    Returns:
        A ``matplotlib.figure.Figure`` (not shown, not attached to pyplot).

    Raises:
        KeyError: the module, layer or head was not captured.
        ValueError: an unknown aggregate, direction or colormap, or rollout of cross-attention.
    """
    from matplotlib.figure import Figure

    m = trace.module(module)
    name = m.name
    layer = m.layers[-1] if layer is None else int(layer)
    aggregate = aggregate or ("mean" if head is None else "head")
    if aggregate not in AGGREGATES:
        raise ValueError(f"unknown aggregate {aggregate!r}; use one of {AGGREGATES}")
    head = m.heads[0] if head is None else int(head)
    if direction not in ("from", "to"):
        raise ValueError(f"direction must be 'from' or 'to', not {direction!r}")
    cm = colormap(cmap)
    self_attention = m.query_table == m.key_table
    q_tab = trace.tokens(name, batch_index, "query")
    k_tab = trace.tokens(name, batch_index, "key")
    full = select_map(trace, name, batch_index, layer, aggregate, head).astype(np.float32)
    d = display_matrix(full, q_tab, k_tab, hide_special, merge_words, max(1, int(max_matrix)))

    # the selected query unit: the pinned token, else the last visible text token
    if 0 <= token < len(q_tab) and d.q_unit_of_pos[token] >= 0:
        unit = int(d.q_unit_of_pos[token])
    else:
        text_units = [i for i, u in enumerate(d.q_units) if u.kind == "text"]
        unit = text_units[-1] if text_units else len(d.q_units) - 1
    to = direction == "to" and self_attention
    src = d.q_units[unit]
    vector = d.full[:, src.positions].mean(axis=1) if to else d.full[list(src.positions)].mean(axis=0)
    paint_tab = q_tab if to else k_tab
    image_ids = (
        sorted({int(i) for i in paint_tab.image_index[paint_tab.kind == "image"]}) if images and unit >= 0 else []
    )

    n_img = len(image_ids)
    if figsize is None:
        side = 6.0 if max(d.matrix.shape) > 24 else 4.8
        figsize = (side + 1.6 + (3.0 if n_img else 0.0), side + 1.2)
    with _style():
        fig: Any = Figure(figsize=figsize, layout="constrained") if into is None else into
        if n_img:
            grid = fig.add_gridspec(max(n_img, 1), 2, width_ratios=[side + 1.6, 3.0])
            ax = fig.add_subplot(grid[:, 0])
            img_axes = [fig.add_subplot(grid[i, 1]) for i in range(n_img)]
        else:
            ax = fig.add_subplot()
            img_axes = []

        vmax = robust_max(d.matrix)
        data_max = float(d.matrix.max()) if d.matrix.size else 0.0
        im = ax.imshow(d.matrix, cmap=cm, vmin=0.0, vmax=vmax, interpolation="none", aspect="auto")
        label = "attention rollout" if aggregate == "rollout" else "attention probability"
        bar = fig.colorbar(im, ax=ax, shrink=0.85, pad=0.02, extend="max" if data_max > vmax * 1.0001 else "neither")
        bar.set_label(label)

        n_labels_font = 8 if max(len(d.q_units), len(d.k_units)) <= 32 else 6.5
        x_ticks = _ticks(d.k_units, d.k_step, d.matrix.shape[1], max_labels, unit if to else -1, True)
        y_ticks = _ticks(d.q_units, d.q_step, d.matrix.shape[0], max_labels, -1 if to else unit, False)
        _draw_axis_labels(ax, x_ticks, "x", n_labels_font)
        _draw_axis_labels(ax, y_ticks, "y", n_labels_font)
        words = " (words)" if merge_words and d.q_step == 1 and d.k_step == 1 else ""
        ax.set_xlabel(f"key{words}", labelpad=2)
        ax.set_ylabel(f"query{words}", labelpad=2)
        ax.xaxis.set_label_position("top")

        # outline the selected row (from) or column (to), as the widget highlights it
        from matplotlib.patches import Rectangle

        if d.q_step == 1 and d.k_step == 1 and 0 <= unit < d.matrix.shape[0]:
            n_rows, n_cols = d.matrix.shape
            rect = (
                Rectangle((unit - 0.5, -0.5), 1, n_rows, fill=False, edgecolor="#ff3b30", linewidth=1.2)
                if to
                else Rectangle((-0.5, unit - 0.5), n_cols, 1, fill=False, edgecolor="#ff3b30", linewidth=1.2)
            )
            ax.add_patch(rect)

        who = clean_label(src.label, 24)
        for ax_img, image in zip(img_axes, image_ids):
            _draw_overlay(fig, ax_img, paint_tab, image, vector, cm, who, to, src)

        model = str(trace.info.get("model") or "")
        heading = title or " — ".join(x for x in (model, _what(name, layer, aggregate, head, len(m.heads))) if x)
        fig.suptitle(heading, fontsize=11, parse_math=False)
        notes = []
        if d.q_step > 1 or d.k_step > 1:
            notes.append(
                f"{full.shape[0]}×{full.shape[1]} map averaged over blocks of {d.q_step}×{d.k_step} "
                f"(max_matrix={max_matrix}); hiding and word merge are off"
            )
        elif hide_special:
            notes.append("special and padding tokens hidden, rows renormalised")
        if data_max > vmax * 1.0001:
            notes.append(f"colour scale clipped at the 99.5th percentile ({vmax:.3g}; max {data_max:.3g})")
        if batch_index:
            notes.append(f"batch item {batch_index}")
        footnote(fig, notes)
    return fig


def footnote(fig: Any, notes: list[str]) -> None:
    """Writes what a reader must know about a figure (clipping, batch item, ...) small, under it."""
    if notes:
        fig.supxlabel("; ".join(notes), fontsize=7, alpha=0.75, parse_math=False)


def _draw_overlay(
    fig: Figure,
    ax: Axes,
    table: TokenTable,
    image: int,
    vector: np.ndarray,
    cm: ListedColormap,
    who: str,
    to: bool,
    source: Unit,
) -> None:
    """One image with the selected token's attention over its patches, translucent on top."""
    picture = table.images[image]
    height, width = picture.shape[:2]
    grid = table.image_positions(image)
    values = np.where(grid >= 0, vector[np.maximum(grid, 0)], np.nan)
    vmax = float(np.nanmax(vector)) if vector.size and np.nanmax(vector) > 0 else 1.0
    ax.imshow(picture, extent=(0, width, height, 0), interpolation="antialiased")
    over = ax.imshow(
        values,
        extent=(0, width, height, 0),
        cmap=cm,
        vmin=0.0,
        vmax=vmax,
        alpha=0.6,
        interpolation="nearest",
    )
    ax.set_xticks([])
    ax.set_yticks([])
    rows, cols = grid.shape
    if source.image == image and len(source.positions) == 1:  # the selected token is a patch of this image
        from matplotlib.patches import Rectangle

        p = source.positions[0]
        r, c = int(table.patch_row[p]), int(table.patch_col[p])
        ph, pw = height / rows, width / cols
        ax.add_patch(Rectangle((c * pw, r * ph), pw, ph, fill=False, edgecolor="#ff3b30", linewidth=1.5))
    caption = f"{'to' if to else 'from'} '{who}'\n{'from' if to else 'over'} image {image} ({rows}×{cols} patches)"
    ax.set_title(caption, fontsize=8, parse_math=False)
    bar = fig.colorbar(over, ax=ax, orientation="horizontal", shrink=0.9, pad=0.03, aspect=30)
    bar.set_label("attention probability", fontsize=7)
    bar.ax.tick_params(labelsize=6)


# -- files -----------------------------------------------------------------------------------------
def check_format(path: str | os.PathLike[str], allowed: tuple[str, ...] = FIGURE_FORMATS) -> str:
    """The file type of ``path`` from its extension (lower case, no dot).

    Raises:
        ValueError: the extension is not one of ``allowed``.
    """
    suffix = Path(os.fspath(path)).suffix.lower().lstrip(".")
    if suffix == "htm":
        suffix = "html"
    if suffix not in allowed:
        wanted = ", ".join(f".{a}" for a in allowed)
        raise ValueError(f"cannot write {os.fspath(path)!r}: give a path ending in {wanted}")
    return suffix


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: float | None = None, **savefig: Any) -> Path:
    """Writes a figure to PNG, SVG or PDF (from the extension), token text kept as text in SVG and PDF.

    Args:
        fig: the figure (e.g. from ``attention_figure``).
        path: file ending in ``.png``, ``.svg`` or ``.pdf``.
        dpi: resolution (default 200 for PNG; vector files embed the matrix at its own resolution).
        **savefig: more arguments for ``matplotlib.figure.Figure.savefig``.

    Returns:
        The path written.

    Raises:
        ValueError: another extension.
    """
    kind = check_format(path)
    out = Path(path)
    with _style():
        fig.savefig(out, format=kind, dpi=dpi or 200, **savefig)
    return out


def view_figure(view: Any, **options: Any) -> Figure:
    """The figure of an ``AttentionView``'s current selection (its durable traits)."""
    selection: dict[str, Any] = {
        "module": view.module,
        "layer": view.layer,
        "aggregate": view.aggregate,
        "head": view.head,
        "token": view.token,
        "batch_index": view.batch_index,
        "direction": view.direction,
        "hide_special": view.hide_special,
        "merge_words": view.merge_words,
        "cmap": view.cmap,
        "title": getattr(view, "_title", "") or None,
        "max_matrix": getattr(view, "max_matrix", 1024),
    }
    selection.update(options)
    return attention_figure(view.trace, **selection)
