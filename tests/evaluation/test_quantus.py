"""mmviz's mask scores equal Quantus's on the same arrays (skipped where Quantus is not installed).

Quantus is not part of mmviz's stack; install it beside it (``pip install quantus``, or into a separate
directory on ``PYTHONPATH``) to run this file. The maps are non-negative and have no ties, where both
libraries' definitions coincide (Quantus counts a tie for the maximum as a hit, and sums raw relevance).
"""

from __future__ import annotations

import numpy as np
import pytest

from mmviz.evaluation import metrics

quantus = pytest.importorskip("quantus")


@pytest.fixture
def arrays() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    maps = rng.random((12, 1, 16, 16))  # [batch, channel, H, W], no ties
    masks = np.zeros((12, 1, 16, 16), dtype=bool)
    for i in range(12):
        r, c = rng.integers(0, 12, 2)
        masks[i, 0, r : r + 4, c : c + 5] = True
    maps[::3] += 2.0 * masks[::3]  # some maps point at their mask
    return maps, masks


def test_pointing_mass_and_topk_equal_quantus(arrays: tuple[np.ndarray, np.ndarray]) -> None:
    maps, masks = arrays
    options = {"normalise": False, "abs": False, "disable_warnings": True}
    pointing = quantus.PointingGame(**options).evaluate_batch(a_batch=maps, s_batch=masks)
    mass = quantus.RelevanceMassAccuracy(**options).evaluate_batch(a_batch=maps, s_batch=masks)
    topk = quantus.TopKIntersection(k=20, **options).evaluate_batch(a_batch=maps, s_batch=masks)
    for i in range(len(maps)):
        v, m = maps[i, 0], masks[i, 0]
        assert metrics.pointing(v, m) == float(pointing[i])
        assert metrics.relevance_mass(v, m) == pytest.approx(float(mass[i]))
        assert metrics.topk_intersection(v, m, k=20) == pytest.approx(float(topk[i]))
