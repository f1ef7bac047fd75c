"""An exported DecompositionView in headless Chromium over file://, with the network blocked."""

from __future__ import annotations

from typing import Any

import numpy as np

from mmviz.data import DecompositionTrace, TokenTable

MARGIN = 28  # js/src/views/decomposition.ts


def synthetic_decomposition() -> DecompositionTrace:
    """2 layers × 2 heads over CLS + 4×4 patches; head (1, 0) reads the left half positively, the right negatively."""
    rng = np.random.default_rng(0)
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[:, :32] = (230, 200, 40)
    image[:, 32:] = (40, 90, 200)
    k = np.arange(16)
    tokens = TokenTable.build(
        ["[CLS]", *[f"({r},{c})" for r, c in zip(k // 4, k % 4)]],
        kind=["special"] + ["image"] * 16,
        image_index=[-1] + [0] * 16,
        patch_row=[-1, *(k // 4).tolist()],
        patch_col=[-1, *(k % 4).tolist()],
        images=[image],
        grids=[(4, 4)],
    )
    dim, texts = 8, ("<b>red</b>", "blue")
    embedding = np.eye(dim, dtype=np.float32)[0] * 2.0
    maps = rng.normal(scale=0.01, size=(3, 2, 2, 17)).astype(np.float32)
    maps[:, 1, 0, 1:] = np.where((k % 4) < 2, 0.3, -0.1)
    heads = rng.normal(size=(2, 2, dim)).astype(np.float32)
    return DecompositionTrace(
        embedding=embedding,
        embed=embedding - heads.sum((0, 1)),
        mlp=np.zeros((2, dim)),
        heads=heads,
        bias=np.zeros((2, dim)),
        constant=np.zeros(dim),
        tokens=tokens,
        patches=np.zeros((2, 17, dim)),
        maps=maps,
        texts=texts,
        text_embeddings=np.eye(dim, dtype=np.float32)[:2],
        batch_heads=rng.normal(size=(5, 2, 2, dim)),
    )


def test_grid_hover_shows_the_heads_patch_map_and_texts(tmp_path: Any, page: Any, shots: Any) -> None:
    view = synthetic_decomposition().show(text="blue")
    p = page.open(view.save(tmp_path / "dec.html", title="decomposition"))
    p.locator(".mmviz-dec-grid-canvas").wait_for()
    root = p.locator(".mmviz-root.mmviz-dec")
    assert root.get_attribute("data-direction") == "2" and root.get_attribute("data-head") == "-1"
    grid = p.locator(".mmviz-dec-grid-canvas").bounding_box()
    cell = float(p.locator(".mmviz-dec-grid-canvas").get_attribute("data-cell") or 0)
    assert cell == 36  # a 2 × 2 grid gets the biggest cells
    p.mouse.move(grid["x"] + MARGIN + cell * 0.5, grid["y"] + MARGIN + cell * 1.5)  # layer 1, head 0
    assert root.get_attribute("data-layer") == "1" and root.get_attribute("data-head") == "0"
    image = p.locator(".mmviz-dec-image-canvas")
    assert image.get_attribute("data-painted") == "head"
    left_minus_right = image.evaluate(
        """c => { const x = c.getContext('2d');
          const px = (fx) => x.getImageData(Math.floor(fx * c.width), c.height >> 1, 1, 1).data;
          const l = px(0.25), r = px(0.75); return (l[0] - l[2]) - (r[0] - r[2]); }"""
    )
    assert left_minus_right > 100  # positive (red) on the left, negative (blue) on the right
    texts = p.locator(".mmviz-dec-texts li").all_text_contents()
    assert len(texts) == 2 and any("<b>red</b>" in t for t in texts)  # markup stays text
    assert "layer 1, head 0" in (p.locator(".mmviz-dec-status").text_content() or "")
    p.mouse.click(grid["x"] + MARGIN + cell * 1.5, grid["y"] + MARGIN + cell * 0.5)  # select layer 0, head 1
    box = image.bounding_box()
    p.mouse.move(box["x"] + box["width"] * 0.9, box["y"] + box["height"] * 0.1)  # patch (0, 3)
    assert root.get_attribute("data-layer") == "0" and root.get_attribute("data-head") == "1"  # the selection
    assert "(0,3)" in (p.locator(".mmviz-dec-status").text_content() or "")
    p.locator(".mmviz-dec-direction").select_option("0")
    assert root.get_attribute("data-direction") == "0"
    p.screenshot(path=str(shots / "decomposition.png"), full_page=True)
    assert page.requests == [] and page.errors == [] and page.dialogs == []
