from __future__ import annotations

import matplotlib
import pytest

from mmviz.data import AttentionTrace
from tests.fixtures.synthetic import make_trace

matplotlib.use("Agg")


@pytest.fixture
def trace() -> AttentionTrace:
    return make_trace(n_layers=2, n_heads=3, words=["a", "photograph", "costs", "$x^2$", "now"], evil=True)
