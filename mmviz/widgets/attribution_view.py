"""AttributionView: tokens coloured by score, image overlays, the ``[generated, source]`` matrix.

The state holds everything (attributions are small: ``[targets, positions]`` scores as float32 and
pixel maps as uint8 quantised per target), so switching attribution, target or opacity and hovering
never wait for the kernel. Several attributions of one input (different methods or targets) share a view
and switch with a selector. Signed methods use a diverging blue–red scale centred at 0.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import traitlets

from mmviz import _codec
from mmviz._static import STATIC_DIR
from mmviz.data.attribution import Attribution
from mmviz.data.tokens import TokenTable
from mmviz.errors import BudgetError
from mmviz.widgets._view import check_options, embedded_state, save_view
from mmviz.widgets.attention_view import COLORMAPS

__all__ = ["AttributionView", "attribution_state"]

DEFAULT_BUDGET = 16_000_000
"""Bytes of scores, pixel maps and images the state (and an exported page) may hold."""

_OPTIONS = ("entry", "target", "opacity", "cmap", "title", "budget")
_DURABLE = ("entry", "target", "opacity", "cmap")


def _bundle(name: str) -> Any:
    path = STATIC_DIR / name
    return path if path.is_file() else "export default { render() {} };\n"


def _table_state(table: TokenTable) -> dict[str, Any]:
    images = []
    for i, image in enumerate(table.images):
        grid = table.image_positions(i)
        images.append(
            {
                "image": _codec.encode_tensor(image, "uint8"),
                "grid": [int(grid.shape[0]), int(grid.shape[1])],
                "positions": _codec.encode_tensor(grid.reshape(-1), "int32"),
            }
        )
    return {
        "text": [str(t) for t in table.text.tolist()],
        "kind": [str(k) for k in table.kind.tolist()],
        "generated": [bool(g) for g in table.generated.tolist()],
        "images": images,
    }


def _label(attr: Attribution) -> str:
    label = f"{attr.method}: {attr.target}" if attr.target else attr.method
    if attr.delta is not None:
        label += f" (|delta| ≤ {float(np.abs(attr.delta).max()):.2g})"
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
    first = attributions[0].tokens
    for a in attributions[1:]:
        what: str | None = None
        if len(a.tokens) != len(first):
            what = f"{len(first)} vs {len(a.tokens)} positions"
        else:
            at = next((i for i, (x, y) in enumerate(zip(first.text, a.tokens.text)) if x != y), None)
            what = None if at is None else f"position {at}: {str(first.text[at])!r} vs {str(a.tokens.text[at])!r}"
        if what is not None:
            raise ValueError(
                f"AttributionView shows attributions of one input: their token tables differ ({what}); show "
                "them in separate views (or, for two captions of one image, attribute the contrast: target=(a, b))"
            )
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
    return {"_tokens": _table_state(first), "_entries": entries}


class AttributionView(anywidget.AnyWidget):
    """Interactive view of one or more ``Attribution``s (``attr.show()``).

    Text tokens coloured by score (diverging, centred at 0, for signed methods); each image with the
    pixel map (or patch scores) over it; for several targets (an answer explained token by token) the
    ``[generated, source]`` matrix, whose rows select the target. Hovering a token, patch or matrix cell
    highlights that position everywhere.

    Args:
        attributions: an attribution or a list of attributions of the same input (switched by a selector).
        **options: ``entry`` (attribution shown first), ``target`` (score row), ``opacity`` (0–1, of the
            image overlay), ``cmap`` (``mmviz.widgets.COLORMAPS``, for unsigned methods), ``title``,
            ``budget`` (bytes the state may hold).

    Raises:
        BudgetError: the scores, maps and images exceed ``budget``.
        TypeError: an unknown keyword argument.
    """

    _esm = _bundle("widget.js")
    _css = _bundle("widget.css")

    entry = traitlets.Int(0).tag(sync=True)
    """Attribution shown (index into the list given)."""
    target = traitlets.Int(0).tag(sync=True)
    """Score row shown (target, or generated token)."""
    opacity = traitlets.Float(0.6).tag(sync=True)
    """Opacity of the map over the images."""
    cmap = traitlets.Enum(COLORMAPS, default_value="viridis").tag(sync=True)
    """Colormap of unsigned methods (signed ones use a diverging blue–red scale)."""

    _view = traitlets.Unicode("attribution").tag(sync=True)
    _title = traitlets.Unicode("").tag(sync=True)
    _tokens: traitlets.Dict[str, Any] = traitlets.Dict().tag(sync=True)
    _entries: traitlets.List[dict[str, Any]] = traitlets.List().tag(sync=True)
    _notes: traitlets.List[str] = traitlets.List().tag(sync=True)
    _standalone = traitlets.Bool(False).tag(sync=True)

    def __init__(self, attributions: Attribution | Sequence[Attribution], **options: Any) -> None:
        check_options("AttributionView", options, _OPTIONS)
        items = [attributions] if isinstance(attributions, Attribution) else list(attributions)
        for a in items:
            if not isinstance(a, Attribution):
                raise TypeError(f"AttributionView needs Attribution objects, not {type(a).__name__}")
        self.attributions = items
        self.budget = int(options.get("budget", DEFAULT_BUDGET))
        data = attribution_state(items)
        need = _codec.payload_nbytes(data)
        if need > self.budget:
            raise BudgetError(
                f"AttributionView: the state would hold {need / 1e6:.1f} MB, over the budget of "
                f"{self.budget / 1e6:.1f} MB; show fewer attributions per view or raise budget="
            )
        entry = int(options.get("entry", 0))
        if not 0 <= entry < len(items):
            raise IndexError(f"entry {entry} is out of range: the view holds {len(items)} attribution(s)")
        target = int(options.get("target", 0))
        if not 0 <= target < items[entry].scores.shape[0]:
            raise IndexError(f"target {target} is out of range: {items[entry].scores.shape[0]} row(s)")
        super().__init__(
            entry=entry,
            target=target,
            opacity=float(options.get("opacity", 0.6)),
            cmap=options.get("cmap", "viridis"),
            _title=str(options.get("title") or ""),
            **data,
        )

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

    # -- export --------------------------------------------------------------------------------------
    def export_state(self, budget: int = DEFAULT_BUDGET) -> dict[str, Any]:
        """The state an exported page embeds (all of it).

        Raises:
            BudgetError: the state exceeds ``budget``.
        """
        names = [*_DURABLE, "_view", "_title", "_tokens", "_entries", "_notes"]
        return embedded_state(
            self, "AttributionView", names, budget, "export fewer attributions per view or raise budget="
        )

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        title: str | None = None,
        notes: str | None = None,
        budget: int | None = None,
        dpi: float | None = None,
    ) -> Path:
        """Writes the view to a file; the extension picks what is written.

        ``.html``/``.htm``: one self-contained, interactive page (see ``mmviz.save_html``).
        ``.png``, ``.svg``, ``.pdf``: a matplotlib figure of the shown attribution and target, with the
        view's opacity and colormap.

        Args:
            path: file to write.
            title: page heading (HTML) or figure title.
            notes: text under the page heading (HTML only).
            budget: bytes the page may embed (HTML only).
            dpi: resolution of a PNG (default 200).

        Raises:
            ValueError: another extension (the message lists the ones it writes).
        """
        options = {"title": title} if title else {}
        return save_view(self, path, lambda: self.figure(**options), title=title, notes=notes, budget=budget, dpi=dpi)

    def figure(self, **options: Any) -> Any:
        """A matplotlib ``Figure`` of the shown attribution and target, with the view's opacity and colormap.

        Args:
            **options: overrides (``target=``, ``cmap=``, ``opacity=``, ``title=``, ``figsize=``, ``into=``;
                see ``mmviz.export.attribution_figures.attribution_figure``).
        """
        from mmviz.export.attribution_figures import attribution_view_figure

        return attribution_view_figure(self, **options)
