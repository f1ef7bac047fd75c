"""Whether views (or attributions) that are linked by position show the same input.

Panes link on token positions and on image patches, so a Dashboard of an attention trace of one sentence
and an attribution of another would light up the wrong tokens. Inputs agree when their text positions read
the same (padding and generated tokens aside; one may continue the other, as a longer target does) and
their images are the same pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmviz.data.tokens import TokenTable
from mmviz.errors import InputMismatchError

__all__ = ["check_same_input"]


def _text(table: TokenTable) -> list[tuple[int, str]]:
    """The input's text positions: padding and what ``generate`` produced are not part of the input."""
    keep = (table.kind != "image") & (table.kind != "pad") & ~table.generated.astype(bool)
    return [(int(p), str(table.text[p])) for p in np.flatnonzero(keep)]


def _difference(a: TokenTable, b: TokenTable) -> str | None:
    """How two inputs differ, or ``None`` when one is the other (or continues it)."""
    ta, tb = _text(a), _text(b)
    if ta and tb:
        for (pa, xa), (pb, xb) in zip(ta, tb):
            if xa != xb:
                return f"token {xa!r} at position {pa} vs {xb!r} at position {pb}"
    if a.images and b.images:
        if len(a.images) != len(b.images):
            return f"{len(a.images)} vs {len(b.images)} images"
        for i, (ia, ib) in enumerate(zip(a.images, b.images)):
            if ia.shape != ib.shape or not np.array_equal(ia, ib):
                return f"image {i} differs ({ia.shape[1]}×{ia.shape[0]} vs {ib.shape[1]}×{ib.shape[0]} pixels)"
    return None


def check_same_input(items: Sequence[tuple[str, TokenTable]]) -> None:
    """Refuses items that show different inputs.

    Args:
        items: ``(name, table)`` pairs, the name used in the message (``"pane 2 (attribution)"``).

    Raises:
        InputMismatchError: two items differ; the message names them and the two token texts that differ.
    """
    if not items:
        return
    first_name, first = items[0]
    for name, table in items[1:]:
        what = _difference(first, table)
        if what is not None:
            raise InputMismatchError(
                f"{first_name} and {name} show different inputs ({what}); panes link by token position and image "
                "patch, so they must come from the same prompt and images. Capture and attribute the same inputs, "
                "or show them in separate views."
            )
