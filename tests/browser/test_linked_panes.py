"""A Dashboard of three kinds of pane (attention, attribution, cross-attention) linked through one store.

The proof is in pixels: hovering a word or token in one pane repaints the other panes (their canvases, or
their rendered region), in both directions, in an exported page. The JupyterLab variant lives in
``test_jupyterlab_dashboard.py``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

import mmviz
from mmviz.data import Attribution
from tests.browser.browser_helpers import CANVAS_STATS
from tests.browser.test_dashboard_page import _trace
from tests.widgets.test_cross_attention_view import synthetic_cross_trace


def three_pane_board() -> Any:
    """The diffusion prompt's cross-attention, the text encoder's attention over it, an attribution of it."""
    cross = synthetic_cross_trace(batch=1)
    table = cross.tables[0]
    scores = np.linspace(-1, 1, len(table), dtype=np.float32)[None]
    attr = Attribution(scores, table, "saliency", ("similarity",), "image-text similarity")
    return mmviz.Dashboard(cross, _trace(table), attr, title="one prompt, three panes")


def _pane(p: Any, kind: str) -> Any:
    return p.locator(f".mmviz-dashboard-pane.mmviz-dashboard-{kind}")


def _pixels(locator: Any) -> str:
    """A digest of what a pane shows on screen (its rendered pixels)."""
    return hashlib.sha1(locator.screenshot()).hexdigest()


def test_three_kinds_of_pane_link_both_ways(tmp_path: Any, page: Any, shots: Any) -> None:
    path = three_pane_board().save(tmp_path / "three.html")
    p = page.open(path)
    p.set_viewport_size({"width": 1400, "height": 3200})  # every pane on screen: no scrolling moves the pointer
    p.locator(".mmviz-xattn-canvas").wait_for()
    p.locator(".mmviz-dashboard-attention .mmviz-tok").first.wait_for()
    xattn_canvas = p.locator(".mmviz-xattn-canvas")
    attention, attribution = _pane(p, "attention"), _pane(p, "attribution")
    p.mouse.move(0, 0)
    still = {"attention": _pixels(attention), "attribution": _pixels(attribution)}

    # cross-attention word → the attention and attribution panes repaint that position
    p.locator(".mmviz-xattn-word", has_text="circle").hover()
    assert p.locator(".mmviz-root.mmviz-dashboard").get_attribute("data-hover") == "3"
    assert attention.locator(".mmviz-tok.mmviz-active").get_attribute("data-pos") == "3"
    assert attribution.locator(".mmviz-attr-tok.mmviz-active").get_attribute("data-pos") == "3"
    assert _pixels(attention) != still["attention"] and _pixels(attribution) != still["attribution"]
    p.screenshot(path=str(shots / "three-panes-from-word.png"), full_page=True)

    # attention token → the cross-attention pane previews that word's map (its canvas pixels change)
    p.mouse.move(0, 0)
    before = xattn_canvas.evaluate(CANVAS_STATS)["checksum"]
    attention.locator(".mmviz-tok[data-pos='8']").hover()  # "square"
    assert p.locator(".mmviz-root.mmviz-xattn").get_attribute("data-word") == "7"
    assert xattn_canvas.evaluate(CANVAS_STATS)["checksum"] != before

    # attribution token → the cross-attention and attention panes follow
    p.mouse.move(0, 0)
    attribution.locator(".mmviz-attr-tok[data-pos='2']").hover()  # "red"
    assert p.locator(".mmviz-root.mmviz-xattn").get_attribute("data-word") == "1"
    assert attention.locator(".mmviz-root.mmviz-attention").get_attribute("data-source") == "2"
    p.screenshot(path=str(shots / "three-panes-from-attribution.png"), full_page=True)
    assert page.requests == [] and page.errors == [] and page.dialogs == []
