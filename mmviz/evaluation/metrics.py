"""The published scores, on plain arrays (numpy only): mask scores, curve areas, rank correlation.

Every function takes a map and a mask of the same shape (pixels ``[H, W]`` or positions ``[n]``); a map
is read as evidence *for* the target, so signed maps count their positive part (a map's peak is its
largest value, relevance mass sums the positive scores).

* ``pointing``: Zhang et al. (2018), "Top-down neural attention by excitation backprop": 1 when the map's
  maximum lies inside the mask (ties: the first maximum in row-major order), else 0. Baseline: the mask's
  area fraction (a uniformly random peak).
* ``relevance_mass``: Arras, Osman & Samek (2022), "CLEVR-XAI": positive relevance inside the mask over
  all positive relevance. Baseline: the area fraction (a uniform map).
* ``topk_intersection``: Theiner, Müller-Budack & Ewerth (2022) / Arras et al.'s relevance rank accuracy:
  the fraction of the map's ``k`` largest values that lie inside the mask, ``k`` = the mask's size.
  Baseline: the area fraction.
* ``iou``: the map thresholded at ``threshold`` × its maximum, intersection over union with the mask.
  Baseline: the expected IoU of as many randomly placed cells.
* ``curve_area``: trapezoidal area under a curve over ``[0, 1]``.
* ``rank_correlation``: Spearman's ρ (ties get their average rank), as in Adebayo et al. (2018).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "area_fraction",
    "curve_area",
    "iou",
    "iou_baseline",
    "pointing",
    "rank_correlation",
    "ranks",
    "relevance_mass",
    "topk_intersection",
]


def _pair(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(values, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if v.shape != m.shape:
        raise ValueError(f"map {v.shape} and mask {m.shape} must have the same shape")
    if not m.any():
        raise ValueError("the mask is empty: it marks no pixel or position")
    return np.nan_to_num(v.reshape(-1), nan=-np.inf), m.reshape(-1)


def area_fraction(mask: np.ndarray) -> float:
    """The fraction of cells inside the mask (the chance level of pointing, mass and top-k)."""
    m = np.asarray(mask, dtype=bool)
    return float(m.mean())


def pointing(values: np.ndarray, mask: np.ndarray) -> float:
    """1.0 when the map's maximum lies inside the mask, else 0.0."""
    v, m = _pair(values, mask)
    return float(m[int(np.argmax(v))])


def relevance_mass(values: np.ndarray, mask: np.ndarray) -> float:
    """Positive relevance inside the mask over all positive relevance (0 when there is none)."""
    v, m = _pair(values, mask)
    positive = np.where(np.isfinite(v), np.maximum(v, 0.0), 0.0)
    total = positive.sum()
    return float(positive[m].sum() / total) if total > 0 else 0.0


def topk_intersection(values: np.ndarray, mask: np.ndarray, k: int | None = None) -> float:
    """Fraction of the ``k`` largest values (default: as many as the mask holds) inside the mask."""
    v, m = _pair(values, mask)
    k = int(m.sum()) if k is None else int(k)
    if not 1 <= k <= v.size:
        raise ValueError(f"k must be between 1 and {v.size}, not {k}")
    top = np.argsort(-v, kind="stable")[:k]
    return float(m[top].mean())


def iou(values: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> float:
    """IoU of ``{values ≥ threshold · max}`` with the mask (0 when the map has no positive value)."""
    v, m = _pair(values, mask)
    peak = v.max()
    if not peak > 0:
        return 0.0
    hot = v >= threshold * peak
    return float((hot & m).sum() / (hot | m).sum())


def iou_baseline(values: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> float:
    """Expected IoU of a random set of cells as large as the thresholded map with the mask."""
    v, m = _pair(values, mask)
    peak = v.max()
    n, size_m = v.size, int(m.sum())
    size_t = int((v >= threshold * peak).sum()) if peak > 0 else 0
    if size_t == 0:
        return 0.0
    inter = size_t * size_m / n
    return float(inter / (size_t + size_m - inter))


def curve_area(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoidal area under ``y(x)``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n−1 with ties given their average rank."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(v, kind="stable")
    sorted_v = v[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_v)) + 1]
    ends = np.r_[starts[1:], v.size]
    out = np.empty(v.size, dtype=np.float64)
    for a, b in zip(starts, ends):
        out[order[a:b]] = (a + b - 1) / 2
    return out


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps (``nan`` when either is constant)."""
    ra, rb = ranks(a), ranks(b)
    if ra.shape != rb.shape:
        raise ValueError(f"maps of {ra.size} and {rb.size} values cannot be compared")
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")
