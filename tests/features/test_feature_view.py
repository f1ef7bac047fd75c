"""FeatureView state, options, figure and Dashboard membership; FeatureTrace reading on a hand-made trace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import mmviz
from mmviz.data import Attribution
from mmviz.errors import BudgetError
from tests.features.synthetic import dense_activations, synthetic_features


def test_trace_reads_back_the_dense_activations() -> None:
    ft, dense = synthetic_features(), dense_activations()
    np.testing.assert_array_equal(ft.activations(3), dense[:, 3])  # named: exact
    np.testing.assert_array_equal(ft.activations(7), dense[:, 7])  # always inside the top 3 here
    assert ft.top(17) == [(3, 1.5), (5, pytest.approx(0.1))]
    assert [p for p, _ in ft.top_positions(3, n=3)] == [1, 2, 5]
    amap = ft.image_map(3)
    assert amap.shape == (4, 4) and (amap[:, :2] == 2).all() and (amap[:, 2:] == 0).all()
    assert ft.crop(1, margin=0).shape == (8, 8, 3) and ft.crop(17) is None
    assert [c is None for _, _, c in ft.gallery(3, n=1)] == [False]
    np.testing.assert_allclose(ft.relative_error, 0.25)
    assert ft.is_exact(3) and not ft.is_exact(7)


def test_state_holds_the_offered_features() -> None:
    view = synthetic_features().show(labels={3: "<b>left</b>"})
    assert view.feature == 3 and view._view == "features"
    offered = [f["id"] for f in view._features]
    assert offered[0] == 3 and set(offered) == {3, 5, 7}  # the named one first, then the active ones
    assert view._features[0]["exact"] is True and view._labels == {"3": "<b>left</b>"}
    assert view._columns["shape"] == [3, 23] and view._top_features["shape"] == [23, 3]
    cols = np.frombuffer(view._columns["data"], "<f4").reshape(3, 23)
    np.testing.assert_array_equal(cols[offered.index(7)], dense_activations()[:, 7])
    assert view.tokens() is view.trace.tokens


def test_options_are_checked() -> None:
    ft = synthetic_features()
    with pytest.raises(IndexError, match="features 0 … 9"):
        ft.show(feature=12)
    with pytest.raises(TypeError, match="valid options"):
        ft.show(colour="red")
    with pytest.raises(BudgetError, match="offer fewer features"):
        ft.show(budget=100)
    view = ft.show(feature=9)  # a feature not offered by default is added in front
    assert view.feature == 9 and view._features[0]["id"] == 9
    with pytest.raises(Exception, match="not offered"):
        view.feature = 4


def test_figure_and_files(tmp_path: Path) -> None:
    view = synthetic_features().show(feature=7, labels={7: "$x$ right"})
    fig = view.figure()
    assert "feature 7 ($x$ right)" in fig._suptitle.get_text()
    assert "outside each position's top 3 read 0" in fig._supxlabel.get_text()
    assert view.save(tmp_path / "f.png").stat().st_size > 1000
    html = view.save(tmp_path / "f.html").read_text(encoding="utf-8")
    assert "<b>left</b>" not in html


def test_joins_a_dashboard_with_an_attribution_of_the_same_input() -> None:
    ft = synthetic_features()
    attr = Attribution(np.linspace(0, 1, 23, dtype=np.float32)[None], ft.tokens, "saliency", ("x",), "x")
    board = mmviz.Dashboard(ft, attr, title="features and attribution")
    assert [type(p).__name__ for p in board.panes] == ["FeatureView", "AttributionView"]


def test_a_damaged_features_file_is_refused(tmp_path: Path) -> None:
    from mmviz.data import io
    from mmviz.errors import TraceFileError

    class Damaged:
        def to_payload(self) -> tuple[dict[str, object], dict[str, np.ndarray]]:
            meta, arrays = synthetic_features().to_payload()
            arrays["top_activations"] = arrays["top_activations"][:, :2]  # no longer [positions, k]
            return meta, arrays

    io.save(Damaged(), tmp_path / "bad.mmviz", "features")
    with pytest.raises(TraceFileError, match="damaged"):
        mmviz.load(tmp_path / "bad.mmviz")
