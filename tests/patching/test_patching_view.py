"""PatchingView: its state, options, figure and files, and its place in a Dashboard."""

from __future__ import annotations

import numpy as np
import pytest

import mmviz
from mmviz import _codec
from mmviz.data import Attribution
from mmviz.errors import InputMismatchError
from mmviz.widgets import Dashboard, PatchingView
from tests.patching.test_patching_data import table, trace


def test_the_state_holds_every_layer_spread_over_positions():
    res = trace()
    view = res.show(site="mlp", layer=2, opacity=0.5)
    assert isinstance(view, PatchingView)
    assert (view.site, view.layer, view.opacity) == (1, 1, 0.5)
    assert view._sites == ["residual", "mlp"] and view._layers == [0, 2]
    effects = _codec.decode_tensor(view._effects)
    assert effects.shape == (2, 2, 6)
    for s in range(2):
        for li, layer in enumerate((0, 2)):
            np.testing.assert_array_equal(effects[s, li], res.position_effects(s, layer))
    assert view._tokens["text"] == table().tokens
    assert "clean -1, corrupted -4" in view._summary and "log p(' red')" in view._summary
    assert view.tokens() is res.tokens
    assert "application/vnd.jupyter.widget-view+json" in res._repr_mimebundle_()[0]


def test_bad_options_are_refused():
    res = trace()
    with pytest.raises(TypeError, match="valid options"):
        PatchingView(res, colour="red")
    with pytest.raises(KeyError, match="site 'attention' was not patched"):
        res.show(site="attention")
    with pytest.raises(KeyError, match="layer 1 was not patched"):
        res.show(layer=1)
    with pytest.raises(ValueError, match="opacity"):
        res.show(opacity=2)
    with pytest.raises(TypeError, match="PatchingTrace"):
        PatchingView(table())
    with pytest.raises(mmviz.BudgetError, match="patch fewer layers"):
        res.show(budget=100)


def test_figure_and_files(tmp_path):
    res = trace()
    view = res.show(layer=-1)
    fig = view.figure()
    titles = [ax.get_title() for ax in fig.axes]
    assert "image 0 · layer 2" in titles
    heat = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(np.asarray(heat)[1, 1:3], res.position_effects(0, 2)[1:3])
    for name in ("p.png", "p.svg", "p.html"):
        assert view.save(tmp_path / name).stat().st_size > 0
    page = (tmp_path / "p.html").read_text()
    assert '"_view": "patching"' in page or "patching" in page


def test_a_patching_pane_joins_a_dashboard_of_the_same_input():
    res = trace()
    scores = np.linspace(0, 1, len(res.tokens), dtype=np.float32)[None]
    attr = Attribution(scores, res.tokens, "saliency", ("log p",), "answer")
    board = Dashboard(res, attr)
    assert [type(p).__name__ for p in board.panes] == ["PatchingView", "AttributionView"]
    other = mmviz.TokenTable.build(["<bos>", "a", "b", "c", "d", " blue"])
    with pytest.raises(InputMismatchError):
        Dashboard(res, Attribution(scores, other, "saliency", ("log p",), "answer"))
