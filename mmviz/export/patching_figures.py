"""Matplotlib figures of activation patching: what ``PatchingView`` shows for one site.

A heat map of effects (layers down, positions across; the widget's diverging blue–red scale, 0 = corrupted,
1 = clean) with text tokens labelled, and each image with one layer's effects on its patch grid. Token text
is data (see ``.figures``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from mmviz.data.patching import PatchingTrace
from mmviz.export.attribution_figures import diverging_colormap
from mmviz.export.figures import _style, clean_label, footnote, tick_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure, SubFigure

__all__ = ["patching_figure", "patching_view_figure"]


def patching_figure(
    trace: PatchingTrace,
    *,
    site: str | int = 0,
    layer: int = -1,
    opacity: float = 0.75,
    title: str | None = None,
    max_labels: int = 60,
    figsize: tuple[float, float] | None = None,
    into: SubFigure | None = None,
) -> Figure:
    """Draws one site's effects: the layer × position heat map and one layer's patch maps.

    Args:
        trace: the patching result (``mmviz.patch(...)``).
        site: site name or index.
        layer: block index whose effects the image panes show (negative: counted from the last row).
        opacity: opacity of the effects over the images.
        title: figure title (default: site, metric and method).
        max_labels: most text tokens labelled.
        figsize: inches (default: from the number of positions and images).
        into: draw into this subfigure instead of a new figure.

    Returns:
        A ``matplotlib.figure.Figure``.
    """
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    s = trace.site_index(site)
    row = trace.layer_index(layer)
    effects = np.stack([trace.position_effects(s, int(block)) for block in trace.layers])  # [layers, positions]
    finite = np.abs(effects[np.isfinite(effects)])
    vmax = max(1.0, float(finite.max()) if finite.size else 1.0)
    norm = Normalize(-vmax, vmax)
    cm = diverging_colormap()
    table = trace.tokens
    images = list(range(len(table.images)))
    n = len(table)
    if figsize is None:
        figsize = (max(6.0, min(14.0, 0.12 * n + 2.5)), 1.8 + 0.28 * len(trace.layers) + (3.0 if images else 0.0))
    with _style():
        fig: Any = Figure(figsize=figsize, layout="constrained") if into is None else into
        grid = fig.add_gridspec(2 if images else 1, max(len(images), 1), height_ratios=[1.0, 1.2] if images else None)
        ax = fig.add_subplot(grid[0, :])
        shown = ax.imshow(effects, cmap=cm, norm=norm, aspect="auto", interpolation="nearest")
        ax.set_yticks(range(len(trace.layers)), [f"layer {int(b)}" for b in trace.layers], fontsize=7)
        text_pos = np.flatnonzero(table.kind != "image")
        every = max(1, -(-len(text_pos) // max(1, max_labels)))
        picked = text_pos[::every]
        labels = [tick_text(clean_label(str(table.text[p]))) for p in picked]
        ax.set_xticks(picked, labels, rotation=60, ha="right", rotation_mode="anchor", fontsize=7)
        for image in images:
            held = np.flatnonzero((table.kind == "image") & (table.image_index == image))
            if held.size:
                ax.axvspan(held.min() - 0.5, held.max() + 0.5, ymin=0, ymax=0.02, color="#555555")
                ax.text((held.min() + held.max()) / 2, len(trace.layers) - 0.5, f"image {image}", fontsize=7,
                        ha="center", va="top")  # fmt: skip
        ax.axhline(row, color="#333333", linewidth=0.5, alpha=0.4)
        bar = fig.colorbar(shown, ax=ax, shrink=0.9, pad=0.01)
        bar.set_label("effect (0 = corrupted, 1 = clean)", fontsize=7)
        bar.ax.tick_params(labelsize=6)
        for i, image in enumerate(images):
            ax_img = fig.add_subplot(grid[1, i])
            picture = table.images[image]
            height, width = picture.shape[:2]
            ax_img.imshow(picture, extent=(0, width, height, 0))
            patch = trace.patch_map(s, int(trace.layers[row]), image)
            ax_img.imshow(patch, extent=(0, width, height, 0), cmap=cm, norm=norm, alpha=opacity,
                          interpolation="nearest")  # fmt: skip
            ax_img.set_xticks([])
            ax_img.set_yticks([])
            ax_img.set_title(f"image {image} · layer {int(trace.layers[row])}", fontsize=8)
        heading = title or f"{trace.sites[s]} · {trace.metric} · {trace.method} patching"
        fig.suptitle(heading, fontsize=10, parse_math=False)
        notes = [f"clean {trace.clean_metric:.4g}, corrupted {trace.corrupt_metric:.4g}", trace.corruption]
        footnote(fig, [n for n in (*notes, str(trace.info.get("model", ""))) if n])
    return fig


def patching_view_figure(view: Any, **options: Any) -> Figure:
    """The figure of a ``PatchingView``'s site and selected layer."""
    selection: dict[str, Any] = {
        "site": view.site,
        "layer": int(view.trace.layers[view.layer]),
        "opacity": view.opacity,
        "title": getattr(view, "_title", "") or None,
    }
    selection.update(options)
    return patching_figure(view.trace, **selection)
