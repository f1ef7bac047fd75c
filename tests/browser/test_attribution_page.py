"""An exported AttributionView in headless Chromium over file://, with the network blocked."""

from __future__ import annotations

from typing import Any

import numpy as np

from mmviz.data import Attribution, TokenTable
from tests.browser.browser_helpers import CANVAS_STATS


def synthetic_attributions() -> list[Attribution]:
    """A 4×4-patch image (left half bright) after ``<s> what is`` and a 3-token answer, two methods."""
    rng = np.random.default_rng(0)
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[:, :32] = (230, 200, 40)
    image[:, 32:] = (40, 90, 200)
    k = np.arange(16)
    texts = ["<s>", *[f"<img {r},{c}>" for r, c in zip(k // 4, k % 4)], " what", " <b>is</b>", " red", " circle", "!"]
    n = len(texts)
    tokens = TokenTable.build(
        texts,
        kind=["special"] + ["image"] * 16 + ["text"] * 5,
        image_index=[-1] + [0] * 16 + [-1] * 5,
        patch_row=[-1, *(k // 4).tolist()] + [-1] * 5,
        patch_col=[-1, *(k % 4).tolist()] + [-1] * 5,
        generated=[False] * 19 + [True] * 3,
        images=[image],
        grids=[(4, 4)],
    )
    signed = rng.normal(size=(3, n)).astype(np.float32)
    signed[:, 1:17] = np.where((k % 4) < 2, 2.0, -2.0)  # left patches push up, right ones down
    for t in range(3):
        signed[t, 19 + t :] = 0  # causal
    pixels = np.zeros((3, 64, 64), dtype=np.float32)
    pixels[:, :, :32] = 1.0
    pixels[:, :, 32:] = -1.0
    ig = Attribution(
        signed,
        tokens,
        "integrated_gradients",
        (" red", " circle", "!"),
        "answer ' red circle!'",
        pixel_maps=(pixels,),
        delta=np.array([1e-3, 2e-3, 1e-3]),
    )
    sal = Attribution(np.abs(signed[:1]), tokens, "saliency", ("log p(' red circle!')",), "answer")
    return [ig, sal]


def _open(tmp_path: Any, page: Any, **options: Any) -> Any:
    view = synthetic_attributions()[0].show(**options) if not options.pop("both", False) else None
    if view is None:
        from mmviz.widgets import AttributionView

        view = AttributionView(synthetic_attributions(), **options)
    path = view.save(tmp_path / "attr.html", title="attribution")
    p = page.open(path)
    p.locator(".mmviz-attr-image-canvas").wait_for()
    return p


def test_page_renders_tokens_image_and_matrix(tmp_path: Any, page: Any, shots: Any) -> None:
    p = _open(tmp_path, page, both=True, target=1)
    root = p.locator(".mmviz-root.mmviz-attr")
    assert root.get_attribute("data-signed") == "1" and root.get_attribute("data-target") == "1"
    tokens = p.locator(".mmviz-attr-tok").all_text_contents()
    assert tokens == ["<s>", " what", " <b>is</b>", " red", " circle", "!"]  # markup stays text
    canvas = p.locator(".mmviz-attr-image-canvas")
    stats = canvas.evaluate(CANVAS_STATS)
    assert stats["painted"] == stats["pixels"] and stats["colours"] >= 4, stats
    # left half red-ish (positive), right half blue-ish (negative)
    left_minus_right = canvas.evaluate(
        """c => { const x = c.getContext('2d');
          const px = (fx) => x.getImageData(Math.floor(fx * c.width), c.height >> 1, 1, 1).data;
          const l = px(0.25), r = px(0.75); return (l[0] - l[2]) - (r[0] - r[2]); }"""
    )
    assert left_minus_right > 100
    assert p.locator(".mmviz-attr-matrix").is_visible()
    p.screenshot(path=str(shots / "attribution-ig.png"), full_page=True)
    assert page.requests == [] and page.errors == [] and page.dialogs == []


def test_hover_links_and_selectors_switch(tmp_path: Any, page: Any, shots: Any) -> None:
    p = _open(tmp_path, page, both=True)
    root = p.locator(".mmviz-root.mmviz-attr")
    p.locator(".mmviz-attr-tok", has_text="circle").hover()
    assert root.get_attribute("data-hover") == "20"
    assert "circle" in (p.locator(".mmviz-attr-status").text_content() or "")
    canvas = p.locator(".mmviz-attr-image-canvas")
    box = canvas.bounding_box()
    p.mouse.move(box["x"] + box["width"] * 0.9, box["y"] + box["height"] * 0.1)  # patch (0, 3)
    assert root.get_attribute("data-hover") == "4"
    matrix = p.locator(".mmviz-attr-matrix-canvas")
    mbox = matrix.bounding_box()
    p.mouse.click(mbox["x"] + 2, mbox["y"] + mbox["height"] * 0.9)  # last row
    assert root.get_attribute("data-target") == "2"
    p.locator(".mmviz-attr-entry").select_option("1")
    assert root.get_attribute("data-entry") == "1" and root.get_attribute("data-signed") == "0"
    assert p.locator(".mmviz-attr-matrix").is_hidden()
    p.mouse.move(0, 0)
    p.screenshot(path=str(shots / "attribution-saliency.png"), full_page=True)
    assert page.errors == [] and page.dialogs == []
