"""PatchingView in an exported page: the heat map, the token strip and the image pane follow the pointer,
and a Dashboard links it with an attribution of the same input (pixels and highlighted tokens, both ways)."""

from __future__ import annotations

from typing import Any

import numpy as np

import mmviz
from mmviz.data import Attribution
from tests.browser.browser_helpers import CANVAS_STATS
from tests.patching.test_patching_data import trace


def test_patching_pane_links_with_an_attribution(tmp_path: Any, page: Any, shots: Any) -> None:
    res = trace()
    scores = np.linspace(-1, 1, len(res.tokens), dtype=np.float32)[None]
    attr = Attribution(scores, res.tokens, "saliency", ("log p",), "answer")
    path = mmviz.Dashboard(res, attr, title="patching and attribution").save(tmp_path / "patching.html")
    p = page.open(path)
    p.set_viewport_size({"width": 1400, "height": 2400})
    grid = p.locator(".mmviz-patching-grid")
    grid.wait_for()
    image = p.locator(".mmviz-patching-image-canvas")
    root = p.locator(".mmviz-root.mmviz-patching")
    assert root.get_attribute("data-layer") == "0"
    before = image.evaluate(CANVAS_STATS)["checksum"]

    # a heat-map cell: layer row 1 (block 2), position 5 (" red") → the image pane shows layer 2
    box = grid.bounding_box()
    p.mouse.move(box["x"] + box["width"] * 5.5 / 6, box["y"] + box["height"] * 0.75)
    assert root.get_attribute("data-hover") == "5" and root.get_attribute("data-hover-layer") == "1"
    assert image.get_attribute("data-layer") == "2"
    assert image.evaluate(CANVAS_STATS)["checksum"] != before
    attribution = p.locator(".mmviz-dashboard-attribution")
    assert attribution.locator(".mmviz-attr-tok.mmviz-active").get_attribute("data-pos") == "5"
    p.screenshot(path=str(shots / "patching-from-grid.png"), full_page=True)

    # a click selects the layer row (synced trait); the attribution token points back into the strip
    p.mouse.click(box["x"] + box["width"] * 5.5 / 6, box["y"] + box["height"] * 0.75)
    assert root.get_attribute("data-layer") == "1"
    p.mouse.move(0, 0)
    attribution.locator(".mmviz-attr-tok[data-pos='0']").hover()
    assert p.locator(".mmviz-patching-tok.mmviz-active").get_attribute("data-pos") == "0"
    assert page.requests == [] and page.errors == [] and page.dialogs == []
