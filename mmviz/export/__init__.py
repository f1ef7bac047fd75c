"""Exports of mmviz views: one self-contained, offline HTML file (:func:`save_html`)."""

from __future__ import annotations

from mmviz.export.html import render_html, save_html

__all__ = ["render_html", "save_html"]
