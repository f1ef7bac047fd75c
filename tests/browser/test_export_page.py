"""Exported pages in headless Chromium over file://, with the network blocked."""

from __future__ import annotations

from typing import Any

import mmviz
from tests.browser.browser_helpers import CANVAS_STATS
from tests.fixtures.synthetic import make_trace

EVIL = "<img src=x onerror=alert(1)>"


def _export(tmp_path, **kw: Any):
    trace = make_trace(evil=True)
    view = trace.show(layer=1, head=0)
    path = tmp_path / "view.html"
    mmviz.save_html([view], path, title="</script><script>alert('title')</script>", notes="notes <b>x</b>", **kw)
    return path


def test_page_renders_offline_with_a_painted_heatmap(tmp_path, page, shots):
    p = page.open(_export(tmp_path))
    heat = p.locator(".mmviz-heatmap")
    heat.wait_for()
    stats = heat.evaluate(CANVAS_STATS)
    assert stats["painted"] > 0.5 * stats["pixels"] and stats["colours"] > 20, stats
    thumbs = p.locator(".mmviz-thumbs").evaluate(CANVAS_STATS)
    assert thumbs["colours"] > 20
    p.screenshot(path=str(shots / "export-initial.png"), full_page=True)
    assert page.requests == [] and page.errors == [] and page.dialogs == []
    assert p.locator("h1").text_content() == "</script><script>alert('title')</script>"
    assert p.locator(".mmviz-page-notes").text_content() == "notes <b>x</b>"


def test_hover_token_links_patches_and_matrix_row(tmp_path, page, shots):
    p = page.open(_export(tmp_path))
    image = p.locator(".mmviz-image-canvas")
    before = image.evaluate(CANVAS_STATS)
    assert image.get_attribute("data-painted") == "image"
    token = p.locator(".mmviz-tok", has_text="red")
    pos = token.get_attribute("data-pos")
    token.hover()
    assert image.get_attribute("data-painted") == "attention"
    assert image.evaluate(CANVAS_STATS)["checksum"] != before["checksum"]
    overlay = p.locator(".mmviz-heatmap-overlay")
    assert overlay.get_attribute("data-rows") == pos
    assert p.locator(".mmviz-root").get_attribute("data-source") == pos
    assert p.locator(".mmviz-tooltip").is_visible()
    p.screenshot(path=str(shots / "export-hover-token.png"), full_page=True)


def test_hover_patch_paints_tokens(tmp_path, page, shots):
    p = page.open(_export(tmp_path))
    image = p.locator(".mmviz-image-canvas")
    box = image.bounding_box()
    assert box
    # the bottom-right patch of the 4×4 grid; later text tokens attend to it, earlier ones cannot (causal)
    p.mouse.move(box["x"] + box["width"] * 0.9, box["y"] + box["height"] * 0.9)
    p.locator(".mmviz-heatmap-overlay").wait_for()
    assert p.locator(".mmviz-root").get_attribute("data-source") not in ("", None)
    values = p.locator(".mmviz-tok").evaluate_all("els => els.map(e => e.dataset.value || '')")
    assert any(v not in ("", "0") for v in values)


def test_click_thumbnail_changes_the_heatmap(tmp_path, page, shots):
    p = page.open(_export(tmp_path))
    heat = p.locator(".mmviz-heatmap")
    before = heat.evaluate(CANVAS_STATS)["checksum"]
    thumbs = p.locator(".mmviz-thumbs")
    left, top, step = (float(v) for v in thumbs.get_attribute("data-cell").split(","))
    thumbs.click(position={"x": left + step * 1.5, "y": top + step * 2.5})  # layer 1, head 2
    assert thumbs.get_attribute("data-selected") == "layer 1 head 2"
    assert p.locator(".mmviz-root").get_attribute("data-state") == "ready"
    assert heat.evaluate(CANVAS_STATS)["checksum"] != before
    assert p.locator(".mmviz-c-head select").input_value() == "2"
    p.screenshot(path=str(shots / "export-click-thumb.png"), full_page=True)


def test_hostile_token_text_stays_text(tmp_path, page):
    p = page.open(_export(tmp_path))
    texts = p.locator(".mmviz-tok").all_text_contents()
    assert EVIL in texts
    assert "</script><script>alert(2)</script>" in texts
    assert p.locator(".mmviz-strip img").count() == 0
    assert page.dialogs == [] and page.errors == []


def test_over_budget_export_says_what_it_left_out(tmp_path, page, shots):
    p = page.open(_export(tmp_path, budget=3000))
    notes = " ".join(p.locator(".mmviz-notes li").all_text_contents())
    assert "Left out" in notes and "per-head maps" in notes
    p.locator(".mmviz-c-layer select").select_option("0")
    p.locator(".mmviz-c-head select").select_option("3")
    assert p.locator(".mmviz-root").get_attribute("data-state") == "missing"
    assert "not embedded" in p.locator(".mmviz-status").text_content()


def test_4096_token_trace_opens_downsampled(tmp_path, page, shots):
    from tests.fixtures.synthetic import big_trace

    view = big_trace(4096, n_layers=1, n_heads=2).show(layer=0, head=1)
    assert view._modules[0]["q_step"] == 4
    path = tmp_path / "big.html"
    view.save(path, budget=3_000_000)
    p = page.open(path)
    assert float(p.get_attribute("body", "data-mmviz-painted-ms") or 1e9) < 10_000
    stats = p.locator(".mmviz-heatmap").evaluate(CANVAS_STATS)
    assert stats["colours"] > 20
    assert "averaged over blocks of 4×4" in " ".join(p.locator(".mmviz-notes li").all_text_contents())
    token = p.locator(".mmviz-tok").nth(10)
    token.hover()
    assert p.locator(".mmviz-heatmap-overlay").get_attribute("data-rows") == "2"  # position 10 → block 2
    p.screenshot(path=str(shots / "export-4096.png"))


def test_heatmap_zooms_with_the_wheel(tmp_path, page):
    p = page.open(_export(tmp_path))
    heat = p.locator(".mmviz-heatmap")
    overlay = p.locator(".mmviz-heatmap-overlay")
    box = overlay.bounding_box()
    assert box and heat.get_attribute("data-zoom") == "1.00"
    p.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.6)
    for _ in range(3):
        p.mouse.wheel(0, -200)
    zoomed = "() => document.querySelector('.mmviz-export').shadowRoot.querySelector('.mmviz-heatmap').dataset.zoom"
    p.wait_for_function(f"{zoomed} !== '1.00'")
    assert float(heat.get_attribute("data-zoom") or 1) > 1.5
    overlay.dblclick()
    assert heat.get_attribute("data-zoom") == "1.00"
