"""An exported CrossAttentionView in headless Chromium over file://, with the network blocked."""

from __future__ import annotations

from typing import Any

from tests.browser.browser_helpers import CANVAS_STATS
from tests.widgets.test_cross_attention_view import synthetic_cross_trace


def _open(tmp_path: Any, page: Any, evil: bool = False, **options: Any) -> Any:
    view = synthetic_cross_trace(evil=evil).show(**options)
    path = view.save(tmp_path / "xattn.html", title="cross-attention")
    p = page.open(path)
    p.locator(".mmviz-xattn-canvas").wait_for()
    return p


def _heat_left_minus_right(p: Any) -> float:
    """Green channel at the circle's centre minus at the square's (viridis is green-yellow where high)."""
    return p.locator(".mmviz-xattn-canvas").evaluate(
        """c => {
        const ctx = c.getContext('2d');
        const g = (fx, fy) => ctx.getImageData(Math.floor(fx * c.width), Math.floor(fy * c.height), 1, 1).data[1];
        return g(18 / 64, 0.5) - g(46 / 64, 0.5);
      }"""
    )


def test_page_renders_words_and_maps(tmp_path: Any, page: Any, shots: Any) -> None:
    p = _open(tmp_path, page, evil=True, word="circle", step=-1)
    stats = p.locator(".mmviz-xattn-canvas").evaluate(CANVAS_STATS)
    assert stats["painted"] == stats["pixels"] and stats["colours"] > 50, stats
    words = p.locator(".mmviz-xattn-word").all_text_contents()
    assert words[:3] == ["a", "red", "circle"] and words[-1] == "<img src=x onerror=alert(1)>"
    assert p.locator(".mmviz-xattn-thumb").count() == len(words)
    assert p.locator(".mmviz-xattn-step-label").text_content() == "all 6 steps (sum)"
    assert _heat_left_minus_right(p) > 60  # "circle" is on the left
    p.screenshot(path=str(shots / "xattn-circle-all-steps.png"), full_page=True)
    assert page.requests == [] and page.errors == [] and page.dialogs == []


def test_hover_click_scrub_and_toggle(tmp_path: Any, page: Any, shots: Any) -> None:
    p = _open(tmp_path, page, word="circle", step=-1)
    root = p.locator(".mmviz-root.mmviz-xattn")
    canvas = p.locator(".mmviz-xattn-canvas")
    before = canvas.evaluate(CANVAS_STATS)["checksum"]
    p.locator(".mmviz-xattn-word", has_text="square").hover()
    assert root.get_attribute("data-word") == "7"
    assert canvas.evaluate(CANVAS_STATS)["checksum"] != before
    assert _heat_left_minus_right(p) < -60  # "square" is on the right
    p.locator(".mmviz-xattn-word", has_text="blue").click()
    p.mouse.move(0, 0)
    assert root.get_attribute("data-word") == "6"
    assert p.locator(".mmviz-xattn-word.is-selected").text_content() == "blue"
    slider = p.locator(".mmviz-xattn-step")
    slider.fill("0")
    assert root.get_attribute("data-step") == "0"
    early = canvas.evaluate(CANVAS_STATS)["checksum"]
    slider.fill("5")
    assert "6/6" in (p.locator(".mmviz-xattn-step-label").text_content() or "")
    assert canvas.evaluate(CANVAS_STATS)["checksum"] != early
    preview = p.locator(".mmviz-xattn-preview-canvas")
    assert preview.is_visible() and preview.get_attribute("data-step") == "5"
    p.screenshot(path=str(shots / "xattn-blue-last-step.png"), full_page=True)
    p.locator(".mmviz-xattn-res-toggle[data-key='16x16']").uncheck()
    assert "8×8" in (p.locator(".mmviz-xattn-caption").text_content() or "")
    p.locator(".mmviz-xattn-play").click()
    p.wait_for_timeout(900)
    assert root.get_attribute("data-playing") == "1"
    p.locator(".mmviz-xattn-play").click()
    assert root.get_attribute("data-playing") is None
    assert page.errors == [] and page.dialogs == []


def test_concepts_beside_the_words(tmp_path: Any, page: Any, shots: Any) -> None:
    from tests.widgets.test_cross_attention_concepts import synthetic_concept_trace

    view = synthetic_concept_trace(evil=True).show(word="disc", step=-1)
    p = page.open(view.save(tmp_path / "concepts.html", title="concept maps"))
    p.locator(".mmviz-xattn-canvas").wait_for()
    root = p.locator(".mmviz-root.mmviz-xattn")
    chips = p.locator(".mmviz-xattn-word.is-concept")
    assert chips.all_text_contents() == ["disc", "box", "<b>bg</b>"]  # text, never markup
    assert chips.first.evaluate("b => getComputedStyle(b).borderTopStyle") == "dashed"
    assert p.locator(".mmviz-xattn-word:not(.is-concept)").count() == 8
    assert p.locator(".mmviz-xattn-cell.is-concept .mmviz-xattn-concept-tag").count() == 3
    assert root.get_attribute("data-word") == "8"
    assert "concept “disc”" in (p.locator(".mmviz-xattn-caption").text_content() or "")
    assert _heat_left_minus_right(p) > 60  # "disc" sits on the circle, left
    p.screenshot(path=str(shots / "xattn-concept-disc.png"), full_page=True)
    chips.nth(1).click()
    p.mouse.move(0, 0)
    assert root.get_attribute("data-word") == "9" and _heat_left_minus_right(p) < -60  # "box": the square
    p.locator(".mmviz-xattn-step").fill("2")  # the same scrubber drives the concept maps
    assert root.get_attribute("data-step") == "2"
    assert "concept “box”" in (p.locator(".mmviz-xattn-caption").text_content() or "")
    assert page.requests == [] and page.errors == [] and page.dialogs == []
