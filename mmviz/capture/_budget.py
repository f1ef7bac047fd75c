"""The memory budget of a dense capture: refused before the model runs when the probabilities would not fit.

Dense probabilities cost ``batch · layers · heads · N² · 2`` bytes (float16); at 8192 tokens a 12-layer,
12-head model needs 18 GiB. A capture estimates that from the input's length before the forward runs
(and before ``generate``, from the prompt plus ``max_new_tokens``), and charges every store it allocates
while it runs, so a size the estimate could not see (a vision tower's patches) is refused before its
buffer is allocated, not after.
"""

from __future__ import annotations

from typing import Any

from mmviz._memory import memory_budget
from mmviz.errors import BudgetError

MAX_BYTES_ENV = "MMVIZ_MAX_CAPTURE_BYTES"
"""Environment variable that sets the default budget of dense captures (bytes)."""


def default_max_bytes() -> int:
    """``$MMVIZ_MAX_CAPTURE_BYTES`` when set, else half the machine's memory (at most half of ``ulimit -v``)."""
    return memory_budget(MAX_BYTES_ENV)


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


class Budget:
    """Bytes of dense probabilities one capture may hold, and what it holds so far.

    Args:
        max_bytes: the budget (``None``: ``default_max_bytes()``).
    """

    def __init__(self, max_bytes: int | None) -> None:
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
            raise ValueError(f"max_bytes must be a positive number of bytes, not {max_bytes!r}")
        self.max_bytes = default_max_bytes() if max_bytes is None else max_bytes
        self.held = 0

    def check(self, nbytes: int, what: str, layers: int, heads: int, length: int) -> None:
        """Raises ``BudgetError`` if ``nbytes`` more would pass the budget (nothing is charged).

        Args:
            nbytes: bytes about to be stored.
            what: where, for the message (``"before the forward"``, ``"recording 'vision_tower'"``).
            layers: layers those bytes hold.
            heads: heads per layer.
            length: the sequence length (keys).
        """
        total = self.held + nbytes
        if total <= self.max_bytes:
            return
        fit = self.max_bytes // max(nbytes // max(layers * heads, 1), 1)
        raise BudgetError(
            f"{what}: the attention probabilities of {layers} layer(s) × {heads} head(s) over {length} tokens "
            f"bring this capture to {_size(total)} (store='dense'), past its budget of {_size(self.max_bytes)}. "
            f'Use store="qk" (keeps queries and keys, recomputes any rows on demand), record fewer layers=[...] '
            f"and heads=[...] (about {fit} layer × head pairs fit), or raise the budget with "
            f"mmviz.capture(..., max_bytes=...) or ${MAX_BYTES_ENV}."
        )

    def charge(self, nbytes: int, what: str, layers: int, heads: int, length: int) -> None:
        """Counts ``nbytes`` as held, after ``check``."""
        self.check(nbytes, what, layers, heads, length)
        self.held += nbytes


def sequence_length(kwargs: dict[str, Any], args: tuple[Any, ...]) -> tuple[int, int] | None:
    """``(batch, length)`` of a forward call's token input, or ``None`` when it has none (pixels only)."""
    for name in ("input_ids", "inputs_embeds"):
        value = kwargs.get(name)
        if value is not None and hasattr(value, "shape") and len(value.shape) >= 2:
            return int(value.shape[0]), int(value.shape[1])
    if args and hasattr(args[0], "shape") and len(args[0].shape) == 2 and not args[0].is_floating_point():
        return int(args[0].shape[0]), int(args[0].shape[1])
    return None
