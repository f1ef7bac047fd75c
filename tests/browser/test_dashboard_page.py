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


def _two_image_attribution() -> Any:
    """``<s>``, a 2×2-patch image, ``and``, a 2×2-patch image, ``?``: patch scores equal their position."""
    from mmviz.data import Attribution, TokenTable

    left = np.full((32, 32, 3), (230, 200, 40), np.uint8)
    right = np.full((32, 32, 3), (40, 90, 200), np.uint8)
    cells = [(0, 0), (0, 1), (1, 0), (1, 1)]
    texts = ["<s>", *[f"<a {r},{c}>" for r, c in cells], " and", *[f"<b {r},{c}>" for r, c in cells], " ?"]
    table = TokenTable.build(
        texts,
        kind=["special"] + ["image"] * 4 + ["text"] + ["image"] * 4 + ["text"],
        image_index=[-1] + [0] * 4 + [-1] + [1] * 4 + [-1],
        patch_row=[-1] + [r for r, _ in cells] + [-1] + [r for r, _ in cells] + [-1],
        patch_col=[-1] + [c for _, c in cells] + [-1] + [c for _, c in cells] + [-1],
        images=[left, right],
        grids=[(2, 2), (2, 2)],
    )
    scores = np.arange(len(texts), dtype=np.float32)[None]
    return Attribution(scores, table, "saliency", ("log p(x)",), "answer")


def test_dashboard_links_patches_of_every_image(tmp_path: Any, page: Any) -> None:
    attr = _two_image_attribution()
    path = mmviz.Dashboard(_trace(attr.tokens), attr).save(tmp_path / "two.html")
    p = page.open(path)
    p.locator(".mmviz-attr-image-canvas").first.wait_for()
    attention = p.locator(".mmviz-dashboard-attention .mmviz-image-canvas")
    assert attention.count() == 2
    # a patch of the SECOND image in the attention pane → that patch's position in the attribution pane
    box = attention.nth(1).bounding_box()
    p.mouse.move(box["x"] + box["width"] * 0.75, box["y"] + box["height"] * 0.75)  # patch (1, 1) of image 1
    assert p.locator(".mmviz-root.mmviz-attr").get_attribute("data-hover") == "9"
    # and back: a patch of the second image in the attribution pane → the attention pane hovers it
    attr_canvas = p.locator(".mmviz-attr-image-canvas").nth(1)
    box = attr_canvas.bounding_box()
    p.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.25)  # patch (0, 0) of image 1
    assert p.locator(".mmviz-root.mmviz-dashboard").get_attribute("data-hover") == "6"
    attention_root = p.locator(".mmviz-dashboard-attention .mmviz-root.mmviz-attention")
    assert attention_root.get_attribute("data-source") == "6", "the attention pane hovers patch (0, 0) of image 1"
    assert page.requests == [] and page.errors == [] and page.dialogs == []
