"""Skip a hub notebook, with the reason, when the weights it needs are not on this machine."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _hub import find, message, required_by


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        path = Path(str(item.fspath))
        if path.suffix != ".ipynb" or path.parent != here:
            continue
        missing = [repo for repo in required_by(path) if find(repo) is None]
        if missing:
            item.add_marker(pytest.mark.skip(reason=message(missing[0])))
