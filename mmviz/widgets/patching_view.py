"""PatchingView: a layer × position heat map of patching effects with the token strip and image panes.

The state holds everything (effects are small: ``[sites, layers, positions]`` float32, each position carrying
its column's effect), so switching site, hovering a layer or a position never waits for the kernel. Effects
use the diverging blue–red scale centred at 0 (1 = the clean answer restored).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import traitlets

from mmviz import _codec
from mmviz.data.patching import PatchingTrace
from mmviz.errors import BudgetError
from mmviz.widgets._state import table_state
from mmviz.widgets._view import DEFAULT_BUDGET, View

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mmviz.data.tokens import TokenTable

__all__ = ["PatchingView", "patching_state"]


def patching_state(trace: PatchingTrace) -> dict[str, Any]:
    """The data part of the view's state (``js/src/views/patching.ts: PatchingState``).

    Returns:
        ``_tokens`` (the token table), ``_sites`` (names), ``_layers`` (block indices), ``_effects``
        (float32 ``[sites, layers, positions]``, ``nan`` where no column restored the position) and ``_summary``
        (metric, method, corruption, clean and corrupted values).
    """
    effects = np.stack(
        [np.stack([trace.position_effects(s, int(layer)) for layer in trace.layers]) for s in range(len(trace.sites))]
    )
    summary = (
        f"{trace.method} patching of {trace.metric}: clean {trace.clean_metric:.4g}, corrupted "
        f"{trace.corrupt_metric:.4g} ({trace.corruption}); 0 = corrupted, 1 = clean"
    )
    return {
        "_tokens": table_state(trace.tokens),
        "_sites": list(trace.sites),
        "_layers": [int(layer) for layer in trace.layers],
        "_effects": _codec.encode_tensor(effects.astype(np.float32), "float32"),
        "_summary": summary,
    }


class PatchingView(View):
    """Interactive view of a ``PatchingTrace`` (``res.show()``).

    A heat map of effects, layers down and positions across (blue: the corrupted answer, red: the clean one
    restored), above the token strip; each image with the effects of one layer on its patch grid: the layer
    under the pointer, or the selected one. Hovering a cell, token or patch points at that position in every
    pane of a Dashboard; clicking a row selects its layer.

    Args:
        trace: the patching result.
        site: site shown first (name or index).
        layer: layer whose effects the image panes show (block index; negative counts from the last).
        opacity: opacity of the effects over the images (0–1).
        title: heading shown above the view.
        budget: bytes the state may hold.

    Raises:
        BudgetError: the effects and images exceed ``budget``.
        KeyError: an unknown site or layer.
        TypeError: an unknown keyword argument (the message lists the valid ones).
    """

    KIND = "patching"
    TRIM = "patch fewer layers or positions, or raise budget="

    site = traitlets.Int(0).tag(sync=True)
    """Site shown (index into ``trace.sites``)."""
    layer = traitlets.Int(0).tag(sync=True)
    """Row of the layer axis the image panes show."""
    opacity = traitlets.Float(0.75).tag(sync=True)
    """Opacity of the effects over the images."""

    _tokens: traitlets.Dict[str, Any] = traitlets.Dict().tag(sync=True)
    _sites: traitlets.List[str] = traitlets.List(traitlets.Unicode()).tag(sync=True)
    _layers: traitlets.List[int] = traitlets.List(traitlets.Int()).tag(sync=True)
    _effects: traitlets.Dict[str, Any] = traitlets.Dict().tag(sync=True)
    _summary = traitlets.Unicode("").tag(sync=True)

    def __init__(
        self,
        trace: PatchingTrace,
        *,
        site: str | int = 0,
        layer: int = 0,
        opacity: float = 0.75,
        title: str | None = None,
        budget: int = DEFAULT_BUDGET,
    ) -> None:
        if not isinstance(trace, PatchingTrace):
            raise TypeError(f"PatchingView needs a PatchingTrace, not {type(trace).__name__}")
        self.trace = trace
        site_row = trace.site_index(site)
        layer_row = trace.layer_index(int(layer))
        if not 0.0 <= float(opacity) <= 1.0:
            raise ValueError(f"opacity must lie in [0, 1], not {opacity!r}")
        data = patching_state(trace)
        need = _codec.payload_nbytes(data)
        if need > budget:
            raise BudgetError(
                f"PatchingView: the state would hold {need / 1e6:.1f} MB, over the budget of "
                f"{budget / 1e6:.1f} MB; {self.TRIM}"
            )
        super().__init__(title=title, budget=budget, site=site_row, layer=layer_row, opacity=float(opacity), **data)

    def tokens(self) -> TokenTable:
        """The token table of the patched input."""
        return self.trace.tokens

    @traitlets.validate("site")
    def _valid_site(self, proposal: dict[str, Any]) -> int:
        value = int(proposal["value"])
        if not 0 <= value < len(self.trace.sites):
            raise traitlets.TraitError(f"site {value} is out of range: the trace has {len(self.trace.sites)}")
        return value

    @traitlets.validate("layer")
    def _valid_layer(self, proposal: dict[str, Any]) -> int:
        value = int(proposal["value"])
        if not 0 <= value < len(self.trace.layers):
            raise traitlets.TraitError(f"layer row {value} is out of range: the trace has {len(self.trace.layers)}")
        return value

    def figure(self, **options: Any) -> Figure:
        """A matplotlib ``Figure`` of the shown site: the heat map and the selected layer's image panes.

        Args:
            **options: overrides (``site=``, ``layer=``, ``opacity=``, ``title=``, ``figsize=``, ``into=``; see
                ``mmviz.export.patching_figures.patching_figure``).
        """
        from mmviz.export.patching_figures import patching_view_figure

        return patching_view_figure(self, **options)
