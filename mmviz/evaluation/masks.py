"""A map against ground-truth masks: pointing game, relevance mass, top-k intersection and IoU.

Masks are ``[H, W]`` booleans in an image's pixels (one per image; ``None`` for an image without one), or
a set of token positions. A pixel mask is compared with the map's pixel map where it has one at that size
(integrated gradients over pixels, a cross-attention heat map), else with its patch scores upsampled to the
mask's size (``upsample="bilinear"``, or ``"nearest"``). A position mask is compared over the positions
that hold text or image tokens (specials and padding excluded). Scores are averaged over the images that
have masks.

``objects=`` (masks of every object in the scene, same form) adds the "some object" view: the pointing
game against all objects (``"pointing_objects"``), and for ``"pointing"`` the chance that a peak landing
on some object lands on the named one (``baseline("pointing", "objects")``). A map that can only land on
objects (attention to salient patches on a plain background) should be compared with that, not with the
area.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mmviz.data.faithfulness import CheckResult
from mmviz.evaluation import metrics
from mmviz.evaluation.subject import Subject

__all__ = ["MASK_CHECKS", "mask_checks", "normalize_masks"]

MASK_CHECKS = ("pointing", "mass", "topk", "iou")
"""Checks that need ``masks=``."""

Pair = tuple[np.ndarray, np.ndarray]


def normalize_masks(masks: Any, subject: Subject) -> list[tuple[int | None, np.ndarray]]:
    """``(image index or None for positions, mask)`` pairs from what the user gave.

    Raises:
        ValueError: a mask of the wrong kind or shape, or positions out of range.
    """
    if masks is None:
        return []
    if isinstance(masks, (set, frozenset)) or (
        isinstance(masks, (list, tuple)) and masks and all(isinstance(m, (int, np.integer)) for m in masks)
    ):
        n = len(subject.tokens)
        positions = np.asarray(sorted(int(m) for m in masks), dtype=np.int64)
        if positions.size == 0 or positions.min() < -n or positions.max() >= n:
            raise ValueError(f"mask positions must lie in 0..{n - 1}; got {sorted(int(m) for m in masks)}")
        mask = np.zeros(n, dtype=bool)
        mask[positions] = True
        return [(None, mask)]
    if isinstance(masks, np.ndarray) and masks.ndim == 1:
        if masks.shape != (len(subject.tokens),):
            raise ValueError(f"a 1-D mask must have one entry per position ({len(subject.tokens)}), got {masks.shape}")
        return [(None, masks.astype(bool))]
    per_image: Sequence[Any] = [masks] if isinstance(masks, np.ndarray) and masks.ndim == 2 else list(masks)
    out: list[tuple[int | None, np.ndarray]] = []
    for i, m in enumerate(per_image):
        if m is None:
            continue
        m = np.asarray(m)
        if m.ndim != 2:
            raise ValueError(f"mask {i} must be an [H, W] boolean array (pixels), got shape {m.shape}")
        out.append((i, m.astype(bool)))
    if not out:
        raise ValueError("masks= holds no mask")
    return out


def _pairs(
    subject: Subject, masks: list[tuple[int | None, np.ndarray]], upsample: str, units: str | None = None
) -> list[Pair]:
    pairs = []
    for image, mask in masks:
        if image is None:
            kinds = subject.tokens.kind
            compared = (kinds == units if units else (kinds == "text") | (kinds == "image")) | mask
            pairs.append((subject.scores[compared], mask[compared]))
        else:
            pairs.append((subject.image_map(image, mask.shape, upsample), mask))
    return pairs


def mask_checks(
    subject: Subject,
    masks: Any,
    checks: Sequence[str],
    *,
    objects: Any = None,
    upsample: str = "bilinear",
    iou_threshold: float = 0.5,
    units: str | None = None,
) -> dict[str, CheckResult]:
    """Scores of a map against masks, each with its baselines.

    ``units``: token masks compare only positions of that kind.

    Returns:
        check name → ``CheckResult`` (passed when the score beats its area baseline).
    """
    given = normalize_masks(masks, subject)
    pairs = _pairs(subject, given, upsample, units)
    object_pairs = _pairs(subject, normalize_masks(objects, subject), upsample, units) if objects is not None else []
    if object_pairs and len(object_pairs) != len(pairs):
        raise ValueError(f"objects= gives {len(object_pairs)} mask(s) but masks= gives {len(pairs)}: give one each")
    area = float(np.mean([metrics.area_fraction(m) for _, m in pairs]))
    score_fns = {
        "pointing": metrics.pointing,
        "mass": metrics.relevance_mass,
        "topk": metrics.topk_intersection,
        "iou": lambda v, m: metrics.iou(v, m, iou_threshold),
    }
    results: dict[str, CheckResult] = {}
    for check in checks:
        score = float(np.mean([score_fns[check](v, m) for v, m in pairs]))
        baselines = {"area": area}
        if check == "iou":
            baselines = {"random": float(np.mean([metrics.iou_baseline(v, m, iou_threshold) for v, m in pairs]))}
        if check == "pointing" and object_pairs:
            baselines["objects"] = float(
                np.mean([(m & (o | m)).sum() / (o | m).sum() for (_, m), (_, o) in zip(pairs, object_pairs)])
            )
        bar = max(baselines.values())
        passed = score > bar
        note = "" if passed else f"no better than chance ({bar:.3g})"
        results[check] = CheckResult(check=check, score=score, baselines=baselines, passed=passed, note=note)
    if object_pairs and "pointing" in checks:
        union = [(v, o | m) for (v, m), (_, o) in zip(pairs, object_pairs)]
        score = float(np.mean([metrics.pointing(v, u) for v, u in union]))
        base = float(np.mean([metrics.area_fraction(u) for _, u in union]))
        results["pointing_objects"] = CheckResult(
            check="pointing_objects",
            score=score,
            baselines={"area": base},
            passed=score > base,
            note="" if score > base else f"no better than chance ({base:.3g})",
        )
    return results
