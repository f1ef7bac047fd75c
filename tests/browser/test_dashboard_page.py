"""An exported Dashboard (attention + attributions of one input) in headless Chromium: linked hover."""

from __future__ import annotations

from typing import Any

import numpy as np

import mmviz
from mmviz.data import AttentionTrace, ModuleAttention
from tests.browser.test_attribution_page import synthetic_attributions


def _trace(table: Any) -> AttentionTrace:
    n = len(table)
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(1, 2, 2, n, n)) + np.tril(np.zeros((n, n)))
    scores = np.where(np.tril(np.ones((n, n), dtype=bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    module = ModuleAttention("language_model", (0, 1), (0, 1), "text", "text", dense=probs.astype(np.float16))
    return AttentionTrace({"language_model": module}, {"text": [table]})


def test_dashboard_links_attribution_and_attention(tmp_path: Any, page: Any, shots: Any) -> None:
    attrs = synthetic_attributions()
    board = mmviz.Dashboard(_trace(attrs[0].tokens), attrs, title="why 'red'?")
    assert board.show() is board
    path = board.save(tmp_path / "board.html")
    p = page.open(path)
    p.locator(".mmviz-attr-image-canvas").wait_for()
    dash = p.locator(".mmviz-root.mmviz-dashboard")
    assert p.locator(".mmviz-dashboard-attention .mmviz-tok").count() > 0
    # attribution token → attention pane hovers the same position
    p.locator(".mmviz-attr-tok", has_text="circle").hover()
    assert dash.get_attribute("data-hover") == "20"
    active = p.locator(".mmviz-dashboard-attention .mmviz-tok.mmviz-active")
    assert active.count() == 1 and active.get_attribute("data-pos") == "20"
    # attention token → attribution pane highlights it
    p.locator(".mmviz-dashboard-attention .mmviz-tok[data-pos='18']").hover()
    assert p.locator(".mmviz-root.mmviz-attr").get_attribute("data-hover") == "18"
    assert p.locator(".mmviz-attr-tok.mmviz-active").get_attribute("data-pos") == "18"
    # attention image patch → attribution patch position
    canvas = p.locator(".mmviz-dashboard-attention .mmviz-image-canvas").first
    box = canvas.bounding_box()
    p.mouse.move(box["x"] + box["width"] * 0.9, box["y"] + box["height"] * 0.1)  # patch (0, 3)
    assert p.locator(".mmviz-root.mmviz-attr").get_attribute("data-hover") == "4"
    p.screenshot(path=str(shots / "dashboard.png"), full_page=True)
    assert page.requests == [] and page.errors == [] and page.dialogs == []
