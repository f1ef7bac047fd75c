"""FaithfulnessReport: reading, verdicts, files (numpy only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import mmviz
from mmviz.data import CheckResult, FaithfulnessReport, TokenTable


def _report() -> FaithfulnessReport:
    tokens = TokenTable.build(["a", "red", "square"])
    return FaithfulnessReport(
        name="saliency of ' red'",
        scores=np.array([0.1, 0.7, 0.2]),
        tokens=tokens,
        results={
            "deletion": CheckResult(
                "deletion",
                0.6,
                {"random": 1.0},
                True,
                x=[0, 0.5, 1],
                curve=[2.0, 1.0, 0.0],
                reference=[2.0, 1.5, 0.0],
                note="fine",
            ),
            "model_randomization": CheckResult(
                "model_randomization",
                0.9,
                {"threshold": 0.5},
                False,
                x=[1, 2],
                curve=[0.95, 0.9],
                labels=("h.1", "h.0"),
                note="the map hardly changes",
            ),
            "pointing": CheckResult("pointing", 1.0, {"area": 0.33, "objects": 0.5}, True),
            "completeness": CheckResult("completeness", float("nan"), {"tolerance": 0.05}, None),
        },
        skipped={"iou": "needs masks="},
        info={"steps": 2},
    )


def test_reading_a_report() -> None:
    rep = _report()
    assert rep["deletion"] == 0.6
    x, _ = rep.curve("deletion")
    np.testing.assert_array_equal(x, [0, 0.5, 1])
    np.testing.assert_array_equal(rep.curve("deletion", reference=True)[1], [2.0, 1.5, 0.0])
    assert rep.baseline("pointing") == 0.33 and rep.baseline("pointing", "objects") == 0.5
    assert rep.passed("deletion") and not rep.passed("model_randomization")
    assert rep.verdict == "failed"
    assert "FAIL model_randomization" in rep.summary() and "skip iou" in rep.summary()
    with pytest.raises(KeyError, match="did not run: needs masks="):
        rep["iou"]
    with pytest.raises(KeyError, match="not a verdict"):
        rep.passed("completeness")
    with pytest.raises(KeyError, match="no curve"):
        rep.curve("pointing")


def test_round_trip(tmp_path: Path) -> None:
    rep = _report()
    rep.save(tmp_path / "r.mmviz")
    back = mmviz.load(tmp_path / "r.mmviz")
    assert isinstance(back, FaithfulnessReport)
    assert back.summary() == rep.summary()
    assert back.results["model_randomization"].labels == ("h.1", "h.0")
    assert np.isnan(back["completeness"])
    np.testing.assert_array_equal(back.scores, rep.scores)
    assert back.skipped == rep.skipped and back.info == rep.info


def test_bad_reports_are_refused() -> None:
    with pytest.raises(ValueError, match="one value per position"):
        FaithfulnessReport("x", np.zeros(2), TokenTable.build(["a", "b", "c"]))
    with pytest.raises(ValueError, match="differ"):
        CheckResult("deletion", 1.0, x=[0, 1], curve=[1.0])


def test_the_figure_draws_the_map_curves_and_scores() -> None:
    pytest.importorskip("matplotlib")
    fig = _report().figure()
    cells = [c.get_text().get_text() for ax in fig.axes for tab in ax.tables for c in tab.get_celld().values()]
    assert {"deletion", "0.6", "FAIL", "skipped"} <= set(cells)  # the score table
    lines = [ax for ax in fig.axes if ax.get_ylabel() == "rank correlation"]
    assert len(lines) == 1 and list(lines[0].lines[0].get_ydata()) == [0.95, 0.9]
    labels = [t.get_text() for t in lines[0].get_xticklabels()]
    assert labels == ["h.1", "h.0"]


def test_a_patching_layer_is_judged_over_its_positions() -> None:
    from mmviz.data import PatchingTrace

    tokens = TokenTable.build(["a", "red", "square", "is"])
    effects = np.array([[[0.1, 0.9, 0.3]]], dtype=np.float32)  # one site, one layer, three columns
    trace = PatchingTrace(
        effects=effects,
        patched=effects.astype(np.float64),
        sites=("residual",),
        layers=np.array([0]),
        groups=(np.array([0]), np.array([1]), np.array([2])),  # "is" is never restored
        tokens=tokens,
        clean_metric=1.0,
        corrupt_metric=0.0,
        metric="log p(' red')",
    )
    rep = mmviz.evaluate((trace, {"site": "residual", "layer": 0}), masks={1}, checks=("pointing", "mass"))
    assert rep["pointing"] == 1.0 and rep["mass"] == pytest.approx(0.9 / 1.3)
    assert np.isnan(rep.scores[3]) and "residual" in rep.name
    rep = mmviz.evaluate((trace, {"site": "residual", "layer": 0}), masks={3}, checks=("pointing",))
    assert rep["pointing"] == 0.0  # an unrestored position is never the peak
