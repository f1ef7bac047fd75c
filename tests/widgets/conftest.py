from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))

from synthetic import make_trace

from mmviz.data import AttentionTrace


@pytest.fixture
def trace() -> AttentionTrace:
    return make_trace()
