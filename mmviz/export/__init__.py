"""Exports of mmviz views: offline HTML pages and matplotlib figures.

``save_html`` writes one self-contained, offline HTML file; ``attention_figure``, ``attribution_figure``,
``cross_attention_figure``, ``decomposition_figure``, ``feature_figure``, ``lens_figure``, ``patching_figure``
and ``save_figure`` draw a view's current selection as PNG, SVG or PDF. This is the only package that imports
matplotlib.
"""

from __future__ import annotations

from mmviz.export.attribution_figures import attribution_figure
from mmviz.export.cross_attention_figures import cross_attention_figure
from mmviz.export.decomposition_figures import decomposition_figure
from mmviz.export.feature_figures import feature_figure
from mmviz.export.figures import attention_figure, save_figure
from mmviz.export.html import render_html, save_html
from mmviz.export.lens_figures import lens_figure
from mmviz.export.patching_figures import patching_figure

__all__ = [
    "attention_figure",
    "attribution_figure",
    "cross_attention_figure",
    "decomposition_figure",
    "feature_figure",
    "lens_figure",
    "patching_figure",
    "render_html",
    "save_figure",
    "save_html",
]
