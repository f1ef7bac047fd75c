"""LensView: the logit lens as a layer × position grid, with image panes coloured by a token's probability.

Each cell shows the most probable token at one layer and position, coloured by its probability (or by the
probability of a token named when the lens was computed). Each image of the input is drawn with its patches
coloured by the same value at one layer (the hovered row, else ``layer``). Hovering a cell lists its top-k and
links its position (and patch) to the other panes of a Dashboard. The state holds the whole lens (it is
``O(layers × positions × k)``), so nothing waits for the kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import traitlets

from mmviz import _codec
from mmviz.data.lens import LensTrace
from mmviz.errors import BudgetError
from mmviz.widgets._state import table_state
from mmviz.widgets._view import DEFAULT_BUDGET, View

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mmviz.data.tokens import TokenTable

__all__ = ["LensView", "lens_state"]


def lens_state(trace: LensTrace, batch_index: int = 0) -> dict[str, Any]:
    """The data part of a view's state (``js/src/views/lens.ts: LensState``).

    Args:
        trace: the lens.
        batch_index: the batch item shown.

    Returns:
        ``_tokens`` (the item's token table) and ``_lens``: ``layers``, ``positions`` (int32 ``[positions]``),
        ``top_ids`` (int32 ``[layers, positions, k]``), ``top_probs`` (float32, same shape), ``entropy``
        (float32 ``[layers, positions]``), ``named`` and ``named_probs`` (float32 ``[layers, positions,
        named]``), ``vocab_ids`` / ``vocab_text`` (the text of every id), ``method``.
    """
    b = batch_index
    return {
        "_tokens": table_state(trace.tables[b]),
        "_lens": {
            "method": trace.method,
            "layers": list(trace.layers),
            "positions": _codec.encode_tensor(trace.positions, "int32"),
            "top_ids": _codec.encode_tensor(trace.top_ids[b], "int32"),
            "top_probs": _codec.encode_tensor(trace.top_probs[b], "float32"),
            "entropy": _codec.encode_tensor(trace.entropy[b], "float32"),
            "named": list(trace.named),
            "named_probs": _codec.encode_tensor(trace.named_probs[b], "float32"),
            "vocab_ids": _codec.encode_tensor(trace.vocab_ids, "int32"),
            "vocab_text": trace.vocab_text.tolist(),
        },
    }


class LensView(View):
    """Interactive view of a ``LensTrace`` (``lens.show()``).

    A grid of layers (rows, the last on top) × lensed positions (columns): each cell holds the most probable
    token, coloured by its probability or by the probability of the token picked in ``token``. Each image is
    drawn with its patches coloured by that value at one layer: the hovered row, else ``layer``. Hover a cell
    for its top-k list; click a row to keep its layer. Joins a Dashboard: it links by position and by image
    patch.

    Args:
        trace: the lens.
        token: the named token whose probability colours the cells and patches (its text or id, see
            ``trace.named``); ``None``: each cell's top-1 probability.
        layer: the layer (a hidden-state index of ``trace.layers``; ``-1``: the last) the image panes show.
        batch_index: the batch item shown.
        cmap: colormap (``mmviz.widgets.COLORMAPS``).
        title: heading shown above the view.
        budget: bytes the state may hold.

    Raises:
        BudgetError: the lens is bigger than ``budget`` (lens fewer layers or positions, or raise it).
        KeyError: ``token`` is not a named token of the lens.
        IndexError: ``layer`` or ``batch_index`` is out of range.
        TypeError: an unknown keyword argument (the message lists the valid ones).
    """

    KIND = "lens"
    TRIM = "lens fewer layers or positions (layers=[...], positions=[...]) or raise budget="

    token = traitlets.Int(-1).tag(sync=True)
    """Index into the lens's named tokens of the token that colours the grid; -1: the top-1 probability."""
    layer = traitlets.Int(0).tag(sync=True)
    """Row of the layer the image panes show (index into the lens's layers)."""

    _tokens: traitlets.Dict[str, Any] = traitlets.Dict().tag(sync=True)
    _lens: traitlets.Dict[str, Any] = traitlets.Dict().tag(sync=True)

    def __init__(
        self,
        trace: LensTrace,
        *,
        token: str | int | None = None,
        layer: int = -1,
        batch_index: int = 0,
        cmap: str = "viridis",
        title: str | None = None,
        budget: int = DEFAULT_BUDGET,
    ) -> None:
        if not isinstance(trace, LensTrace):
            raise TypeError(f"LensView shows a LensTrace (mmviz.logit_lens(...)), not {type(trace).__name__}")
        if not 0 <= batch_index < len(trace.tables):
            raise IndexError(f"batch_index {batch_index} is out of range: the lens holds {len(trace.tables)} item(s)")
        self.trace = trace
        self.batch_index = batch_index
        named = -1 if token is None else trace._named_index(token)
        row = trace.layer_row(layer)
        data = lens_state(trace, batch_index)
        need = _codec.payload_nbytes(data)
        if need > budget:
            raise BudgetError(
                f"LensView: the state would hold {need / 1e6:.1f} MB, over the budget of {budget / 1e6:.1f} MB; "
                f"{self.TRIM}"
            )
        super().__init__(title=title, budget=budget, cmap=cmap, token=named, layer=row, **data)

    def tokens(self) -> TokenTable:
        """The token table of the shown batch item."""
        return self.trace.tables[self.batch_index]

    @traitlets.validate("token")
    def _valid_token(self, proposal: dict[str, Any]) -> int:
        value = int(proposal["value"])
        if not -1 <= value < len(self.trace.named):
            raise traitlets.TraitError(f"token {value} is out of range: the lens names {len(self.trace.named)}")
        return value

    @traitlets.validate("layer")
    def _valid_layer(self, proposal: dict[str, Any]) -> int:
        value = int(proposal["value"])
        if not 0 <= value < len(self.trace.layers):
            raise traitlets.TraitError(f"layer row {value} is out of range: the lens holds {len(self.trace.layers)}")
        return value

    def values(self) -> np.ndarray:
        """``[layers, positions]`` what colours the grid now: the chosen token's or the top-1 probability."""
        b = self.batch_index
        if self.token >= 0:
            return self.trace.named_probs[b, :, :, self.token]
        return self.trace.top_probs[b, :, :, 0]

    def figure(self, **options: Any) -> Figure:
        """A matplotlib ``Figure`` of the grid and the image panes at the view's layer, token and colormap.

        Args:
            **options: overrides (``token=``, ``layer=``, ``cmap=``, ``title=``, ``figsize=``, ``into=``; see
                ``mmviz.export.lens_figures.lens_figure``).
        """
        from mmviz.export.lens_figures import lens_view_figure

        return lens_view_figure(self, **options)
