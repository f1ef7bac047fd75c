"""An exported LensView in headless Chromium over file://, with the network blocked."""

from __future__ import annotations

from typing import Any

from tests.browser.browser_helpers import CANVAS_STATS
from tests.lens.test_lens_view import image_lens


def test_grid_image_tooltip_and_token_choice(tmp_path: Any, page: Any, shots: Any) -> None:
    view = image_lens().show(token=" red", layer=1)
    path = view.save(tmp_path / "lens.html", title="lens")
    p = page.open(path)
    grid = p.locator(".mmviz-lens-canvas")
    grid.wait_for()
    root = p.locator(".mmviz-root.mmviz-lens")
    assert root.get_attribute("data-token") == "0" and root.get_attribute("data-layer") == "1"
    stats = grid.evaluate(CANVAS_STATS)
    assert stats["colours"] >= 12, stats  # 12 cells of different probabilities, labels
    image = p.locator(".mmviz-lens .mmviz-image-canvas")
    assert image.evaluate(CANVAS_STATS)["colours"] >= 2
    # hover the cell of layer 2 (top row), position 3: its top-k in the tooltip, as text
    box = grid.bounding_box()
    assert box is not None
    p.mouse.move(box["x"] + 40 + 3.5 * (box["width"] - 44) / 4, box["y"] + 5)
    tip = p.locator(".mmviz-tooltip")
    tip.wait_for()
    text = tip.text_content() or ""
    assert "layer 2 · position 3" in text and "p( red)" in text, text
    assert p.locator(".mmviz-tooltip b").count() == 0  # token text never becomes markup
    assert root.get_attribute("data-hover") == "3"
    # hovering the right patch of the image points at position 2
    ibox = image.bounding_box()
    assert ibox is not None
    p.mouse.move(ibox["x"] + ibox["width"] * 0.75, ibox["y"] + ibox["height"] * 0.5)
    assert root.get_attribute("data-hover") == "2"
    p.select_option(".mmviz-lens-token", "-1")
    assert root.get_attribute("data-token") == "-1"
    p.screenshot(path=str(shots / "lens_page.png"))
    assert not page.requests and not page.errors, (page.requests, page.errors)
