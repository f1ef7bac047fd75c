"""FaithfulnessView: the report's state, figure, files, and its place in a Dashboard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("anywidget")

import mmviz
from mmviz.data import CheckResult, FaithfulnessReport, TokenTable
from mmviz.widgets import FaithfulnessView


def image_report() -> FaithfulnessReport:
    """A 2×2-patch image after two words, judged by a deletion curve, randomisation and the pointing game."""
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    image[:4, :4] = 200
    tokens = TokenTable.build(
        ["<s>", "red", "<img>", "<img>", "<img>", "<img>"],
        kind=["special", "text", "image", "image", "image", "image"],
        image_index=[-1, -1, 0, 0, 0, 0],
        patch_row=[-1, -1, 0, 0, 1, 1],
        patch_col=[-1, -1, 0, 1, 0, 1],
        images=[image],
        grids=[(2, 2)],
    )
    return FaithfulnessReport(
        name="relevance of 'a red square'",
        scores=np.array([0.0, 0.2, 1.0, 0.1, 0.1, 0.0]),
        tokens=tokens,
        results={
            "deletion": CheckResult("deletion", 0.5, {"random": 1.0}, True, [0, 0.5, 1], [2, 0.5, 0], [2, 1.5, 0]),
            "model_randomization": CheckResult(
                "model_randomization",
                0.8,
                {"threshold": 0.5},
                False,
                [1, 2],
                [0.9, 0.8],
                labels=("b.1", "b.0"),
                note="the map hardly changes",
            ),
            "pointing": CheckResult("pointing", 1.0, {"area": 0.25, "objects": float("nan")}, True),
        },
        skipped={"iou": "needs masks="},
    )


def test_state_holds_the_map_the_curves_and_the_verdicts() -> None:
    rep = image_report()
    view = rep.show()
    assert isinstance(view, FaithfulnessView) and view._view == "faithfulness"
    assert view._verdict == "failed" and "failed" in view._title
    checks = {c["check"]: c for c in view._checks}
    assert checks["deletion"]["passed"] is True and checks["deletion"]["x"]["shape"] == [3]
    assert checks["model_randomization"]["labels"] == ["b.1", "b.0"]
    assert checks["pointing"]["baselines"] == {"area": 0.25, "objects": None}  # JSON has no NaN
    assert checks["iou"]["skipped"] == "needs masks="
    assert view.tokens() is rep.tokens
    assert len(view._entries) == 1 and view._entries[0]["targets"] == [rep.name]
    with pytest.raises(TypeError, match="valid options"):
        FaithfulnessView(rep, layer=3)
    with pytest.raises(TypeError, match="FaithfulnessReport"):
        FaithfulnessView(rep.map_attribution())  # type: ignore[arg-type]


def test_figure_html_and_dashboard(tmp_path: Path) -> None:
    rep = image_report()
    view = rep.show(cmap="magma", opacity=0.3)
    fig = view.figure()
    assert any(ax.get_ylabel() == "rank correlation" for ax in fig.axes)
    path = view.save(tmp_path / "rep.html")
    assert "faithfulness" in path.read_text()
    dash = mmviz.Dashboard(rep, rep.map_attribution())
    assert [type(p).__name__ for p in dash.panes] == ["FaithfulnessView", "AttributionView"]


def test_evaluate_labels_the_attribution_with_its_verdict() -> None:
    rep = image_report()
    attr = rep.map_attribution()
    again = mmviz.evaluate(attr, masks={2}, checks=("pointing", "mass"))
    assert attr.info["faithfulness"] == {
        "verdict": "passed",
        "failed": [],
        "passed": ["pointing", "mass"],
        "target_row": 0,
    }
    assert again.verdict == "passed"
    assert attr.show()._entries[0]["label"].endswith("· faithfulness: passed")
    mmviz.evaluate(attr, masks={5}, checks=("pointing",))
    assert attr.show()._entries[0]["label"].endswith("· faithfulness: failed (pointing)")
    untouched = rep.map_attribution()
    mmviz.evaluate(untouched, masks={2}, checks=("pointing",), attach=False)
    assert "faithfulness" not in untouched.info
