"""Matplotlib figure of a ``FaithfulnessReport``: the judged map beside its curves and its scores.

Left: the map, drawn as ``attribution_figure`` draws an attribution (text bars, image overlays). Right, top to
bottom: the deletion and insertion curves with the random orders' mean; the model-randomisation curve (rank
correlation after each randomised block, with the failure threshold); the table of scores, baselines and
verdicts. Token text is data (see ``.figures``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from mmviz.data.faithfulness import FaithfulnessReport
from mmviz.export.attribution_figures import attribution_figure
from mmviz.export.figures import _style

if TYPE_CHECKING:
    from matplotlib.figure import Figure, SubFigure

__all__ = ["faithfulness_figure", "faithfulness_view_figure"]

CURVES = ("deletion", "insertion")
VERDICT = {True: "pass", False: "FAIL", None: "–"}


def faithfulness_figure(
    report: FaithfulnessReport,
    *,
    cmap: str = "viridis",
    opacity: float = 0.6,
    figsize: tuple[float, float] = (13.0, 6.5),
    into: SubFigure | None = None,
) -> Figure:
    """Draws a report: the map, the deletion/insertion and randomisation curves, the score table.

    Args:
        report: from ``mmviz.evaluate``.
        cmap: colormap of the map (unsigned maps).
        opacity: opacity of the map over the images.
        figsize: inches.
        into: draw into this subfigure instead of a new figure.

    Returns:
        A ``matplotlib.figure.Figure``.
    """
    from matplotlib.figure import Figure

    with _style():
        fig: Any = Figure(figsize=figsize, layout="constrained") if into is None else into
        left, right = fig.subfigures(1, 2, width_ratios=[1.1, 1.0])
        attribution_figure(report.map_attribution(), cmap=cmap, opacity=opacity, title=report.name, into=left)
        axes = right.subplots(3, 1, height_ratios=[1.0, 1.0, 0.9])
        _curves(axes[0], report)
        _randomization(axes[1], report)
        _table(axes[2], report)
        right.suptitle(f"faithfulness: {report.verdict}", fontsize=11)
    return fig


def _curves(ax: Any, report: FaithfulnessReport) -> None:
    drawn = False
    for check, colour in zip(CURVES, ("#d62728", "#1f77b4")):
        if check not in report.results or not report.results[check].curve.size:
            continue
        x, y = report.curve(check)
        ax.plot(x, y, color=colour, label=f"{check} (map) {report[check]:.2f}")
        if report.results[check].reference.size:
            ax.plot(x, report.curve(check, reference=True)[1], color=colour, linestyle="--", label=f"{check} (random)")
        drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no deletion / insertion curve", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    ax.set_xlabel("fraction of units removed (deletion) / revealed (insertion)")
    ax.set_ylabel("target")
    ax.legend(fontsize=7, frameon=False)


def _randomization(ax: Any, report: FaithfulnessReport) -> None:
    result = report.results.get("model_randomization")
    if result is None or not result.curve.size:
        ax.text(0.5, 0.5, "no model-randomisation curve", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    ax.plot(result.x, result.curve, marker="o", color="#2ca02c")
    threshold = result.baselines.get("threshold")
    if threshold is not None:
        ax.axhline(threshold, color="#888888", linestyle=":", linewidth=1)
    ax.set_ylim(-1.05, 1.05)
    names = [".".join(label.split(".")[-2:]) for label in result.labels] or [str(int(v)) for v in result.x]
    ax.set_xticks(result.x, names, fontsize=6, rotation=45, ha="right")
    ax.set_ylabel("rank correlation")
    ax.set_xlabel("randomised blocks (top down)")


def _table(ax: Any, report: FaithfulnessReport) -> None:
    ax.set_axis_off()
    rows = []
    for check, score, bases, ok, _ in report.table():
        shown = "nan" if np.isnan(score) else f"{score:.3g}"
        rows.append([check, shown, ", ".join(f"{k} {v:.3g}" for k, v in bases.items()), VERDICT[ok]])
    rows += [[check, "", "skipped", "–"] for check in report.skipped]
    if not rows:
        return
    table = ax.table(cellText=rows, colLabels=["check", "score", "baselines", "verdict"], loc="center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    table.scale(1.0, 1.1)


def faithfulness_view_figure(view: Any, **options: Any) -> Figure:
    """The figure of a ``FaithfulnessView``, with its colormap and opacity (``options`` override them)."""
    options.setdefault("cmap", view.cmap)
    options.setdefault("opacity", view.opacity)
    return faithfulness_figure(view.report, **options)
