"""The published scores on small arrays, by hand (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from mmviz.evaluation import metrics


@pytest.fixture
def mask() -> np.ndarray:
    m = np.zeros((4, 4), dtype=bool)
    m[1:3, 0:2] = True  # 4 of 16 cells
    return m


def test_a_map_equal_to_the_mask_scores_one_and_its_complement_zero(mask: np.ndarray) -> None:
    same = mask.astype(float)
    for fn in (metrics.pointing, metrics.relevance_mass, metrics.topk_intersection, metrics.iou):
        assert fn(same, mask) == 1.0
        assert fn(1.0 - same, mask) == 0.0


def test_scores_by_hand(mask: np.ndarray) -> None:
    values = np.zeros((4, 4))
    values[1, 0] = 3.0  # inside
    values[0, 3] = 5.0  # outside: the peak
    values[2, 1] = 2.0  # inside
    values[3, 3] = -4.0  # negative: no mass
    assert metrics.pointing(values, mask) == 0.0
    assert metrics.relevance_mass(values, mask) == pytest.approx(5 / 10)
    # top-4 values: 5 (out), 3 (in), 2 (in), then the first of the zeros in row-major order, (0, 0) (out)
    assert metrics.topk_intersection(values, mask) == pytest.approx(2 / 4)
    assert metrics.topk_intersection(values, mask, k=2) == pytest.approx(1 / 2)
    # threshold 0.5 · 5 = 2.5: hot = {(0, 3), (1, 0)}; intersection 1, union 5
    assert metrics.iou(values, mask) == pytest.approx(1 / 5)
    # a random set of 2 cells: E[I] = 2 · 4 / 16 = 0.5; 0.5 / (2 + 4 − 0.5)
    assert metrics.iou_baseline(values, mask) == pytest.approx(0.5 / 5.5)
    assert metrics.area_fraction(mask) == 0.25


def test_ties_and_empty_maps(mask: np.ndarray) -> None:
    flat = np.ones((4, 4))
    assert metrics.pointing(flat, mask) == 0.0  # first maximum, (0, 0), lies outside
    assert metrics.relevance_mass(np.zeros((4, 4)), mask) == 0.0
    assert metrics.iou(-np.ones((4, 4)), mask) == 0.0
    with pytest.raises(ValueError, match="empty"):
        metrics.pointing(flat, np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="same shape"):
        metrics.pointing(flat, np.ones((2, 2), bool))


def test_rank_correlation_is_spearman() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert metrics.rank_correlation(a, a * 10 + 3) == pytest.approx(1.0)
    assert metrics.rank_correlation(a, -a) == pytest.approx(-1.0)
    b = np.array([5.0, 6.0, 7.0, 8.0, 7.0])  # ranks 0, 1, 2.5, 4, 2.5
    ra, rb = np.arange(5.0), np.array([0, 1, 2.5, 4, 2.5])
    expected = np.corrcoef(ra, rb)[0, 1]
    assert metrics.rank_correlation(a, b) == pytest.approx(expected)
    assert np.isnan(metrics.rank_correlation(a, np.ones(5)))
    np.testing.assert_array_equal(metrics.ranks(np.array([3.0, 1.0, 3.0])), [1.5, 0.0, 1.5])


def test_curve_area_is_the_trapezoid_rule() -> None:
    x = np.array([0.0, 0.5, 1.0])
    assert metrics.curve_area(x, np.array([1.0, 1.0, 0.0])) == pytest.approx(0.5 + 0.25)
