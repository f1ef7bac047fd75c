"""Layers and heads link across panes: the teaching CLIP's tower attention beside its decomposition.

Pointing at a head in the DecompositionView's grid marks the same layer and head on the AttentionView's
thumbnails (when it shows the same stack), and pointing at a thumbnail highlights the head in the grid.
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

import mmviz  # noqa: E402
from mmviz import teaching  # noqa: E402

MARGIN = 28  # js/src/views/decomposition.ts
LEFT, TOP = 40, 18  # js/src/views/thumbnails.ts


def _board() -> Any:
    torch.set_num_threads(1)
    model, processor = teaching.load_clip()
    scene = teaching.make_scenes(1, seed=5, n_objects=2)[0]
    inputs = processor(images=[scene.image], return_tensors="pt")
    with torch.no_grad(), mmviz.capture(model, processor, modules=["vision_model"]) as cap:
        model.get_image_features(**inputs)
    dec = mmviz.decompose(model, inputs, processor, texts=["red", "blue", "circle", "square"])
    return mmviz.Dashboard(cap.attention.show(module="vision_model"), dec.show(), title="heads, linked")


def test_a_head_pointed_at_in_one_pane_is_marked_in_the_other(tmp_path: Any, page: Any, shots: Any) -> None:
    p = page.open(_board().save(tmp_path / "heads.html"))
    p.set_viewport_size({"width": 1400, "height": 2400})
    grid = p.locator(".mmviz-dec-grid-canvas")
    grid.wait_for()
    thumbs = p.locator(".mmviz-thumbs")
    thumbs.wait_for()
    assert thumbs.get_attribute("data-marked") in (None, "")

    box = grid.bounding_box()
    cell = float(grid.get_attribute("data-cell") or 0)
    p.mouse.move(box["x"] + MARGIN + cell * 1.5, box["y"] + MARGIN + cell * 2.5)  # rows: layers; layer 2, head 1
    dec = p.locator(".mmviz-root.mmviz-dec")
    assert dec.get_attribute("data-layer") == "2" and dec.get_attribute("data-head") == "1"
    assert thumbs.get_attribute("data-marked") == "layer 2 head 1"
    p.screenshot(path=str(shots / "linked-heads-from-decomposition.png"), full_page=True)

    p.mouse.move(0, 0)
    assert thumbs.get_attribute("data-marked") == ""
    step = float((thumbs.get_attribute("data-cell") or "0,0,0").split(",")[2])
    tb = thumbs.bounding_box()
    p.mouse.move(tb["x"] + LEFT + step * 1.5, tb["y"] + TOP + step * 0.5)  # layer 1, head 0
    assert dec.get_attribute("data-layer") == "1" and dec.get_attribute("data-head") == "0"
    assert page.requests == [] and page.errors == [] and page.dialogs == []
