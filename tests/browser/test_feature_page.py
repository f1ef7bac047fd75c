"""An exported FeatureView (alone and in a Dashboard) in headless Chromium over file://, network blocked."""

from __future__ import annotations

from typing import Any

import numpy as np

import mmviz
from mmviz.data import Attribution
from tests.browser.browser_helpers import CANVAS_STATS
from tests.features.synthetic import synthetic_features

LEFT_MINUS_RIGHT = """c => { const x = c.getContext('2d');
  const px = (fx) => x.getImageData(Math.floor(fx * c.width), c.height >> 1, 1, 1).data;
  const l = px(0.2), r = px(0.8); return Math.abs(l[0] - r[0]) + Math.abs(l[1] - r[1]) + Math.abs(l[2] - r[2]); }"""


def test_feature_colours_tokens_and_patches_and_tooltip_is_text(tmp_path: Any, page: Any, shots: Any) -> None:
    view = synthetic_features().show(labels={3: "<b>left</b>", 7: "right"})
    p = page.open(view.save(tmp_path / "features.html", title="features"))
    p.locator(".mmviz-feat .mmviz-image-canvas").wait_for()
    root = p.locator(".mmviz-root.mmviz-feat")
    assert root.get_attribute("data-feature") == "3"
    red = p.locator(".mmviz-feat .mmviz-tok[data-pos='17']")
    assert float(red.get_attribute("data-value") or 0) == 1.5 and red.evaluate("s => s.style.backgroundColor") != ""
    canvas = p.locator(".mmviz-feat .mmviz-image-canvas")
    before = canvas.evaluate(CANVAS_STATS)["checksum"]
    assert canvas.get_attribute("data-painted") == "attention"  # the image pane's painted-values state
    # the gallery: the image patches of the left half first, each with its crop; markup stays text
    items = p.locator(".mmviz-feat-gallery li")
    assert items.count() == 8 and items.first.locator("canvas").count() == 1
    assert p.locator(".mmviz-feat-gallery li[data-pos='17']").count() == 0  # 1.5 < the eight patches' 2.0
    # hover " red": the tooltip lists its top features as text, labels included verbatim
    red.hover()
    tip = p.locator(".mmviz-feat .mmviz-tooltip")
    assert root.get_attribute("data-hover") == "17"
    text = tip.text_content() or ""
    assert "#3 <b>left</b>: 1.5" in text and tip.locator("b").count() == 0
    # pick feature 7: the right half lights up instead
    p.locator(".mmviz-feat-feature").select_option(label="#7 right (top-k)")
    assert root.get_attribute("data-feature") == "7"
    assert canvas.evaluate(CANVAS_STATS)["checksum"] != before
    assert canvas.evaluate(LEFT_MINUS_RIGHT) > 30
    # click an evil token: nothing executes, the view keeps working
    p.locator(".mmviz-feat .mmviz-tok[data-pos='20']").click()
    p.screenshot(path=str(shots / "features.png"), full_page=True)
    assert page.requests == [] and page.errors == [] and page.dialogs == []


def test_feature_pane_links_with_an_attribution_pane(tmp_path: Any, page: Any, shots: Any) -> None:
    ft = synthetic_features()
    attr = Attribution(np.linspace(0, 1, len(ft.tokens), dtype=np.float32)[None], ft.tokens, "saliency", ("x",), "x")
    p = page.open(mmviz.Dashboard(ft, attr, title="features + attribution").save(tmp_path / "board.html"))
    p.set_viewport_size({"width": 1400, "height": 2400})
    p.locator(".mmviz-dashboard-features .mmviz-tok").first.wait_for()
    attribution = p.locator(".mmviz-dashboard-attribution")
    features = p.locator(".mmviz-dashboard-features")
    features.locator(".mmviz-tok[data-pos='18']").hover()
    assert attribution.locator(".mmviz-attr-tok.mmviz-active").get_attribute("data-pos") == "18"
    p.mouse.move(0, 0)
    attribution.locator(".mmviz-attr-tok[data-pos='17']").hover()
    assert features.locator(".mmviz-root.mmviz-feat").get_attribute("data-hover") == "17"
    assert features.locator(".mmviz-tok.mmviz-active").get_attribute("data-pos") == "17"
    # a patch hovered in the features pane is the same patch in the attribution pane's image
    box = features.locator(".mmviz-image-canvas").bounding_box()
    p.mouse.move(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.1)  # patch (0, 0) = position 1
    assert attribution.locator(".mmviz-root.mmviz-attr").get_attribute("data-hover") == "1"
    p.screenshot(path=str(shots / "features-dashboard.png"), full_page=True)
    assert page.requests == [] and page.errors == [] and page.dialogs == []
