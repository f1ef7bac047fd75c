"""Deletion and insertion curves (Petsiuk, Das & Saenko, 2018, "RISE"), in batches.

Units (text tokens and image patches; see ``mmviz.attribution.explained``) are removed — or, for
insertion, revealed on a fully removed input — in the order of the map, largest score first, ties in a
seeded random order. At ``steps + 1`` fractions ``0, 1/steps, ..., 1`` the model is run on the perturbed
input and the target read. The same is done for ``random_orders`` random orders.

Scores are areas above the lowest value any of the check's curves reaches (``y_min``, the map's and the
random orders'): ``AUC = ∫ (y − y_min) df``. The reported score is the map's AUC over the mean AUC of the
random orders: deletion below 1 means the target falls sooner when the map's top units go than when random
units go (lower is better); insertion above 1 means it rises sooner when they come back (higher is better).
Measuring above ``y_min`` makes both areas non-negative for targets of any sign (log-probabilities, logits,
similarities), also where a half-removed input scores below the fully removed one (a scene of scattered
patches is less like "a red circle" than a blank scene); the sign of ``score − 1`` is the sign of the
difference of the areas whatever the offset. Where the target is not higher on the input than with every unit
removed (a tiny CLIP can find a blank scene more like "a red circle" than the scene itself), removing evidence
cannot lower it and both checks report ``nan`` with no verdict, saying why.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmviz._hf.run import progress_bar
from mmviz.data import TokenTable
from mmviz.data.faithfulness import CheckResult
from mmviz.evaluation.metrics import curve_area
from mmviz.evaluation.subject import MissingArgument, Subject

__all__ = ["align", "order_units", "perturbation_curves", "step_counts"]


def step_counts(n_units: int, steps: int) -> np.ndarray:
    """``[steps + 1]`` number of units removed at each step: ``round(k · n_units / steps)``."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}")
    return np.rint(np.arange(steps + 1) * n_units / steps).astype(np.int64)


