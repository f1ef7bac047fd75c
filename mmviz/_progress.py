"""A ``tqdm.auto`` progress bar when tqdm is installed and one is wanted (shared by the model-running methods)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["progress_bar"]


def progress_bar(items: Iterable[Any], total: int, enabled: bool, desc: str) -> Iterator[Any]:
    """Yields ``items``, with a progress bar when ``enabled`` and tqdm is importable."""
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            yield from tqdm(items, total=total, desc=desc, leave=False)
            return
    yield from items
