"""Matplotlib figures of a decomposition: what ``DecompositionView`` shows for one text and head.

Left, the layer × head grid coloured by each head's share of the text's similarity to the image (or of the
image embedding's norm), diverging blue–red around 0 as the view draws it; right, the image with the chosen
head's per-patch shares over it (all heads and layers when none is chosen), and the head's TextSpan texts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from mmviz.data.decomposition import DecompositionTrace
from mmviz.export.attribution_figures import diverging_colormap
from mmviz.export.figures import _style, clean_label, footnote

if TYPE_CHECKING:
    from matplotlib.figure import Figure, SubFigure

__all__ = ["decomposition_figure"]


def decomposition_figure(
    trace: DecompositionTrace,
    *,
    text: str | int | None = None,
    layer: int | None = None,
    head: int | None = None,
    opacity: float = 0.65,
    describe: int = 3,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
    into: SubFigure | None = None,
) -> Figure | SubFigure:
    """Draws the head grid and one head's patch map for one text.

    Args:
        trace: the decomposition (``mmviz.decompose(...)``).
        text: one of ``trace.texts`` (or its index); ``None``: shares of the image embedding's norm.
        layer: the head's layer (``None``: no head chosen; the map sums every head of every layer).
        head: the head (``None``: every head of ``layer``, or of every layer).
        opacity: opacity of the map over the image.
        describe: TextSpan texts listed for the chosen head (0: none; needs texts and several images).
        title: figure title (default: the text and the chosen head).
        figsize: inches.
        into: draw into this subfigure instead of a new figure.

    Returns:
        The ``Figure`` (or ``into``).
    """
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    scale = float(np.linalg.norm(trace.embedding))
    row = 0 if text is None else 1 + trace.text_index(text)
    label = "image embedding" if text is None else trace.texts[row - 1]
    shares = trace.maps[row].sum(-1) / scale  # [layers, heads]
    patch = trace.patch_map(text, layer, head)
    cm = diverging_colormap()
    grid_max = float(np.abs(shares).max()) or 1.0
    map_max = float(np.nanmax(np.abs(patch))) if np.isfinite(patch).any() else 1.0
    with _style():
        fig: Any = Figure(figsize=figsize or (9.0, 4.2), layout="constrained") if into is None else into
        ax_grid, ax_img = fig.subplots(1, 2, width_ratios=[1.0, 1.0])
        shown = ax_grid.imshow(shares, cmap=cm, norm=Normalize(-grid_max, grid_max), aspect="auto")
        ax_grid.set_xlabel("head")
        ax_grid.set_ylabel("layer")
        ax_grid.set_xticks(range(trace.n_heads))
        ax_grid.set_yticks(range(trace.n_layers))
        ax_grid.set_title("share of " + ("‖embedding‖" if text is None else "the similarity"), fontsize=9)
        if layer is not None:
            the_layer = trace.layer_index(layer)
            heads = range(trace.n_heads) if head is None else [trace.head_index(head)]
            for h in heads:
                ax_grid.add_patch(Rectangle((h - 0.5, the_layer - 0.5), 1, 1, fill=False, lw=2, ec="#1f2328"))
        bar = fig.colorbar(shown, ax=ax_grid, shrink=0.8, pad=0.02)
        bar.ax.tick_params(labelsize=6)
        picture = trace.tokens.images[0]
        height, width = picture.shape[:2]
        ax_img.imshow(picture, extent=(0, width, height, 0))
        over = ax_img.imshow(
            patch,
            extent=(0, width, height, 0),
            cmap=cm,
            norm=Normalize(-map_max, map_max),
            alpha=opacity,
            interpolation="nearest",
        )
        ax_img.set_xticks([])
        ax_img.set_yticks([])
        where = "all layers" if layer is None else f"layer {trace.layer_index(layer)}"
        where += "" if head is None else f", head {trace.head_index(head)}"
        ax_img.set_title(f"per patch ({where})", fontsize=9)
        bar = fig.colorbar(over, ax=ax_img, shrink=0.8, pad=0.02)
        bar.ax.tick_params(labelsize=6)
        notes = [f"{trace.info.get('model', '')} · similarity {_similarity(trace, text):.3f}".strip(" ·")]
        if layer is not None and head is not None and describe > 0 and trace.texts:
            picks = _picks(trace, trace.layer_index(layer), trace.head_index(head), describe)
            if picks:
                notes.append("TextSpan: " + ", ".join(f"{clean_label(t)} ({s:.0%})" for t, s in picks))
        heading = title or f"{clean_label(label)} · direct contributions"
        fig.suptitle(heading, fontsize=11, parse_math=False)
        footnote(fig, notes)
    return fig


def _similarity(trace: DecompositionTrace, text: str | int | None) -> float:
    return 1.0 if text is None else trace.similarity(text)


def _picks(trace: DecompositionTrace, layer: int, head: int, k: int) -> list[tuple[str, float]]:
    if trace.batch_heads is None or trace.batch_heads.shape[0] < 2:
        return []
    return trace.describe(k=k, layers=[layer])[(layer, head)]


def decomposition_view_figure(view: Any, **options: Any) -> Figure | SubFigure:
    """The figure of a ``DecompositionView``'s text, selected head and opacity."""
    trace: DecompositionTrace = view.trace
    selection: dict[str, Any] = {
        "text": None if view.direction == 0 else view.direction - 1,
        "layer": None if view.layer < 0 else view.layer,
        "head": None if view.head < 0 else view.head,
        "opacity": view.opacity,
        "title": getattr(view, "_title", "") or None,
    }
    selection.update(options)
    return decomposition_figure(trace, **selection)
