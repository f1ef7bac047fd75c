"""Faithfulness reports: can a map be trusted? The scores and curves ``mmviz.evaluate`` measures.

A ``FaithfulnessReport`` holds the judged map (scores over the positions of a ``TokenTable``, and pixel
maps where the map has them) and one ``CheckResult`` per check that ran: a score, the baselines it is
compared with, a verdict where the check has one, and the curve behind the score (deletion/insertion: the
target against the fraction of units removed; model randomisation: the rank correlation against the
number of randomised layers). Numpy only: reports save, load and show without torch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmviz.data import io
from mmviz.data._shown import Shown
from mmviz.data.attribution import Attribution
from mmviz.data.tokens import TokenTable

__all__ = ["CHECK_NAMES", "CheckResult", "FaithfulnessReport"]

CHECK_NAMES = {
    "deletion": "deletion AUC / random order's (lower is better)",
    "insertion": "insertion AUC / random order's (higher is better)",
    "model_randomization": "rank correlation with the map of a randomised model (lower is better)",
    "label_randomization": "rank correlation with the map of another target (lower is better)",
    "pointing": "pointing game: the map's peak inside the mask",
    "pointing_objects": "pointing game against every object's mask (the peak on some object)",
    "mass": "relevance mass inside the mask",
    "topk": "top-k intersection (k = mask size)",
    "iou": "IoU of the map thresholded at half its maximum",
    "completeness": "|sum of scores − (f(x) − f(baseline))| / |f(x) − f(baseline)|",
}
"""What each check's score is (report tables print these)."""


@dataclass(eq=False)
class CheckResult:
    """One check's outcome.

    Attributes:
        check: the check's name (a key of ``CHECK_NAMES``).
        score: its score (see ``CHECK_NAMES``).
        baselines: what the score is compared with: ``"random"`` (a random map or order), ``"area"``
            (the mask's area fraction), ``"objects"`` (chance of the named object among all objects).
        passed: the verdict, ``None`` where the check has none.
        x: ``[points]`` the curve's abscissa (fraction removed; randomised layers), or empty.
        curve: ``[points]`` the judged map's curve, or empty.
        reference: ``[points]`` the reference curve (random orders' mean), or empty.
        labels: ``[points]`` names of the points (randomised layers), or empty.
        note: a plain sentence on what the result means (always set when the check fails).
    """

    check: str
    score: float
    baselines: dict[str, float] = field(default_factory=dict)
    passed: bool | None = None
    x: np.ndarray = field(default_factory=lambda: np.zeros(0))
    curve: np.ndarray = field(default_factory=lambda: np.zeros(0))
    reference: np.ndarray = field(default_factory=lambda: np.zeros(0))
    labels: tuple[str, ...] = ()
    note: str = ""

    def __post_init__(self) -> None:
        self.score = float(self.score)
        self.baselines = {str(k): float(v) for k, v in self.baselines.items()}
        self.x = np.asarray(self.x, dtype=np.float64).reshape(-1)
        self.curve = np.asarray(self.curve, dtype=np.float64).reshape(-1)
        self.reference = np.asarray(self.reference, dtype=np.float64).reshape(-1)
        self.labels = tuple(str(s) for s in self.labels)
        if self.curve.size and self.curve.shape != self.x.shape:
            raise ValueError(f"CheckResult {self.check}: curve {self.curve.shape} and x {self.x.shape} differ")
        if self.reference.size and self.reference.shape != self.x.shape:
            raise ValueError(f"CheckResult {self.check}: reference {self.reference.shape} and x {self.x.shape} differ")