def order_units(units: np.ndarray, scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Units by decreasing score, ties broken in a random order drawn from ``rng``."""
    values = np.nan_to_num(scores[units], nan=-np.inf)
    shuffle = rng.permutation(len(units))
    return units[np.lexsort((shuffle, -values))]


def align(subject: Subject, tokens: TokenTable) -> np.ndarray:
    """The map's scores over the positions of ``tokens`` (``nan`` where it has none).

    The same table is read as it is; otherwise image tokens are matched on ``(image, row, col)`` and text
    tokens on their position among the text tokens (a vision tower's map against a two-tower input, a
    language model's map against the inputs' table).
    """
    mine = subject.tokens
    if len(mine) == len(tokens) and np.array_equal(mine.kind, tokens.kind):
        return subject.scores.astype(np.float64)
    out = np.full(len(tokens), np.nan)
    patches = {
        (int(i), int(r), int(c)): p
        for p, (i, r, c) in enumerate(zip(mine.image_index, mine.patch_row, mine.patch_col))
        if mine.kind[p] == "image"
    }
    for p in np.flatnonzero(tokens.kind == "image"):
        key = (int(tokens.image_index[p]), int(tokens.patch_row[p]), int(tokens.patch_col[p]))
        if key in patches:
            out[p] = subject.scores[patches[key]]
    text_mine, text_theirs = np.flatnonzero(mine.kind == "text"), np.flatnonzero(tokens.kind == "text")
    if len(text_mine) == len(text_theirs):
        out[text_theirs] = subject.scores[text_mine]
    return out


def _keep_masks(
    orders: list[np.ndarray], counts: np.ndarray, n_positions: int, units: np.ndarray, insert: bool
) -> np.ndarray:
    """``[orders · (steps + 1), positions]`` keep masks for deletion (or insertion)."""
    masks = np.ones((len(orders) * len(counts), n_positions), dtype=bool)
    for o, order in enumerate(orders):
        for s, n in enumerate(counts):
            row = masks[o * len(counts) + s]
            if insert:
                row[units] = False
                row[order[:n]] = True
            else:
                row[order[:n]] = False
    return masks


def perturbation_curves(
    subject: Subject,
    model: Any,
    inputs: Any,
    *,
    checks: tuple[str, ...],
    processor: Any = None,
    steps: int = 20,
    random_orders: int = 3,
    seed: int = 0,
    batch_size: int = 8,
    target_row: int = 0,
    units: str | None = None,
    progress: bool = True,
) -> dict[str, CheckResult]:
    """Deletion and/or insertion curves of a map against random orders.

    Args:
        subject: the map.
        model: the model the map explains.
        inputs: its inputs (one example).
        checks: ``"deletion"`` and/or ``"insertion"``.
        processor: the processor or tokenizer.
        steps: steps of each curve (``steps + 1`` points).
        random_orders: random orders averaged for the reference.
        seed: seed of the random orders and of tie-breaking.
        batch_size: perturbed copies per forward pass.
        target_row: the target row read (per-token targets have several).
        units: ``"text"`` or ``"image"``: remove only units of that kind (default: every unit the map scores).
        progress: ``tqdm.auto`` progress bar.

    Returns:
        check name → ``CheckResult`` (``x``: fraction removed or revealed; ``curve``/``reference``: the target).
    """
    from mmviz.attribution import explained

    perturb = dict(subject.perturb)
    for key in ("target", "baseline"):
        if isinstance(perturb.get(key), MissingArgument):
            raise ValueError(perturb[key].message)
    kinds = None if units is None else (units,)
    if units not in (None, "text", "image"):
        raise ValueError(f"units must be 'text', 'image' or None, not {units!r}")
    if random_orders < 0:
        raise ValueError(f"random_orders must be at least 0, not {random_orders}")
    rng = np.random.default_rng(seed)
    results: dict[str, CheckResult] = {}
    with explained(model, inputs, processor=processor, **perturb) as f:
        scores = align(subject, f.tokens)
        removable = f.units[np.isfinite(scores[f.units])]
        if kinds is not None:
            removable = removable[np.isin(f.tokens.kind[removable], kinds)]
        if removable.size == 0:
            raise ValueError(
                "the map scores no token or image patch of these inputs that can be removed"
                + (f" (of kind {', '.join(kinds)})" if kinds is not None else "")
                + ": give the inputs the map was computed on"
            )
        if not 0 <= target_row < len(f.labels):
            raise ValueError(f"target_row {target_row} is out of range: the target has {len(f.labels)} row(s)")
        counts = step_counts(len(removable), steps)
        orders = [order_units(removable, scores, rng)]
        orders += [rng.permutation(removable) for _ in range(random_orders)]
        masks = np.concatenate(
            [_keep_masks(orders, counts, len(f.tokens), removable, c == "insertion") for c in checks]
        )
        # every order shares its end points (nothing / everything removed): each distinct input runs once
        distinct, where = np.unique(masks, axis=0, return_inverse=True)
        chunks = [distinct[i : i + batch_size] for i in range(0, len(distinct), batch_size)]
        values = np.concatenate(
            [
                f(chunk, batch_size)[:, target_row]
                for chunk in progress_bar(chunks, len(chunks), progress, " / ".join(checks))
            ]
        )[where.reshape(-1)]
    x = counts / len(removable)
    per_check = values.reshape(len(checks), len(orders), len(counts))
    for c, check in enumerate(checks):
        curves = per_check[c]
        floor = curves.min()
        areas = np.array([curve_area(x, y - floor) for y in curves])
        if random_orders == 0:
            results[check] = CheckResult(check, float("nan"), x=x, curve=curves[0], note="no random orders to compare")
            continue
        results[check] = _result(check, x, curves, areas, float(areas[1:].mean()))
    return results


def _no_verdict(check: str, x: np.ndarray, curves: np.ndarray, note: str) -> CheckResult:
    return CheckResult(
        check=check,
        score=float("nan"),
        baselines={"random": 1.0},
        x=x,
        curve=curves[0],
        reference=curves[1:].mean(0),
        note=f"no verdict: {note}",
    )


def _result(check: str, x: np.ndarray, curves: np.ndarray, areas: np.ndarray, reference: float) -> CheckResult:
    spread = float(areas[1:].std()) / abs(reference) if reference else float("nan")
    full, empty = (curves[0, 0], curves[0, -1]) if check == "deletion" else (curves[0, -1], curves[0, 0])
    if not full > empty:
        return _no_verdict(
            check,
            x,
            curves,
            f"the target is higher with every unit removed ({empty:.3g}) than on the input ({full:.3g}), so "
            "removing evidence does not lower it; explain a target the input raises (e.g. a contrast of two "
            "answers or captions)",
        )
    if not reference > 0:
        return _no_verdict(check, x, curves, "the target does not change as units are removed or revealed")
    score = float(areas[0] / reference)
    passed = score < 1.0 if check == "deletion" else score > 1.0
    note = f"random orders' AUC spread ±{spread:.2f}"
    if not passed:
        worse = "does not drop faster" if check == "deletion" else "does not rise faster"
        note = f"the target {worse} in the map's order than in a random order; " + note
    return CheckResult(
        check=check,
        score=score,
        baselines={"random": 1.0},
        passed=passed,
        x=x,
        curve=curves[0],
        reference=curves[1:].mean(0),
        note=note,
    )
