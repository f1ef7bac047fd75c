"""LensView: state, options, figure, files, Dashboard (the page in a browser: tests/browser/test_lens_page.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mmviz
from mmviz import _codec
from mmviz.data.lens import LensTrace
from mmviz.errors import BudgetError, InputMismatchError

pytest.importorskip("anywidget")


def image_lens(text: tuple[str, ...] = ("<s>", "<img>", "<img>", "red$<b>")) -> LensTrace:
    """3 layers × 4 positions (two image patches in a 1×2 grid), top-2, one named token."""
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    table = mmviz.TokenTable.build(
        list(text),
        kind=["special", "image", "image", "text"],
        image_index=[-1, 0, 0, -1],
        patch_row=[-1, 0, 0, -1],
        patch_col=[-1, 0, 1, -1],
        images=[image],
        grids=[(1, 2)],
    )
    rng = np.random.default_rng(0)
    top_probs = np.sort(rng.uniform(0, 0.5, (1, 3, 4, 2)), axis=-1)[..., ::-1]
    return LensTrace(
        top_ids=rng.integers(0, 3, (1, 3, 4, 2)),
        top_probs=top_probs,
        entropy=rng.uniform(0, 3, (1, 3, 4)),
        named_probs=np.arange(12, dtype=np.float32).reshape(1, 3, 4, 1) / 12,
        named_scores=np.zeros((1, 3, 4, 1)),
        named=(" red",),
        named_ids=[1],
        vocab_ids=[0, 1, 2],
        vocab_text=["<b>bold</b>", " red", "$x$"],
        layers=(0, 1, 2),
        positions=[0, 1, 2, 3],
        tables=(table,),
        info={"model": "Tiny"},
    )


def test_state_is_binary_and_holds_the_lens() -> None:
    from mmviz.widgets import LensView

    lens = image_lens()
    view = lens.show(token=" red", layer=1)
    assert isinstance(view, LensView) and view._view == "lens"
    assert view.token == 0 and view.layer == 1
    data = view._lens
    np.testing.assert_array_equal(_codec.decode_tensor(data["top_ids"]), lens.top_ids[0])
    np.testing.assert_array_equal(_codec.decode_tensor(data["top_probs"]), lens.top_probs[0])
    np.testing.assert_array_equal(_codec.decode_tensor(data["named_probs"]), lens.named_probs[0])
    np.testing.assert_array_equal(_codec.decode_tensor(data["positions"]), [0, 1, 2, 3])
    assert data["named"] == [" red"] and data["vocab_text"] == ["<b>bold</b>", " red", "$x$"]
    assert data["layers"] == [0, 1, 2] and view._tokens["text"][3] == "red$<b>"
    np.testing.assert_array_equal(view.values(), lens.prob(" red"))
    view.token = -1
    np.testing.assert_array_equal(view.values(), lens.top_probs[0, :, :, 0])
    state = view.export_state()
    assert state["_standalone"] and state["_lens"] is view._lens
    assert view.tokens() is lens.tokens
    data_part, _ = lens._repr_mimebundle_()  # a cell ending in the lens shows its view
    assert "application/vnd.jupyter.widget-view+json" in data_part


def test_bad_options_are_clear_errors() -> None:
    from mmviz.widgets import LensView

    lens = image_lens()
    with pytest.raises(KeyError, match="not a named output"):
        LensView(lens, token=" blue")
    with pytest.raises(IndexError, match="was not lensed"):
        LensView(lens, layer=7)
    with pytest.raises(IndexError, match="batch_index"):
        LensView(lens, batch_index=1)
    with pytest.raises(TypeError, match="valid options"):
        LensView(lens, head=3)
    with pytest.raises(TypeError, match="LensTrace"):
        LensView("lens")  # type: ignore[arg-type]
    with pytest.raises(BudgetError, match="positions="):
        LensView(lens, budget=100)
    view = LensView(lens)
    assert view.layer == 2  # the last layer by default
    import traitlets

    with pytest.raises(traitlets.TraitError):
        view.token = 1
    with pytest.raises(traitlets.TraitError):
        view.layer = 3


def test_figure_and_files(tmp_path: Path) -> None:
    lens = image_lens()
    view = lens.show(token=" red", layer=0, title="when does red appear")
    fig = view.figure()
    assert fig._suptitle.get_text() == "when does red appear"
    grid, image = fig.axes[0], fig.axes[2]
    np.testing.assert_allclose(grid.images[0].get_array(), lens.prob(" red"))
    np.testing.assert_allclose(image.images[1].get_array(), [[1 / 12, 2 / 12]], atol=1e-6)  # layer 0's patches
    assert any(t.get_text() == "<b>bold</b>" or t.get_text() == "$x$" for t in grid.texts)  # text, not markup
    for suffix in ("png", "svg", "pdf", "html"):
        path = view.save(tmp_path / f"lens.{suffix}")
        assert path.stat().st_size > 1000
    svg = (tmp_path / "lens.svg").read_text()
    assert "red$&lt;b&gt;" in svg and "<b>bold" not in svg
    page = (tmp_path / "lens.html").read_text()
    assert "<b>bold</b>" not in page
    top1 = mmviz.export.lens_figure(lens, layer=-1)
    np.testing.assert_allclose(top1.axes[0].images[0].get_array(), lens.top_probs[0, :, :, 0])


def test_joins_a_dashboard_of_the_same_input(llava: Any) -> None:
    from tests.attribution.conftest import random_image

    torch = pytest.importorskip("torch")
    model, processor = llava
    inputs = processor(images=[random_image()], text="<image> what shape", return_tensors="pt")
    with torch.no_grad(), mmviz.capture(model, processor) as cap:
        model(**inputs)
    lens = mmviz.logit_lens(model, inputs, processor, tokens=["red"], top_k=3)
    board = mmviz.Dashboard(cap.attention, lens)
    assert [p.KIND for p in board.panes] == ["attention", "lens"]
    assert [pane["kind"] for pane in board.export_state()["_panes"]] == ["attention", "lens"]
    assert len(board.figure().subfigs) == 2
    other = processor(images=[random_image()], text="<image> what colour", return_tensors="pt")
    with pytest.raises(InputMismatchError):
        mmviz.Dashboard(cap.attention, mmviz.logit_lens(model, other, processor, top_k=2))
