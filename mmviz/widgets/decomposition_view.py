"""DecompositionView: a layer × head grid of direct contributions, each head's texts, its patch map.

The state holds everything (a decomposition's reductions are small): each head's share of the similarity
to every text (and of the image embedding's own norm) as ``[directions, layers, heads]`` float32, each
(head, source position) share as ``[directions, layers, heads, positions]`` float32, and each head's TextSpan
descriptions. Hovering a head shows its patch map on the image; the grid and the image write the head,
layer and patch to the link store, so a Dashboard's attention pane of the same input follows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import traitlets

from mmviz import _codec
from mmviz.data.decomposition import DecompositionTrace
from mmviz.errors import BudgetError
from mmviz.widgets._state import table_state
from mmviz.widgets._view import DEFAULT_BUDGET, View

if TYPE_CHECKING:
    from matplotlib.figure import Figure, SubFigure

    from mmviz.data.tokens import TokenTable

__all__ = ["DecompositionView", "decomposition_state"]

EMBEDDING_LABEL = "image embedding (share of its norm)"
"""Label of direction 0: the image embedding's own direction."""


def direction_labels(trace: DecompositionTrace) -> list[str]:
    """Direction 0 is the image embedding; direction ``i + 1`` is ``trace.texts[i]``."""
    return [EMBEDDING_LABEL, *trace.texts]


def head_shares(trace: DecompositionTrace) -> np.ndarray:
    """``[directions, layers, heads]`` each head's share of ``‖embedding‖`` (0) and of each text's similarity."""
    return trace.maps.sum(-1) / float(np.linalg.norm(trace.embedding))


def describe_heads(trace: DecompositionTrace, k: int) -> list[list[list[Any]]]:
    """``[layers·heads]`` lists of ``[text, fraction]``: TextSpan per head, empty when it cannot be run."""
    empty: list[list[list[Any]]] = [[] for _ in range(trace.n_layers * trace.n_heads)]
    if k <= 0 or not trace.texts or trace.batch_heads is None or trace.batch_heads.shape[0] < 2:
        return empty
    for (layer, head), picks in trace.describe(k=k).items():
        empty[layer * trace.n_heads + head] = [[text, round(share, 4)] for text, share in picks]
    return empty


def decomposition_state(trace: DecompositionTrace, describe: int = 3) -> dict[str, Any]:
    """The data part of a view's state (``js/src/views/decomposition.ts: DecompositionState``).

    Args:
        trace: the decomposition.
        describe: TextSpan texts per head (0: none).
    """
    scale = float(np.linalg.norm(trace.embedding))
    similarity = [1.0] + [trace.similarity(i) for i in range(len(trace.texts))]
    return {
        "_tokens": table_state(trace.tokens),
        "_module": str(trace.info.get("module", "")),
        "_labels": direction_labels(trace),
        "_similarity": [float(s) for s in similarity],
        "_shares": _codec.encode_tensor(head_shares(trace), "float32"),
        "_maps": _codec.encode_tensor(trace.maps / scale, "float32"),
        "_descriptions": describe_heads(trace, describe),
    }


class DecompositionView(View):
    """Interactive view of a ``DecompositionTrace`` (``dec.show()``).

    A layer × head grid coloured by each head's share of the chosen text's similarity to the image (or of
    the image embedding's norm), diverging blue–red around 0; hovering a head lists its TextSpan texts and
    paints its per-patch shares over the image. Click a head to keep it selected.

    Args:
        trace: the decomposition (``mmviz.decompose(...)``).
        text: text shown first (one of ``trace.texts``, or its index); ``None``: the image embedding.
        layer: selected layer (-1: none; negative indices count from the end otherwise).
        head: selected head (-1: none).
        describe: TextSpan texts listed per head (0: none; needs texts and several images).
        opacity: opacity of the patch map over the image (0–1).
        title: heading shown above the view.
        budget: bytes the state may hold.

    Raises:
        BudgetError: the maps exceed ``budget``.
        KeyError: ``text`` is not one of the trace's texts.
        TypeError: an unknown keyword argument (the message lists the valid ones).
    """

    KIND = "decomposition"
    TRIM = "decompose with fewer texts, or raise budget="

    direction = traitlets.Int(0).tag(sync=True)
    """Direction scored: 0 the image embedding, ``i + 1`` text ``i``."""
    layer = traitlets.Int(-1).tag(sync=True)
    """Selected layer (-1: none)."""
    head = traitlets.Int(-1).tag(sync=True)
    """Selected head (-1: none)."""
    opacity = traitlets.Float(0.65).tag(sync=True)
    """Opacity of the patch map over the image."""

    _tokens: traitlets.Dict[str, Any] = traitlets.Dict().tag(sync=True)
    _module = traitlets.Unicode("").tag(sync=True)
    """The attention stack of the decomposed tower (``"vision_model"``), for linking layers and heads."""
    _labels: traitlets.List[str] = traitlets.List(traitlets.Unicode()).tag(sync=True)
    _similarity: traitlets.List[float] = traitlets.List(traitlets.Float()).tag(sync=True)
    _shares: traitlets.Dict[str, Any] = traitlets.Dict().tag(sync=True)
    _maps: traitlets.Dict[str, Any] = traitlets.Dict().tag(sync=True)
    _descriptions: traitlets.List[Any] = traitlets.List().tag(sync=True)

    def __init__(
        self,
        trace: DecompositionTrace,
        *,
        text: str | int | None = None,
        layer: int = -1,
        head: int = -1,
        describe: int = 3,
        opacity: float = 0.65,
        title: str | None = None,
        budget: int = DEFAULT_BUDGET,
    ) -> None:
        if not isinstance(trace, DecompositionTrace):
            raise TypeError(f"DecompositionView needs a DecompositionTrace, not {type(trace).__name__}")
        self.trace = trace
        direction = 0 if text is None else 1 + trace.text_index(text)
        selected = (layer, head) != (-1, -1)
        if selected:
            layer, head = trace.layer_index(layer), trace.head_index(head)
        if not 0.0 <= float(opacity) <= 1.0:
            raise ValueError(f"opacity must lie in [0, 1], not {opacity!r}")
        data = decomposition_state(trace, describe)
        need = _codec.payload_nbytes(data)
        if need > budget:
            raise BudgetError(
                f"DecompositionView: the state would hold {need / 1e6:.1f} MB, over the budget of "
                f"{budget / 1e6:.1f} MB; {self.TRIM}"
            )
        super().__init__(
            title=title,
            budget=budget,
            direction=direction,
            layer=layer if selected else -1,
            head=head if selected else -1,
            opacity=float(opacity),
            **data,
        )

    def tokens(self) -> TokenTable:
        """The vision tower's positions (CLS, then the image's patches)."""
        return self.trace.tokens

    def figure(self, **options: Any) -> Figure | SubFigure:
        """A matplotlib ``Figure`` of the view's text, selected head and opacity.

        Args:
            **options: overrides (``text=``, ``layer=``, ``head=``, ``opacity=``, ``title=``, ``figsize=``,
                ``into=``; see ``mmviz.export.decomposition_figures.decomposition_figure``).
        """
        from mmviz.export.decomposition_figures import decomposition_view_figure

        return decomposition_view_figure(self, **options)
