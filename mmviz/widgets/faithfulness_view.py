"""FaithfulnessView: a judged map beside its deletion/insertion and randomisation curves and its scores.

The map pane is the ``AttributionView``'s (tokens coloured by score, image overlays, linked by position and
patch); beside it, the curves of the checks that have one (the map's order against random orders; the rank
correlation after each randomised block) and a table of scores, baselines and verdicts. The state holds
everything (a report is small), so nothing waits for the kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import traitlets

from mmviz import _codec
from mmviz.data.faithfulness import CHECK_NAMES, FaithfulnessReport
from mmviz.widgets._view import DEFAULT_BUDGET
from mmviz.widgets.attribution_view import AttributionView

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["FaithfulnessView", "checks_state"]


def _finite(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None


def checks_state(report: FaithfulnessReport) -> list[dict[str, Any]]:
    """The checks' part of the state (``js/src/views/faithfulness.ts: CheckEntry``).

    One entry per check that ran (score, baselines, verdict, note, what the score means, and the curve: ``x``,
    ``curve``, ``reference`` as float32 tensors, empty when the check has none), then one ``skipped`` entry per
    check that did not run. ``nan`` scores and baselines become ``None`` (JSON has no NaN).
    """
    out: list[dict[str, Any]] = []
    for r in report.results.values():
        out.append(
            {
                "check": r.check,
                "meaning": CHECK_NAMES.get(r.check, ""),
                "score": _finite(r.score),
                "baselines": {k: _finite(v) for k, v in r.baselines.items()},
                "passed": r.passed,
                "note": r.note,
                "labels": list(r.labels),
                "x": _codec.encode_tensor(r.x, "float32"),
                "curve": _codec.encode_tensor(r.curve, "float32"),
                "reference": _codec.encode_tensor(r.reference, "float32"),
            }
        )
    for check, why in report.skipped.items():
        out.append({"check": check, "meaning": CHECK_NAMES.get(check, ""), "skipped": why})
    return out


class FaithfulnessView(AttributionView):
    """Interactive view of a ``FaithfulnessReport`` (``rep.show()``): the map, its curves, its scores.

    Args:
        report: from ``mmviz.evaluate``.
        opacity: opacity of the map over the images (0–1).
        cmap: colormap of the map (``mmviz.widgets.COLORMAPS``).
        title: heading (default: what was judged and the verdict).
        budget: bytes the state may hold.

    Raises:
        BudgetError: the map and images exceed ``budget``.
        TypeError: an unknown keyword argument (the message lists the valid ones).
    """

    KIND = "faithfulness"
    TRIM = "raise budget="

    _checks: traitlets.List[dict[str, Any]] = traitlets.List().tag(sync=True)
    _verdict = traitlets.Unicode("").tag(sync=True)

    def __init__(
        self,
        report: FaithfulnessReport,
        *,
        opacity: float = 0.6,
        cmap: str = "viridis",
        title: str | None = None,
        budget: int = DEFAULT_BUDGET,
    ) -> None:
        if not isinstance(report, FaithfulnessReport):
            raise TypeError(
                f"FaithfulnessView shows a FaithfulnessReport (mmviz.evaluate), not {type(report).__name__}"
            )
        self.report = report
        heading = title if title is not None else f"Can I trust this map? {report.name}: {report.verdict}"
        super().__init__(report.map_attribution(), opacity=opacity, cmap=cmap, title=heading, budget=budget)
        self._checks = checks_state(report)
        self._verdict = report.verdict

    def figure(self, **options: Any) -> Figure:
        """A matplotlib ``Figure`` of the map, its curves and its scores (``mmviz.export.faithfulness_figure``).

        Args:
            **options: ``cmap=``, ``opacity=``, ``figsize=``, ``into=`` (override the view's).
        """
        from mmviz.export.faithfulness_figures import faithfulness_view_figure

        return faithfulness_view_figure(self, **options)
