"""Matplotlib figures of diffusion cross-attention: the image, then each word's (and concept's) heat map over it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mmviz.data.cross_attention import CrossAttentionTrace
from mmviz.data.display import colormap_names
from mmviz.export.figures import colormap

if TYPE_CHECKING:
    from matplotlib.figure import Figure, SubFigure

__all__ = ["cross_attention_figure"]


def cross_attention_figure(
    trace: CrossAttentionTrace,
    words: Sequence[str | int] | None = None,
    timesteps: Any = None,
    layers: Any = None,
    batch_index: int = 0,
    cmap: str = "viridis",
    alpha: float = 0.5,
    ncols: int | None = None,
    panel_size: float = 2.2,
    title: str | None = None,
    into: Figure | SubFigure | None = None,
    concepts: Sequence[str | int] | None = None,
) -> Figure | SubFigure:
    """The image, then each word's heat map over it, then each concept's (min-max normalised per panel).

    Args:
        trace: the trace.
        words: words or word indices (default: every word of the prompt).
        timesteps: steps to sum over (see ``CrossAttentionTrace.heatmap``).
        layers: layers to sum over.
        batch_index: batch item.
        cmap: colormap of the heat maps (``mmviz.widgets.COLORMAPS``, as in the views, or a matplotlib name).
        alpha: opacity of the heat maps over the image.
        ncols: panels per row (default: up to 6).
        panel_size: inches per panel.
        title: figure title (text, never parsed as mathtext).
        into: a figure or subfigure to draw in (a Dashboard's pane); default a new figure.
        concepts: captured concepts or their indices (default: every concept, when the trace has concept
            maps in the chosen layers; ``[]``: none), titled "concept: …".
    """
    from matplotlib.figure import Figure

    heat_cmap = colormap(cmap) if cmap in colormap_names() else cmap  # a matplotlib name works too
    chosen = list(range(len(trace.words(batch_index)))) if words is None else list(words)
    with_concepts = trace.concepts and any(s in trace.concept_layers for s in trace.layer_index(layers))
    if concepts is None:
        concepts = list(range(len(trace.concepts))) if with_concepts else []
    concept_maps = trace.concept_token_maps(timesteps, layers, batch_index) if concepts else None
    image = trace.image(batch_index)
    panels = len(chosen) + len(concepts) + (1 if image is not None else 0)
    cols = ncols or min(6, max(panels, 1))
    rows = -(-panels // cols)
    fig = into if into is not None else Figure(figsize=(panel_size * cols, panel_size * rows + 0.2))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    flat = list(axes.ravel())
    if image is not None:
        flat[0].imshow(image)
        flat[0].set_title("image", fontsize=9)
        flat = flat[1:]
    # titles name the words that trace.heatmap reads: indices count the words without BOS/EOS
    named = [(trace._word(word, batch_index, special=False)[0], word) for word in chosen]
    named += [(f"concept: {trace.concepts[trace.concept_index(c)]}", c) for c in concepts]
    for i, (ax, (text, word)) in enumerate(zip(flat, named)):
        if i < len(chosen):
            heat = trace.heatmap(word, timesteps, layers, batch_index)
        else:
            assert concept_maps is not None
            heat = concept_maps[trace.concept_index(word)]
        span = float(heat.max() - heat.min())
        heat = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
        if image is not None:
            ax.imshow(image)
            ax.imshow(heat, cmap=heat_cmap, alpha=alpha, vmin=0, vmax=1)
        else:
            ax.imshow(heat, cmap=heat_cmap, vmin=0, vmax=1)
        ax.set_title(text, fontsize=9, parse_math=False)
    if title:
        fig.suptitle(title, parse_math=False)
    if isinstance(fig, Figure):
        fig.tight_layout()
    return fig
