from __future__ import annotations

import pytest

from mmviz.data import AttentionTrace
from tests.fixtures.synthetic import make_trace


@pytest.fixture
def trace() -> AttentionTrace:
    return make_trace()
