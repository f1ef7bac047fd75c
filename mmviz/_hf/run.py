"""Running a model for a method: frozen and in eval mode for the duration, with a progress bar over batches.

``prepared`` is what every method that runs a model many times (attribution, patching) wraps its work in:
it restores the train/eval mode and ``requires_grad`` flags it changed, also when the work raises or is
interrupted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["prepared", "progress_bar"]


@contextlib.contextmanager
def prepared(model: torch.nn.Module) -> Iterator[None]:
    """Evaluation mode and frozen parameters for the duration; both restored afterwards, also on errors.

    Freezing the parameters keeps autograd from saving what only weight gradients need, which is most of
    the activation memory of a backward pass.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def progress_bar(items: Iterable[Any], total: int, enabled: bool, desc: str) -> Iterator[Any]:
    """``tqdm.auto`` progress over ``items`` when enabled and tqdm is installed."""
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            yield from tqdm(items, total=total, desc=desc, leave=False)
            return
    yield from items
