"""DecompositionView: state, options, figure and files (the page itself: tests/browser/test_decomposition_page.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from mmviz import _codec
from mmviz.errors import BudgetError
from tests.decompose.conftest import TEXTS

pytest.importorskip("anywidget")


def test_state_holds_each_heads_share_and_map(clip_dec: Any) -> None:
    from mmviz.widgets import DecompositionView

    view = clip_dec.show(text="blue circle", layer=1, head=0)
    assert isinstance(view, DecompositionView) and view._view == "decomposition"
    assert (view.direction, view.layer, view.head) == (2, 1, 0)
    assert view._labels[1:] == TEXTS
    shares = _codec.decode_tensor(view._shares)
    np.testing.assert_allclose(shares[2], clip_dec.scores("blue circle"), atol=1e-6)
    np.testing.assert_allclose(
        shares[0], clip_dec.heads @ clip_dec.embedding / np.linalg.norm(clip_dec.embedding) ** 2, atol=1e-5
    )
    maps = _codec.decode_tensor(view._maps)
    np.testing.assert_allclose(maps[2, 1, 0], clip_dec.patch_scores("blue circle", layer=1, head=0), atol=1e-6)
    assert view._similarity[2] == pytest.approx(clip_dec.similarity("blue circle"))
    described = clip_dec.describe(k=3)
    assert [t for t, _ in view._descriptions[1 * clip_dec.n_heads + 0]] == [t for t, _ in described[(1, 0)]]
    assert view.tokens() is clip_dec.tokens
    state = view.export_state()
    assert state["_standalone"] and state["_maps"] is view._maps


def test_options_are_checked(clip_dec: Any) -> None:
    from mmviz.widgets import DecompositionView

    view = DecompositionView(clip_dec, layer=-1, head=-1, describe=0)
    assert (view.direction, view.layer, view.head) == (0, -1, -1)
    assert all(d == [] for d in view._descriptions)
    with pytest.raises(KeyError, match="not one of the trace's texts"):
        DecompositionView(clip_dec, text="purple")
    with pytest.raises(IndexError, match="layer 5"):
        DecompositionView(clip_dec, layer=5, head=0)
    with pytest.raises(TypeError, match="valid options"):
        DecompositionView(clip_dec, colour="red")
    with pytest.raises(BudgetError, match="fewer texts"):
        DecompositionView(clip_dec, budget=100)


def test_figure_and_files(clip_dec: Any, tmp_path: Any) -> None:
    pytest.importorskip("matplotlib")
    view = clip_dec.show(text=0, layer=1, head=1)
    fig = view.figure()
    assert "TextSpan" in fig.get_supxlabel() and "a red square" in fig._suptitle.get_text()
    grid_ax, image_ax = fig.axes[0], fig.axes[1]
    np.testing.assert_allclose(grid_ax.images[0].get_array(), clip_dec.scores(0), atol=1e-6)
    np.testing.assert_allclose(image_ax.images[1].get_array(), clip_dec.patch_map(0, layer=1, head=1), atol=1e-6)
    whole = clip_dec.figure()  # no head: every head of every layer on the image
    np.testing.assert_allclose(whole.axes[1].images[1].get_array(), clip_dec.patch_map(), atol=1e-6)
    for suffix in ("png", "svg", "html"):
        path = view.save(tmp_path / f"dec.{suffix}")
        assert path.stat().st_size > 1000
    assert "a red square" in (tmp_path / "dec.html").read_text(encoding="utf-8")


def test_joins_a_dashboard_with_the_vision_towers_attention(clip: tuple[Any, Any], clip_dec: Any) -> None:
    import mmviz
    from tests.decompose.conftest import images

    torch = pytest.importorskip("torch")
    model, processor = clip
    inputs = dict(images(processor))
    inputs.update(processor.tokenizer(["a red square"] * 3, return_tensors="pt"))
    with mmviz.capture(model, processor=processor) as cap, torch.no_grad():
        model(**inputs)
    board = mmviz.Dashboard(cap.attention.show(module="vision_model"), clip_dec.show())
    assert [p.KIND for p in board.panes] == ["attention", "decomposition"]
    other = mmviz.decompose(model, images(processor), processor, batch_index=1)
    with pytest.raises(mmviz.InputMismatchError, match="image 0 differs"):
        mmviz.Dashboard(cap.attention.show(module="vision_model"), other.show())
