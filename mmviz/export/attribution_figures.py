"""Matplotlib figures of an attribution: what ``AttributionView`` shows for one target.

Text tokens become bars coloured by their score, each image gets its pixel map (or patch scores) as a
translucent overlay. Signed methods (integrated gradients, input × gradient, occlusion, contrasts) use
the widget's diverging blue–red scale centred at 0 (``js/src/views/attribution.ts: scoreColor``);
unsigned ones a colormap from ``mmviz/colormaps.json``. Token text is data (see ``.figures``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from mmviz.data.attribution import Attribution
from mmviz.export.figures import _style, clean_label, colormap, footnote, tick_text

if TYPE_CHECKING:
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure, SubFigure

__all__ = ["attribution_figure", "diverging_colormap"]

NEGATIVE = (31, 119, 180)
"""Colour of negative scores, as the front end draws them."""
POSITIVE = (214, 39, 40)
"""Colour of positive scores, as the front end draws them."""


def diverging_colormap() -> Colormap:
    """Blue (negative) – white (0) – red (positive), the widget's signed-score colours."""
    from matplotlib.colors import LinearSegmentedColormap

    colors = [tuple(c / 255 for c in NEGATIVE), (1.0, 1.0, 1.0), tuple(c / 255 for c in POSITIVE)]
    return LinearSegmentedColormap.from_list("mmviz.signed", colors, N=256)


def attribution_figure(
    attribution: Attribution,
    *,
    target: int = 0,
    cmap: str = "viridis",
    opacity: float = 0.6,
    title: str | None = None,
    max_labels: int = 60,
    figsize: tuple[float, float] | None = None,
    into: SubFigure | None = None,
) -> Figure:
    """Draws one target's attribution: text-token scores as coloured bars, image maps as overlays.

    Args:
        attribution: the attribution (``mmviz.attribute(...)``).
        target: score row (target or generated token).
        cmap: colormap of unsigned methods (``mmviz/colormaps.json``).
        opacity: opacity of the maps over the images.
        title: figure title (default: method and target).
        max_labels: most text tokens labelled (every token keeps its bar).
        figsize: inches (default: from the number of tokens and images).
        into: draw into this subfigure (e.g. one pane of a composite) instead of a new figure.

    Returns:
        A ``matplotlib.figure.Figure``.

    Raises:
        IndexError: ``target`` is out of range.
    """
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    scores = attribution.scores
    if not 0 <= target < scores.shape[0]:
        raise IndexError(f"target {target} is out of range: {scores.shape[0]} row(s)")
    table = attribution.tokens
    row = scores[target]
    signed = attribution.signed
    cm = diverging_colormap() if signed else colormap(cmap)
    text_pos = np.flatnonzero(table.kind != "image")
    images = list(range(len(table.images)))
    finite = np.abs(row[np.isfinite(row)])
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    norm = Normalize(-vmax, vmax) if signed else Normalize(0.0, vmax)
    unit = "attribution score" + (" (signed)" if signed else "")

    n_img = len(images)
    width = max(6.0, min(14.0, 0.22 * len(text_pos) + 2.0))
    if figsize is None:
        figsize = (max(width, 3.2 * n_img), 3.4 + (3.2 if n_img else 0.0))
    with _style():
        fig: Any = Figure(figsize=figsize, layout="constrained") if into is None else into
        rows = 2 if n_img else 1
        grid = fig.add_gridspec(rows, max(n_img, 1), height_ratios=[1.0, 1.1] if n_img else None)
        ax = fig.add_subplot(grid[0, :])
        values = row[text_pos]
        ax.bar(np.arange(len(text_pos)), values, color=cm(norm(values)), edgecolor="#555555", linewidth=0.3)
        ax.axhline(0, color="#555555", linewidth=0.6)
        every = max(1, -(-len(text_pos) // max(1, max_labels)))
        shown = np.arange(0, len(text_pos), every)
        labels = [tick_text(clean_label(str(table.text[text_pos[i]]))) for i in shown]
        ax.set_xticks(shown, labels, rotation=60, ha="right", rotation_mode="anchor", fontsize=8)
        ax.set_xlim(-0.6, len(text_pos) - 0.4)
        ax.set_ylabel(unit)
        ax.set_title("text tokens", fontsize=9)
        for i, image in enumerate(images):
            ax_img = fig.add_subplot(grid[1, i])
            _image_panel(fig, ax_img, attribution, image, target, cm, norm, opacity, unit)
        heading = title or f"{attribution.method} · {attribution.targets[target] or attribution.target}"
        fig.suptitle(heading, fontsize=11, parse_math=False)
        notes = []
        if attribution.delta is not None:
            notes.append(f"completeness gap {float(attribution.delta[target]):.3g}")
        model = attribution.info.get("model")
        if model:
            notes.append(str(model))
        footnote(fig, notes)
    return fig


def _image_panel(
    fig: Figure,
    ax: Any,
    attribution: Attribution,
    image: int,
    target: int,
    cm: Colormap,
    norm: Any,
    opacity: float,
    unit: str,
) -> None:
    picture = attribution.tokens.images[image]
    height, width = picture.shape[:2]
    if attribution.pixel_maps:
        values = attribution.pixel_maps[image][target]
        what = "pixels"
    else:
        values = attribution.patch_map(image, target)
        what = "patches"
    ax.imshow(picture, extent=(0, width, height, 0))
    over = ax.imshow(values, extent=(0, width, height, 0), cmap=cm, norm=norm, alpha=opacity, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"image {image} ({what})", fontsize=8)
    bar = fig.colorbar(over, ax=ax, shrink=0.8, pad=0.02)
    bar.set_label(unit, fontsize=7)
    bar.ax.tick_params(labelsize=6)


def attribution_view_figure(view: Any, **options: Any) -> Figure:
    """The figure of an ``AttributionView``'s current entry and target."""
    selection: dict[str, Any] = {
        "target": view.target,
        "cmap": view.cmap,
        "opacity": view.opacity,
        "title": getattr(view, "_title", "") or None,
    }
    selection.update(options)
    return attribution_figure(view.attributions[view.entry], **selection)
