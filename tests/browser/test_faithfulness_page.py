"""An exported FaithfulnessView in headless Chromium: the map pane, the curves, the table, linking."""

from __future__ import annotations

from typing import Any

from tests.browser.browser_helpers import CANVAS_STATS
from tests.evaluation.test_view import image_report


def test_page_shows_map_curves_and_verdicts(tmp_path: Any, page: Any, shots: Any) -> None:
    path = image_report().show().save(tmp_path / "faith.html", title="faithfulness")
    p = page.open(path)
    p.locator(".mmviz-faith-table").wait_for()
    assert p.locator(".mmviz-faith-verdict").get_attribute("data-verdict") == "failed"
    rows = p.locator(".mmviz-faith-table tr[data-check]")
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.check)") == [
        "deletion",
        "model_randomization",
        "pointing",
        "iou",
    ]
    assert p.locator('tr[data-check="model_randomization"]').get_attribute("data-passed") == "false"
    plots = p.locator(".mmviz-faith-plot")
    assert plots.evaluate_all("cs => cs.map(c => c.dataset.series)") == ["2", "1"]  # deletion map + random; rho
    for i in range(2):
        stats = plots.nth(i).evaluate(CANVAS_STATS)
        assert stats["colours"] >= 3, stats  # frame, text and at least one curve
    p.locator(".mmviz-attr-tok", has_text="red").hover()
    assert p.locator(".mmviz-root.mmviz-attr").get_attribute("data-hover") == "1"
    p.screenshot(path=str(shots / "faithfulness.png"), full_page=True)
    assert page.requests == [] and page.errors == [] and page.dialogs == []
