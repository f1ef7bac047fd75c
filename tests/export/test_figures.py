from __future__ import annotations

import re

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from mmviz.export.figures import attention_figure, clean_label, save_figure
from mmviz.widgets import AttentionView
from tests.fixtures.synthetic import big_trace


def svg_texts(path) -> list[str]:
    """Text of every <text> element (svg.fonttype none keeps glyphs as text)."""
    import html

    return [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", path.read_text(encoding="utf-8"))]


def test_view_saves_png_svg_pdf_of_its_selection(trace, tmp_path):
    view = AttentionView(trace, layer=1, head=2, token=20)
    png = view.save(tmp_path / "fig.png", dpi=60)
    pixels = imread(png)
    assert pixels.shape[0] > 200 and pixels[..., :3].std() > 0.05  # drawn, not blank
    svg = view.save(tmp_path / "fig.svg")
    texts = svg_texts(svg)
    assert any("layer 1 · head 2" in t and "language_model" in t for t in texts)  # the title says what is shown
    assert " photo" in texts and "graph" in texts  # token labels stay text
    assert " $x^2$" in texts  # '$' is data: no mathtext, shown as typed
    assert "<img src=x oner…" in texts  # markup is text (escaped in the file, cut at 16 characters)
    assert "<img" not in svg.read_text(encoding="utf-8")
    assert "attention probability" in texts  # colorbar units
    assert (
        "from ' costs'" in texts and "over image 0 (4×4 patches)" in texts
    )  # the pinned token's attention over the image
    pdf = view.save(tmp_path / "fig.pdf")
    assert pdf.read_bytes().startswith(b"%PDF")


def test_selection_traits_drive_the_figure(trace, tmp_path):
    view = AttentionView(trace)
    view.module = "vision_tower"
    view.layer, view.aggregate = 0, "max"
    view.hide_special = True
    texts = svg_texts(view.save(tmp_path / "v.svg"))
    assert any("vision_tower · layer 0 · max over 2 heads" in t for t in texts)
    assert "<cls>" not in texts  # hidden special token
    assert any("image 0" in t for t in texts)


def test_bad_extension_is_a_clear_error(trace, tmp_path):
    view = AttentionView(trace)
    with pytest.raises(ValueError, match=r"ending in \.html, \.png, \.svg, \.pdf"):
        view.save(tmp_path / "fig.jpeg")
    with pytest.raises(ValueError, match=r"\.png, \.svg, \.pdf"):
        save_figure(trace.figure(), tmp_path / "fig.html")
    assert not list(tmp_path.iterdir())


def test_trace_figure_is_a_figure_for_composition(trace):
    fig = trace.figure(layer=0, head=1, merge_words=True, hide_special=True, token=19)
    assert isinstance(fig, Figure)
    matrix = fig.axes[0].images[0].get_array()
    # merged words: the 5 words + 2 markup tokens, 16 patches; <s> and </s> hidden
    assert matrix.shape == (23, 23)
    assert np.allclose(np.asarray(matrix).sum(axis=1), 1.0, atol=1e-4)  # rows renormalised over visible keys
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert " photograph" in labels and " \\$x^2\\$" in labels  # '$' escaped for the tick formatter


def test_mathtext_and_tex_never_see_token_text(trace, tmp_path):
    import matplotlib as mpl

    with mpl.rc_context({"text.usetex": True}):  # a user's rc must not send token text to TeX
        save_figure(trace.figure(title="cost $5 and $6"), tmp_path / "t.png", dpi=40)
    texts = svg_texts(save_figure(trace.figure(title="cost $5 and $6"), tmp_path / "t.svg"))
    assert "cost $5 and $6" in texts


def test_long_sequences_are_thinned_and_block_averaged(tmp_path):
    fig = attention_figure(big_trace(300, n_layers=1, n_heads=2), max_labels=30, max_matrix=128)
    ax = fig.axes[0]
    assert len(ax.get_xticklabels()) <= 30 and len(ax.get_yticklabels()) <= 30
    assert ax.images[0].get_array().shape == (100, 100)  # 300 tokens in blocks of 3
    assert save_figure(fig, tmp_path / "big.png", dpi=40).stat().st_size > 0


def test_clean_label():
    assert clean_label("a\nb") == "a\\nb"
    assert clean_label(" ") == "' '"
    assert clean_label("x" * 40) == "x" * 15 + "…"
    assert clean_label("\x1b[31m") == "\\u001b[31m"
