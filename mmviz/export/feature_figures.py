"""Matplotlib figure of one sparse-autoencoder feature: what ``FeatureView`` shows for the chosen feature.

Left, the feature's activation at every non-image position as bars under the token texts; right (when the
trace has images), the image with the feature's activation over its patches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from mmviz.data.features import FeatureTrace
from mmviz.export.figures import _style, clean_label, colormap, footnote, tick_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure, SubFigure

__all__ = ["feature_figure"]

MAX_BARS = 80
"""Text positions drawn as bars (the strongest are kept beyond this, in order)."""


def feature_figure(
    trace: FeatureTrace,
    *,
    feature: int,
    image: int = 0,
    label: str | None = None,
    cmap: str = "viridis",
    opacity: float = 0.65,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
    into: SubFigure | None = None,
) -> Figure | SubFigure:
    """Draws one feature's activation over the tokens and over an image's patches.

    Args:
        trace: the feature trace (``mmviz.features(...)``).
        feature: the feature.
        image: which image of the trace to draw (when it has images).
        label: a name for the feature, shown in the title (text, never markup).
        cmap: colormap of the image overlay.
        opacity: opacity of the overlay.
        title: figure title (default: the feature and the site).
        figsize: inches.
        into: draw into this subfigure instead of a new figure.

    Returns:
        The ``Figure`` (or ``into``).
    """
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    acts = trace.activations(feature)
    tokens = trace.tokens
    text_pos = np.flatnonzero(tokens.kind != "image")
    notes = []
    if len(text_pos) > MAX_BARS:
        keep = np.sort(np.argsort(-acts[text_pos], kind="stable")[:MAX_BARS])
        notes.append(f"the {MAX_BARS} strongest of {len(text_pos)} token positions")
        text_pos = text_pos[keep]
    has_image = 0 <= image < len(tokens.images)
    vmax = float(np.nanmax(acts)) if acts.size and np.nanmax(acts) > 0 else 1.0
    with _style():
        fig: Any = (
            Figure(figsize=figsize or (10.0 if has_image else 8.0, 3.6), layout="constrained") if into is None else into
        )
        axes = fig.subplots(1, 2, width_ratios=[2.2, 1.0]) if has_image else [fig.subplots(1, 1)]
        ax = axes[0]
        ax.bar(np.arange(len(text_pos)), acts[text_pos], color=colormap(cmap)(0.75))
        ax.set_xticks(np.arange(len(text_pos)))
        ax.set_xticklabels([tick_text(clean_label(str(tokens.text[p]))) for p in text_pos], rotation=90, fontsize=7)
        ax.set_ylabel("activation")
        ax.set_xlim(-0.6, max(len(text_pos), 1) - 0.4)
        if has_image:
            picture = tokens.images[image]
            height, width = picture.shape[:2]
            ax_img = axes[1]
            ax_img.imshow(picture, extent=(0, width, height, 0))
            shown = ax_img.imshow(
                np.ma.masked_invalid(trace.image_map(feature, image)),
                extent=(0, width, height, 0),
                cmap=colormap(cmap),
                norm=Normalize(0.0, vmax),
                alpha=opacity,
                interpolation="nearest",
            )
            ax_img.set_xticks([])
            ax_img.set_yticks([])
            ax_img.set_title(f"image {image} patches", fontsize=9)
            bar = fig.colorbar(shown, ax=ax_img, shrink=0.8, pad=0.02)
            bar.ax.tick_params(labelsize=6)
        if not trace.is_exact(feature):
            notes.append(f"activations outside each position's top {trace.k} read 0")
        notes.append(f"mean relative reconstruction error {float(np.nanmean(trace.relative_error)):.3f}")
        name = f"feature {int(feature)}" + (f" ({clean_label(label)})" if label else "")
        fig.suptitle(title or f"{name} at {trace.site}", fontsize=11, parse_math=False)
        footnote(fig, notes)
    return fig
