"""AttributionView: tokens coloured by score, image overlays, the ``[generated, source]`` matrix.

The state holds everything (attributions are small: ``[targets, positions]`` scores as float32 and
pixel maps as uint8 quantised per target), so switching attribution, target or opacity and hovering
never wait for the kernel. Several attributions of one input (different methods or targets) share a view
and switch with a selector. Signed methods use a diverging blue–red scale centred at 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import traitlets

from mmviz import _codec
from mmviz.data.attribution import Attribution
from mmviz.errors import BudgetError
from mmviz.widgets._inputs import check_same_input
from mmviz.widgets._state import table_state
from mmviz.widgets._view import DEFAULT_BUDGET, View

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mmviz.data.tokens import TokenTable

__all__ = ["AttributionView", "attribution_state"]


def _label(attr: Attribution) -> str:
    label = f"{attr.method}: {attr.target}" if attr.target else attr.method
    if attr.delta is not None:
        label += f" (|delta| ≤ {float(np.abs(attr.delta).max()):.2g})"
    verdict = attr.info.get("faithfulness")  # recorded by mmviz.evaluate
    if isinstance(verdict, dict) and verdict.get("verdict"):
        failed = verdict.get("failed") or []
        label += f" · faithfulness: {verdict['verdict']}" + (f" ({', '.join(failed)})" if failed else "")
    return label


def attribution_state(attributions: Sequence[Attribution]) -> dict[str, Any]:
    """The data part of a view's state (``js/src/views/attribution.ts: AttributionState``).

    Args:
        attributions: attributions of one input (their token tables must have the same positions).

    Returns:
        ``_tokens`` (text, kind, generated, images with grid and patch positions) and ``_entries`` (one per
        attribution: label, method, signed, target labels, float32 ``scores [targets, positions]``, uint8
        ``pixels`` ``[targets, H, W]`` per image quantised per target).
    """
    if not attributions:
        raise ValueError("AttributionView needs at least one attribution")
    check_same_input([(f"attribution {i} ({a.method})", a.tokens) for i, a in enumerate(attributions)])
    first = shared_positions(attributions)
    entries = []
    for a in attributions:
        entries.append(
            {
                "label": _label(a),
                "method": a.method,
                "signed": bool(a.signed),
                "targets": list(a.targets),
                "scores": _codec.encode_tensor(a.scores, "float32"),
                "pixels": [_codec.encode_uint8(p, axes=1) for p in a.pixel_maps],
            }
        )
    return {"_tokens": table_state(first), "_entries": entries}


class AttributionView(View):
    """Interactive view of one or more ``Attribution``s (``attr.show()``).

    Text tokens coloured by score (diverging, centred at 0, for signed methods); each image with the
    pixel map (or patch scores) over it; for several targets (an answer explained token by token) the
    ``[generated, source]`` matrix, whose rows select the target. Hovering a token, patch or matrix cell
    highlights that position everywhere. Attributions of one prompt share a view even when their targets
    differ (``" blue"`` and ``" blue sky"``): the selector switches between them.

    Args:
        attributions: an attribution or a list of attributions of the same input (switched by a selector).
        entry: attribution shown first.
        target: score row shown first.
        opacity: opacity of the image overlay (0–1).
        cmap: colormap of unsigned methods (``mmviz.widgets.COLORMAPS``).
        title: heading shown above the view.
        budget: bytes the state may hold.

    Raises:
        BudgetError: the scores, maps and images exceed ``budget``.
        InputMismatchError: the attributions explain different inputs (the message names the two token
            texts that differ).
        TypeError: an unknown keyword argument (the message lists the valid ones).
    """

    KIND = "attribution"
    TRIM = "export fewer attributions per view or raise budget="

    entry = traitlets.Int(0).tag(sync=True)
    """Attribution shown (index into the list given)."""
    target = traitlets.Int(0).tag(sync=True)
    """Score row shown (target, or generated token)."""
    opacity = traitlets.Float(0.6).tag(sync=True)
    """Opacity of the map over the images."""

    _tokens: traitlets.Dict[str, Any] = traitlets.Dict().tag(sync=True)
    _entries: traitlets.List[dict[str, Any]] = traitlets.List().tag(sync=True)

    def __init__(
        self,
        attributions: Attribution | Sequence[Attribution],
        *,
        entry: int = 0,
        target: int = 0,
        opacity: float = 0.6,
        cmap: str = "viridis",
        title: str | None = None,
        budget: int = DEFAULT_BUDGET,
    ) -> None:
        items = [attributions] if isinstance(attributions, Attribution) else list(attributions)
        for a in items:
            if not isinstance(a, Attribution):
                raise TypeError(f"AttributionView needs Attribution objects, not {type(a).__name__}")
        self.attributions = items
        data = attribution_state(items)
        need = _codec.payload_nbytes(data)
        if need > budget:
            raise BudgetError(
                f"AttributionView: the state would hold {need / 1e6:.1f} MB, over the budget of "
                f"{budget / 1e6:.1f} MB; show fewer attributions per view or raise budget="
            )
        if not 0 <= entry < len(items):
            raise IndexError(f"entry {entry} is out of range: the view holds {len(items)} attribution(s)")
        if not 0 <= target < items[entry].scores.shape[0]:
            raise IndexError(f"target {target} is out of range: {items[entry].scores.shape[0]} row(s)")
        if not 0.0 <= float(opacity) <= 1.0:
            raise ValueError(f"opacity must lie in [0, 1], not {opacity!r}")
        super().__init__(
            title=title, budget=budget, entry=entry, target=target, opacity=float(opacity), cmap=cmap, **data
        )

    def tokens(self) -> TokenTable:
        """The token table of the attributed input (the positions every attribution of the view shares)."""
        return shared_positions(self.attributions)

    @traitlets.validate("entry")
    def _valid_entry(self, proposal: dict[str, Any]) -> int:
        value = int(proposal["value"])
        if self._entries and not 0 <= value < len(self._entries):
            raise traitlets.TraitError(f"entry {value} is out of range: the view holds {len(self._entries)}")
        return value

    @traitlets.observe("entry")
    def _on_entry(self, change: dict[str, Any]) -> None:
        if self._entries and self.target >= len(self._entries[change["new"]]["targets"]):
            self.target = 0

    def figure(self, **options: Any) -> Figure:
        """A matplotlib ``Figure`` of the shown attribution and target, with the view's opacity and colormap.

        Args:
            **options: overrides (``target=``, ``cmap=``, ``opacity=``, ``title=``, ``figsize=``, ``into=``;
                see ``mmviz.export.attribution_figures.attribution_figure``).
        """
        from mmviz.export.attribution_figures import attribution_view_figure

        return attribution_view_figure(self, **options)


def shared_positions(attributions: Sequence[Attribution]) -> TokenTable:
    """The positions attributions of one prompt share: the shortest table (targets appended after it)."""
    return min((a.tokens for a in attributions), key=len)
