"""Can this map be trusted? Faithfulness checks for every map mmviz draws, in one call.

``mmviz.evaluate(map, model, inputs, masks=...)`` runs the standard tests on an attribution, an attention
choice, a cross-attention word map or any array over a token table, and returns a ``FaithfulnessReport``:

* ``"deletion"`` / ``"insertion"`` (``.perturbation``): the target as the map's top units are removed
  (revealed), against random orders;
* ``"model_randomization"`` / ``"label_randomization"`` (``.randomization``): Adebayo et al.'s sanity
  checks — the map drawn again on a randomised model or for another target must change;
* ``"pointing"``, ``"mass"``, ``"topk"``, ``"iou"`` (``.masks``): the map against ground-truth masks, each
  against its chance level;
* ``"completeness"``: integrated gradients' gap ``Σ scores − (f(x) − f(baseline))``.

The published definitions are in ``.metrics`` (numpy only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mmviz.data.faithfulness import CheckResult, FaithfulnessReport
from mmviz.evaluation.subject import Subject, attention_map, cross_attention_map, patching_map, subject

__all__ = [
    "ALL_CHECKS",
    "DEFAULT_CHECKS",
    "Subject",
    "attention_map",
    "cross_attention_map",
    "evaluate",
    "patching_map",
]

DEFAULT_CHECKS = ("deletion", "insertion", "model_randomization", "pointing", "mass", "iou")
"""The checks ``evaluate`` runs unless told (each skipped, with the reason, when it cannot run)."""

ALL_CHECKS = (
    "deletion",
    "insertion",
    "model_randomization",
    "label_randomization",
    "pointing",
    "mass",
    "topk",
    "iou",
    "completeness",
)
"""Every check ``evaluate`` knows."""

COMPLETENESS_TOLERANCE = 0.05
"""Largest relative completeness gap ``|Σ scores − (f(x) − f(b))| / |f(x) − f(b)|`` that passes."""


def evaluate(
    map: Any,
    model: Any = None,
    inputs: Any = None,
    *,
    checks: Sequence[str] = DEFAULT_CHECKS,
    masks: Any = None,
    objects: Any = None,
    steps: int = 20,
    seed: int = 0,
    processor: Any = None,
    tokens: Any = None,
    target: Any = None,
    baseline: Any = None,
    target_row: int = 0,
    other_target: Any = None,
    random_orders: int = 3,
    units: str | None = None,
    batch_size: int = 8,
    upsample: str = "bilinear",
    iou_threshold: float = 0.5,
    randomization_threshold: float = 0.5,
    attach: bool = True,
    progress: bool = True,
) -> FaithfulnessReport:
    """Runs faithfulness checks on one map.

    Example::

        attr = mmviz.attribute(clip, inputs, processor=processor, target="a red circle")
        rep = mmviz.evaluate(attr, clip, inputs, processor=processor, masks=circle_mask)
        rep["pointing"], rep.baseline("pointing"), rep.passed("model_randomization")
        rep.curve("deletion")          # (fraction removed, target)
        print(rep.summary()); rep.save("circle.mmviz")

    Args:
        map: what to judge: an ``Attribution`` (row ``target_row``); ``(AttentionTrace, {"layer": ...,
            "head": ..., "query": ...})`` or ``mmviz.evaluation.attention_map(...)``;
            ``(CrossAttentionTrace, word)``; ``(PatchingTrace, {"site": ..., "layer": ...})``; a ``Subject``;
            or a numpy array over the positions of ``tokens`` (``[positions]``) or over an image's pixels
            (``[H, W]``).
        model: the model the map explains (deletion, insertion and randomisation re-run it; the mask
            checks do not need it).
        inputs: the processor's output the map was computed on (one example).
        checks: names from ``ALL_CHECKS``. A check that cannot run (no model, no masks, nothing to
            recompute) is listed in ``report.skipped`` with the reason.
        masks: ground truth: an ``[H, W]`` boolean array in image pixels, a list of them (one per image,
            ``None`` for none), or a set of token positions.
        objects: masks of every object in the scene, in the same form, for the "some object" baselines.
        steps: steps of the deletion and insertion curves.
        seed: seed of random orders, tie-breaking and random weights.
        processor: the processor or tokenizer.
        tokens: the ``TokenTable`` a 1-D numpy map scores.
        target: what the curves read, and the attribution's target when it could not be recorded
            (default: the attribution's own target; for other maps the model's prediction).
        baseline: what a removed unit becomes in deletion and insertion (default: the attribution's baseline,
            else ``"zeros"``); see ``mmviz.attribution.explained`` (``"zeros"``/``"blank"``, ``"mean"``,
            ``"blur"``, a tensor). An attribution is recomputed with its own baseline; one it could not record
            (a tensor) is taken from here.
        target_row: the attribution's row judged.
        other_target: the target of ``"label_randomization"`` (default: a random other token or class
            id when the target is an id).
        random_orders: random orders averaged for the deletion/insertion reference.
        units: ``"image"`` or ``"text"``: deletion and insertion remove only units of that kind, and the
            randomisation checks' rank correlations and token masks compare only positions of that kind
            (default: every text token and image patch the map scores).
        batch_size: perturbed copies per forward pass.
        upsample: ``"bilinear"`` or ``"nearest"``: how patch scores reach a pixel mask's size.
        iou_threshold: the fraction of the map's maximum above which a pixel counts as "on" for IoU.
        randomization_threshold: the rank correlation at or above which a randomisation check fails.
        attach: for an ``Attribution``, record the verdict in ``map.info["faithfulness"]`` (saved with it;
            ``attr.show()`` labels the attribution with it).
        progress: ``tqdm.auto`` progress bars.

    Returns:
        A ``FaithfulnessReport``.

    Raises:
        ValueError: an unknown check, or a map, mask or input that does not fit.
    """
    from mmviz.evaluation.masks import MASK_CHECKS, mask_checks

    checks = tuple(checks)
    unknown = [c for c in checks if c not in ALL_CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; use names from {ALL_CHECKS}")
    subj = subject(map, processor=processor, tokens=tokens, target_row=target_row, target=target, baseline=baseline)
    if target is not None and "target" not in subj.perturb:
        subj.perturb["target"] = target
    if baseline is not None:
        subj.perturb["baseline"] = baseline
    results: dict[str, CheckResult] = {}
    skipped: dict[str, str] = {}
    no_model = "needs the model and its inputs (model=, inputs=)"

    curves = tuple(c for c in ("deletion", "insertion") if c in checks)
    if curves:
        if model is None or inputs is None:
            skipped.update(dict.fromkeys(curves, no_model))
        else:
            from mmviz.evaluation.perturbation import perturbation_curves

            results.update(
                perturbation_curves(
                    subj,
                    model,
                    inputs,
                    checks=curves,
                    processor=processor,
                    steps=steps,
                    random_orders=random_orders,
                    seed=seed,
                    batch_size=batch_size,
                    target_row=target_row,
                    units=units,
                    progress=progress,
                )
            )
    if "model_randomization" in checks:
        if model is None or inputs is None:
            skipped["model_randomization"] = no_model
        elif subj.recompute is None:
            skipped["model_randomization"] = "this map cannot be recomputed from a model (a plain array)"
        else:
            from mmviz.evaluation.randomization import model_randomization

            results["model_randomization"] = model_randomization(
                subj, model, inputs, seed=seed, threshold=randomization_threshold, units=units, progress=progress
            )
    if "label_randomization" in checks:
        other = other_target if other_target is not None else _other_id(subj, model, seed)
        if model is None or inputs is None:
            skipped["label_randomization"] = no_model
        elif not subj.retargetable:
            skipped["label_randomization"] = "this map has no target to swap (attention, cross-attention, arrays)"
        elif other is None:
            skipped["label_randomization"] = "give other_target= (the target is not a token or class id)"
        else:
            from mmviz.evaluation.randomization import label_randomization

            results["label_randomization"] = label_randomization(
                subj, model, inputs, other, threshold=randomization_threshold, units=units
            )
    wanted_masks = [c for c in MASK_CHECKS if c in checks]
    if wanted_masks:
        if masks is None:
            skipped.update(dict.fromkeys(wanted_masks, "needs masks= (an [H, W] boolean mask or token positions)"))
        else:
            results.update(
                mask_checks(
                    subj,
                    masks,
                    wanted_masks,
                    objects=objects,
                    upsample=upsample,
                    iou_threshold=iou_threshold,
                    units=units,
                )
            )
    if "completeness" in checks:
        result, why = _completeness(subj, target_row)
        if result is None:
            skipped["completeness"] = why
        else:
            results["completeness"] = result
    info: dict[str, Any] = {"steps": steps, "seed": seed, "random_orders": random_orders, "upsample": upsample}
    if model is not None:
        info["model"] = type(model).__name__
    base = subj.perturb.get("baseline")
    if isinstance(base, str):
        info["baseline"] = base
    report = FaithfulnessReport(
        name=subj.name,
        scores=subj.scores,
        tokens=subj.tokens,
        results=results,
        skipped=skipped,
        pixel_maps=subj.pixel_maps,
        info=info,
    )
    if attach and subj.attribution is not None:
        failed = [r.check for r in results.values() if r.passed is False]
        passed = [r.check for r in results.values() if r.passed]
        subj.attribution.info["faithfulness"] = {
            "verdict": report.verdict,
            "failed": failed,
            "passed": passed,
            "target_row": target_row,
        }
    return report


def _other_id(subj: Subject, model: Any, seed: int) -> int | None:
    """A random token or class id other than the attribution's id target (``None`` when it is not an id)."""
    target = subj.perturb.get("target")
    if model is None or not isinstance(target, (int, np.integer)) or isinstance(target, bool):
        return None
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None)
    n = getattr(config, "num_labels", None) if not hasattr(model, "get_output_embeddings") else None
    n = n or getattr(config, "vocab_size", None) or getattr(text, "vocab_size", None)
    if not n or n < 2:
        return None
    rng = np.random.default_rng(seed)
    other = int(rng.integers(0, n - 1))
    return other + 1 if other >= int(target) else other


def _completeness(subj: Subject, row: int) -> tuple[CheckResult | None, str]:
    attr = subj.attribution
    if attr is None or attr.delta is None:
        return None, "only integrated gradients records its completeness gap (the map is not an IG attribution)"
    f_x = attr.info.get("f_input")
    f_b = attr.info.get("f_baseline")
    if not isinstance(f_x, list) or not isinstance(f_b, list):
        return None, "the attribution does not record f(input) and f(baseline)"
    change = abs(float(f_x[row]) - float(f_b[row]))
    gap = abs(float(attr.delta[row]))
    score = gap / change if change > 0 else float("inf") if gap > 0 else 0.0
    passed = score <= COMPLETENESS_TOLERANCE
    note = "" if passed else f"the scores do not add up to f(x) − f(baseline) ({gap:.3g} of {change:.3g}): add steps"
    return CheckResult(
        check="completeness", score=score, baselines={"tolerance": COMPLETENESS_TOLERANCE}, passed=passed, note=note
    ), ""
