"""The `mmviz demo` report (the README's first command) in headless Chromium: every pane paints, offline."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from mmviz.demo import run_demo
from tests.browser.browser_helpers import CANVAS_STATS


def test_demo_report_paints_every_pane(tmp_path: Any, page: Any, shots: Any) -> None:
    p = page.open(run_demo(tmp_path / "demo.html", progress=False))
    panes = {  # per scene: CLIP attention, the VLM's Dashboard (attention + two attributions), cross-attention
        ".mmviz-heatmap": 4,
        ".mmviz-dashboard": 2,
        ".mmviz-attr-image-canvas": 4,
        ".mmviz-xattn-canvas": 2,
    }
    for selector, count in panes.items():
        p.locator(selector).first.wait_for()
        assert p.locator(selector).count() == count, selector
    for selector in (".mmviz-heatmap", ".mmviz-attr-image-canvas", ".mmviz-xattn-canvas"):
        for i in range(p.locator(selector).count()):
            stats = p.locator(selector).nth(i).evaluate(CANVAS_STATS)
            assert stats["painted"] > 0.5 * stats["pixels"] and stats["colours"] > 20, (selector, i, stats)
    p.screenshot(path=str(shots / "demo.png"), full_page=True)
    assert page.requests == [] and page.errors == [] and page.dialogs == []