@dataclass(eq=False)
class FaithfulnessReport(Shown):
    """Every check ``mmviz.evaluate`` ran on one map.

    Attributes:
        name: what was judged (method, target, layer/head choice).
        scores: ``[positions]`` float32 the judged map over ``tokens``.
        tokens: its positions.
        results: check name → ``CheckResult``, in the order run.
        skipped: check name → why it did not run (e.g. no model given, no mask).
        pixel_maps: ``[H, W]`` float32 map per image, where the map has pixels.
        info: JSON-able facts (model, baseline, steps, seeds).
    """

    name: str
    scores: np.ndarray
    tokens: TokenTable
    results: dict[str, CheckResult] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    pixel_maps: tuple[np.ndarray, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if self.scores.shape != (len(self.tokens),):
            raise ValueError(
                f"FaithfulnessReport: scores must have one value per position ({len(self.tokens)}), "
                f"got shape {self.scores.shape}"
            )
        self.pixel_maps = tuple(np.asarray(p, dtype=np.float32) for p in self.pixel_maps)
        for i, p in enumerate(self.pixel_maps):
            if p.ndim != 2:
                raise ValueError(f"FaithfulnessReport: pixel map {i} must be [height, width], got {p.shape}")

    # -- reading ---------------------------------------------------------------------------------
    def _result(self, check: str) -> CheckResult:
        if check in self.results:
            return self.results[check]
        if check in self.skipped:
            raise KeyError(f"check {check!r} did not run: {self.skipped[check]}")
        raise KeyError(f"no check {check!r} in this report; it holds {list(self.results)}")

    def __getitem__(self, check: str) -> float:
        """The score of one check (see ``CHECK_NAMES``)."""
        return self._result(check).score

    def __contains__(self, check: object) -> bool:
        return check in self.results

    @property
    def checks(self) -> list[str]:
        """Names of the checks that ran."""
        return list(self.results)

    def curve(self, check: str, reference: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The curve behind a score.

        Args:
            check: ``"deletion"``, ``"insertion"``, ``"model_randomization"``.
            reference: the reference curve (random orders' mean) instead of the map's.

        Returns:
            ``(x, values)``: ``[points]`` fractions of units removed (or revealed) and the target's value;
            for model randomisation, the number of randomised layers and the rank correlation.
        """
        result = self._result(check)
        values = result.reference if reference else result.curve
        if not values.size:
            raise KeyError(f"check {check!r} has no {'reference ' if reference else ''}curve")
        return result.x.copy(), values.copy()

    def baseline(self, check: str, kind: str | None = None) -> float:
        """The baseline a score is compared with.

        Args:
            check: a check that ran.
            kind: ``"random"``, ``"area"`` or ``"objects"`` (default: the check's first).
        """
        result = self._result(check)
        if not result.baselines:
            raise KeyError(f"check {check!r} has no baseline")
        if kind is None:
            return next(iter(result.baselines.values()))
        if kind not in result.baselines:
            raise KeyError(f"check {check!r} has baselines {list(result.baselines)}, not {kind!r}")
        return result.baselines[kind]

    def passed(self, check: str) -> bool:
        """Whether the map passed a check.

        Raises:
            KeyError: the check did not run or has no verdict (it has a score only).
        """
        result = self._result(check)
        if result.passed is None:
            raise KeyError(f"check {check!r} gives a score, not a verdict; compare rep[{check!r}] with rep.baseline")
        return result.passed

    @property
    def verdict(self) -> str:
        """``"passed"``, ``"failed"`` (some check failed) or ``"no verdict"`` (no check has one)."""
        verdicts = [r.passed for r in self.results.values() if r.passed is not None]
        if not verdicts:
            return "no verdict"
        return "passed" if all(verdicts) else "failed"

    def table(self) -> list[tuple[str, float, dict[str, float], bool | None, str]]:
        """``(check, score, baselines, passed, note)`` per check that ran."""
        return [(r.check, r.score, dict(r.baselines), r.passed, r.note) for r in self.results.values()]

    def summary(self) -> str:
        """A plain-text table of the scores, their baselines and verdicts, then the skipped checks."""
        lines = [f"Faithfulness of {self.name}: {self.verdict}"]
        for check, score, baselines, ok, note in self.table():
            base = ", ".join(f"{k} {_fmt(v)}" for k, v in baselines.items())
            mark = {True: "pass", False: "FAIL", None: "    "}[ok]
            lines.append(f"  {mark} {check:<20} {_fmt(score):>7}   ({base})" + (f"  {note}" if note else ""))
        for check, why in self.skipped.items():
            lines.append(f"  skip {check:<20} {why}")
        return "\n".join(lines)

    # -- showing ---------------------------------------------------------------------------------
    def map_attribution(self) -> Attribution:
        """The judged map as a one-row ``Attribution`` (what the view and the figure draw)."""
        n_images = len(self.tokens.images)
        return Attribution(
            scores=self.scores[None],
            tokens=self.tokens,
            method=str(self.info.get("method", "map")),
            targets=(self.name,),
            target=self.name,
            pixel_maps=tuple(p[None] for p in self.pixel_maps) if len(self.pixel_maps) == n_images else (),
        )

    def figure(self, **options: Any) -> Any:
        """A matplotlib figure of the map, its curves and its scores (``mmviz.export.faithfulness_figure``)."""
        from mmviz.export.faithfulness_figures import faithfulness_figure

        return faithfulness_figure(self, **options)

    def show(self, **options: Any) -> Any:
        """A ``FaithfulnessView``: the map beside its curves, scores and verdicts (keywords go to the view)."""
        try:
            from mmviz.widgets import FaithfulnessView
        except ImportError as exc:
            raise ImportError(
                "FaithfulnessReport.show() needs anywidget and ipywidgets: reinstall them (pip install anywidget "
                "ipywidgets); the report itself is plain numpy: see .summary(), .figure() and .results"
            ) from exc
        return FaithfulnessView(self, **options)

    def __repr__(self) -> str:
        return f"FaithfulnessReport({self.name!r}, {self.verdict}, checks={self.checks})"

    # -- files -----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the report to a ``.mmviz`` file (read it back with ``mmviz.load``)."""
        io.save(self, path, "faithfulness")

    def to_payload(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Metadata and arrays for ``mmviz.data.io.save``."""
        table_meta, arrays = self.tokens.to_payload("tokens")
        arrays["scores"] = self.scores
        for i, p in enumerate(self.pixel_maps):
            arrays[f"pixels{i}"] = p
        results = []
        for i, r in enumerate(self.results.values()):
            for part in ("x", "curve", "reference"):
                arrays[f"result{i}_{part}"] = getattr(r, part)
            results.append(
                {
                    "check": r.check,
                    "score": _json_float(r.score),
                    "baselines": {k: _json_float(v) for k, v in r.baselines.items()},
                    "passed": r.passed,
                    "labels": list(r.labels),
                    "note": r.note,
                }
            )
        meta = {
            "name": self.name,
            "tokens": table_meta,
            "pixel_maps": len(self.pixel_maps),
            "results": results,
            "skipped": dict(self.skipped),
            "info": self.info,
        }
        return meta, arrays

    @classmethod
    def from_payload(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> FaithfulnessReport:
        """Inverse of ``to_payload``."""
        results = {}
        for i, r in enumerate(meta["results"]):
            passed = r.get("passed")
            results[str(r["check"])] = CheckResult(
                check=str(r["check"]),
                score=_from_json_float(r["score"]),
                baselines={str(k): _from_json_float(v) for k, v in dict(r.get("baselines") or {}).items()},
                passed=None if passed is None else bool(passed),
                x=arrays[f"result{i}_x"],
                curve=arrays[f"result{i}_curve"],
                reference=arrays[f"result{i}_reference"],
                labels=tuple(r.get("labels") or ()),
                note=str(r.get("note", "")),
            )
        return cls(
            name=str(meta["name"]),
            scores=arrays["scores"],
            tokens=TokenTable.from_payload(meta["tokens"], arrays),
            results=results,
            skipped={str(k): str(v) for k, v in dict(meta.get("skipped") or {}).items()},
            pixel_maps=tuple(arrays[f"pixels{i}"] for i in range(int(meta["pixel_maps"]))),
            info=dict(meta.get("info") or {}),
        )


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.3g}"


def _json_float(value: float) -> float | str:
    """JSON has no NaN or infinity: they are stored as strings."""
    return value if math.isfinite(value) else str(value)


def _from_json_float(value: Any) -> float:
    return float(value)


io.register_type("faithfulness", FaithfulnessReport.from_payload)
