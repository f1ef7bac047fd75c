from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from mmviz.data import Attribution
from mmviz.export.attribution_figures import attribution_figure
from mmviz.export.figures import save_figure
from tests.export.test_figures import svg_texts
from tests.fixtures.synthetic import vlm_table


def make_attribution(method: str = "integrated_gradients", pixels: bool = True) -> Attribution:
    table = vlm_table(["a", "$5", "photograph", "of", "a", "red", "circle"])
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(2, len(table))).astype(np.float32)
    maps = (rng.normal(size=(2, 32, 32)).astype(np.float32),) if pixels else ()
    return Attribution(scores, table, method, ("log p(' red')", "log p(' circle')"), "answer", pixel_maps=maps)


def test_signed_attribution_png_and_svg(tmp_path):
    attr = make_attribution()
    fig = attribution_figure(attr, target=1)
    assert imread(save_figure(fig, tmp_path / "a.png", dpi=50))[..., :3].std() > 0.05
    texts = svg_texts(save_figure(fig, tmp_path / "a.svg"))
    assert "integrated_gradients · log p(' circle')" in texts
    assert " $5" in texts and " photo" in texts
    assert "attribution score (signed)" in texts
    ax = fig.axes[0]
    assert len(ax.patches) == int((attr.tokens.kind != "image").sum()) == 11  # one bar per non-image token


def test_unsigned_patch_scores(tmp_path):
    fig = attribution_figure(make_attribution("saliency", pixels=False), cmap="magma")
    assert any("image 0 (patches)" in a.get_title() for a in fig.axes)
    with pytest.raises(IndexError, match="target 5"):
        attribution_figure(make_attribution(), target=5)


def test_attribution_view_saves_its_selection_as_a_figure(tmp_path):
    view = make_attribution().show(target=1, opacity=0.3)
    assert imread(view.save(tmp_path / "view.png", dpi=50))[..., :3].std() > 0.05
    assert "integrated_gradients · log p(' circle')" in svg_texts(view.save(tmp_path / "view.svg"))
    assert view.save(tmp_path / "view.pdf").read_bytes().startswith(b"%PDF")
    assert view.save(tmp_path / "view.html").read_text(encoding="utf-8").lower().startswith("<!doctype html>")
    with pytest.raises(ValueError, match=r"\.html, \.png, \.svg, \.pdf"):
        view.save(tmp_path / "view.gif")
