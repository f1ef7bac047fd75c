"""Matplotlib figures of a logit lens: what ``LensView`` shows.

The layer × position grid (the last layer on top) coloured by the top-1 probability or a named token's
probability, with each cell's top token written in it when the grid is small enough to read; one panel per
image with its patches coloured by the same value at one layer. Token text is data (see ``.figures``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from mmviz.data.lens import DiffusionLensTrace, LensTrace
from mmviz.export.figures import _style, clean_label, colormap, footnote, tick_text

if TYPE_CHECKING:
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure, SubFigure

__all__ = ["diffusion_lens_figure", "lens_figure", "lens_view_figure"]

MAX_WRITTEN = 48
"""Grids with at most this many positions (and layers) get each cell's top token written in it."""


def lens_figure(
    lens: LensTrace,
    *,
    token: str | int | None = None,
    layer: int = -1,
    batch_index: int = 0,
    cmap: str = "viridis",
    title: str | None = None,
    max_labels: int = 60,
    figsize: tuple[float, float] | None = None,
    into: SubFigure | None = None,
) -> Figure:
    """Draws a lens: the layer × position grid and, per image, its patches at one layer.

    Args:
        lens: the lens (``mmviz.logit_lens(...)``).
        token: a named token (text or id) whose probability colours grid and patches; ``None``: the top-1
            probability of each cell.
        layer: the layer the image panels show (a hidden-state index of ``lens.layers``; ``-1``: the last).
        batch_index: the batch item.
        cmap: colormap (``mmviz/colormaps.json``).
        title: figure title (default: the method and what colours the cells).
        max_labels: most position labels on the x axis.
        figsize: inches (default: from the grid and the number of images).
        into: draw into this subfigure (e.g. one pane of a composite) instead of a new figure.

    Returns:
        A ``matplotlib.figure.Figure``.

    Raises:
        KeyError: ``token`` is not a named token of the lens.
        IndexError: ``layer`` was not lensed or ``batch_index`` is out of range.
    """
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    if not 0 <= batch_index < len(lens.tables):
        raise IndexError(f"batch_index {batch_index} is out of range: the lens holds {len(lens.tables)} item(s)")
    row = lens.layer_row(layer)
    if token is None:
        values = lens.top_probs[batch_index, :, :, 0]
        what = "top-1 probability"
    else:
        values = lens.prob(token, batch_index)
        what = f"p({clean_label(lens.named[lens._named_index(token)], 24)})"
    table = lens.tables[batch_index]
    n_layers, n_positions = values.shape
    cm = colormap(cmap)
    norm = Normalize(0.0, max(float(np.nanmax(values)) if values.size else 0.0, 1e-12))
    images = [i for i in range(len(table.images)) if np.isin(table.image_positions(i), lens.positions).any()]
    width = max(6.0, min(16.0, 0.3 * n_positions + 2.5))
    if figsize is None:
        figsize = (width + (3.4 if images else 0.0), max(3.2, min(10.0, 0.28 * n_layers + 2.2)))
    with _style():
        fig: Any = Figure(figsize=figsize, layout="constrained") if into is None else into
        cols = 2 if images else 1
        grid = fig.add_gridspec(max(len(images), 1), cols, width_ratios=[width, 3.4] if images else None)
        ax = fig.add_subplot(grid[:, 0])
        shown = ax.imshow(values, cmap=cm, norm=norm, origin="lower", aspect="auto", interpolation="nearest")
        if n_positions <= MAX_WRITTEN and n_layers <= MAX_WRITTEN:
            _write_tokens(ax, lens, batch_index, values, norm, cm)
        every = max(1, -(-n_positions // max(1, max_labels)))
        ticks = np.arange(0, n_positions, every)
        labels = [tick_text(clean_label(str(table.text[lens.positions[i]]), 16)) for i in ticks]
        ax.set_xticks(ticks, labels, rotation=60, ha="right", rotation_mode="anchor", fontsize=7)
        layer_every = max(1, -(-n_layers // 24))
        ax.set_yticks(
            np.arange(0, n_layers, layer_every), [str(lens.layers[i]) for i in range(0, n_layers, layer_every)]
        )
        ax.set_ylabel("layer (hidden state)")
        if images:  # the layer the image panels show
            ax.axhline(row, color="#ff3b30", linewidth=0.8, alpha=0.8)
        bar = fig.colorbar(shown, ax=ax, shrink=0.85, pad=0.02)
        bar.set_label(what)
        for i, image in enumerate(images):
            _image_panel(fig, fig.add_subplot(grid[i, 1]), lens, batch_index, image, values[row], cm, norm, what, row)
        heading = title or f"{lens.method.replace('_', ' ')} · {what}"
        fig.suptitle(heading, fontsize=11, parse_math=False)
        notes = [str(lens.info["model"])] if lens.info.get("model") else []
        if batch_index:
            notes.append(f"batch item {batch_index}")
        footnote(fig, notes)
    return fig


def _write_tokens(ax: Any, lens: LensTrace, batch_index: int, values: np.ndarray, norm: Any, cm: Colormap) -> None:
    """Each cell's top token, in black or white for contrast with the cell's colour."""
    n_layers, n_positions = values.shape
    size = 6 if n_positions > 24 else 7
    for r in range(n_layers):
        for c in range(n_positions):
            text = clean_label(lens.text(int(lens.top_ids[batch_index, r, c, 0])), 8)
            red, green, blue, _ = cm(norm(values[r, c]))
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.55
            ax.text(
                c,
                r,
                text,
                ha="center",
                va="center",
                fontsize=size,
                color="white" if dark else "black",
                parse_math=False,
            )


def _image_panel(
    fig: Figure,
    ax: Any,
    lens: LensTrace,
    batch_index: int,
    image: int,
    row_values: np.ndarray,
    cm: Colormap,
    norm: Any,
    what: str,
    row: int,
) -> None:
    table = lens.tables[batch_index]
    picture = table.images[image]
    height, width = picture.shape[:2]
    grid = table.image_positions(image)
    column = {int(p): i for i, p in enumerate(lens.positions)}
    patch = np.full(grid.shape, np.nan, dtype=np.float32)
    for (r, c), position in np.ndenumerate(grid):
        if int(position) in column:
            patch[r, c] = row_values[column[int(position)]]
    ax.imshow(picture, extent=(0, width, height, 0))
    ax.imshow(patch, extent=(0, width, height, 0), cmap=cm, norm=norm, alpha=0.65, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"image {image} · layer {lens.layers[row]} · {what}", fontsize=8, parse_math=False)


def lens_view_figure(view: Any, **options: Any) -> Figure:
    """The figure of a ``LensView``'s current token, layer and colormap."""
    trace = view.trace
    selection: dict[str, Any] = {
        "token": None if view.token < 0 else int(trace.named_ids[view.token]),
        "layer": trace.layers[view.layer],
        "batch_index": view.batch_index,
        "cmap": view.cmap,
        "title": getattr(view, "_title", "") or None,
    }
    selection.update(options)
    return lens_figure(trace, **selection)


def diffusion_lens_figure(
    lens: DiffusionLensTrace,
    *,
    title: str | None = None,
    columns: int = 8,
    figsize: tuple[float, float] | None = None,
    into: SubFigure | None = None,
) -> Figure:
    """Draws a Diffusion Lens: one image per text-encoder layer, in rows of ``columns``.

    Args:
        lens: the lens (``mmviz.logit_lens(pipe, prompt)``).
        title: figure title (default: the prompt).
        columns: images per row.
        figsize: inches (default: 1.6 per image).
        into: draw into this subfigure instead of a new figure.
    """
    from matplotlib.figure import Figure

    n = len(lens.layers)
    cols = max(1, min(columns, n))
    rows = -(-n // cols)
    with _style():
        fig: Any = Figure(figsize=figsize or (1.6 * cols + 0.4, 1.75 * rows + 0.6), layout="constrained")
        fig = fig if into is None else into
        for i, layer in enumerate(lens.layers):
            ax = fig.add_subplot(rows, cols, i + 1)
            ax.imshow(lens.images[i], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"layer {layer}", fontsize=8)
        fig.suptitle(title or clean_label(lens.prompt, 80), fontsize=10, parse_math=False)
        footnote(fig, [f"{lens.info['steps']} steps, seed {lens.info['seed']}"] if "steps" in lens.info else [])
    return fig
