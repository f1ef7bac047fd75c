"""FeatureView: tokens and image patches coloured by one sparse-autoencoder feature.

The state holds the activation rows of the features a user can pick (the named ones, then the strongest
overall) and every position's top-k features, so picking a feature, hovering and the gallery of a
feature's top-activating positions never wait for the kernel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import traitlets

from mmviz import _codec
from mmviz.data.features import FeatureTrace
from mmviz.errors import BudgetError
from mmviz.widgets._state import table_state
from mmviz.widgets._view import DEFAULT_BUDGET, View

if TYPE_CHECKING:
    from matplotlib.figure import Figure, SubFigure

    from mmviz.data.tokens import TokenTable

__all__ = ["FeatureView", "feature_choices", "feature_state"]

DEFAULT_CHOICES = 32
"""Features offered in the picker besides those named: the strongest by largest activation."""


def feature_choices(trace: FeatureTrace, features: Sequence[int] | None, n: int) -> list[int]:
    """The features a view offers: ``features`` if given, else the named ones, then the ``n`` strongest."""
    if features is not None:
        chosen = [int(f) for f in features]
        for f in chosen:
            trace.activations(f)  # range check with the trace's message
        return list(dict.fromkeys(chosen))
    strongest = np.argsort(-trace.feature_max, kind="stable")[:n]
    strongest = strongest[trace.feature_max[strongest] > 0]
    return list(dict.fromkeys([*trace.named.tolist(), *strongest.tolist()]))


def feature_state(trace: FeatureTrace, choices: Sequence[int], labels: Mapping[int, str]) -> dict[str, Any]:
    """The data part of the view's state (``js/src/views/features.ts: FeatureState``).

    Returns:
        ``_tokens`` (the table), ``_features`` (the features offered, with ``label`` and ``exact``),
        ``_columns`` float32 ``[features, positions]`` activations, ``_top_features`` int32 and
        ``_top_activations`` float32 ``[positions, k]``, ``_labels`` (feature id → text, untrusted).
    """
    columns = np.stack([trace.activations(f) for f in choices]) if choices else np.zeros((0, len(trace.tokens)))
    return {
        "_tokens": table_state(trace.tokens),
        "_features": [{"id": int(f), "exact": trace.is_exact(f)} for f in choices],
        "_columns": _codec.encode_tensor(columns, "float32"),
        "_top_features": _codec.encode_tensor(trace.top_features, "int32"),
        "_top_activations": _codec.encode_tensor(trace.top_activations, "float32"),
        "_labels": {str(int(f)): str(text) for f, text in labels.items()},
    }


class FeatureView(View):
    """Interactive view of a ``FeatureTrace`` (``ft.show()``).

    Text tokens and image patches coloured by the chosen feature's activation; hovering a token or patch
    lists its top features (and links the position and patch to the other panes of a Dashboard); a gallery
    lists the chosen feature's top-activating positions, with the image region of patches.

    Args:
        trace: the feature trace.
        feature: feature shown first (default: the first offered).
        features: features offered in the picker (default: the named ones, then the strongest 32).
        labels: names of features (``{812: "red"}``), shown beside their number (as text).
        cmap: colormap (``mmviz.widgets.COLORMAPS``).
        title: heading shown above the view.
        budget: bytes the state may hold.

    Raises:
        BudgetError: the state exceeds ``budget``.
        ValueError: ``feature`` is not among those offered.
        IndexError: a feature outside the SAE.
    """

    KIND = "features"
    TRIM = "offer fewer features with features=[...], keep fewer per position (k=) or raise budget="

    feature = traitlets.Int(0).tag(sync=True)
    """Feature colouring the tokens and patches."""

    _tokens: traitlets.Dict[str, Any] = traitlets.Dict().tag(sync=True)
    _features: traitlets.List[dict[str, Any]] = traitlets.List().tag(sync=True)
    _columns: traitlets.Dict[str, Any] = traitlets.Dict().tag(sync=True)
    _top_features: traitlets.Dict[str, Any] = traitlets.Dict().tag(sync=True)
    _top_activations: traitlets.Dict[str, Any] = traitlets.Dict().tag(sync=True)
    _labels: traitlets.Dict[str, str] = traitlets.Dict().tag(sync=True)

    def __init__(
        self,
        trace: FeatureTrace,
        *,
        feature: int | None = None,
        features: Sequence[int] | None = None,
        labels: Mapping[int, str] | None = None,
        cmap: str = "viridis",
        title: str | None = None,
        budget: int = DEFAULT_BUDGET,
    ) -> None:
        if not isinstance(trace, FeatureTrace):
            raise TypeError(f"FeatureView needs a FeatureTrace, not {type(trace).__name__}")
        self.trace = trace
        choices = feature_choices(trace, features, DEFAULT_CHOICES)
        if feature is not None and int(feature) not in choices:
            trace.activations(int(feature))
            choices = [int(feature), *choices]
        if not choices:
            raise ValueError("FeatureView: no feature is active anywhere in this trace; name one with feature=")
        data = feature_state(trace, choices, labels or {})
        need = _codec.payload_nbytes(data)
        if need > budget:
            raise BudgetError(
                f"FeatureView: the state would hold {need / 1e6:.1f} MB, over the budget of {budget / 1e6:.1f} MB; "
                f"{self.TRIM}"
            )
        first = choices[0] if feature is None else int(feature)
        super().__init__(title=title or f"features at {trace.site}", budget=budget, cmap=cmap, feature=first, **data)

    @traitlets.validate("feature")
    def _valid_feature(self, proposal: dict[str, Any]) -> int:
        value = int(proposal["value"])
        offered = [f["id"] for f in self._features]
        if offered and value not in offered:
            raise traitlets.TraitError(f"feature {value} is not offered by this view (offered: {offered[:12]} …)")
        return value

    def tokens(self) -> TokenTable:
        """The positions of the trace."""
        return self.trace.tokens

    def figure(self, **options: Any) -> Figure | SubFigure:
        """A matplotlib ``Figure`` of the chosen feature (see ``mmviz.export.feature_figure``)."""
        from mmviz.export.feature_figures import feature_figure

        selection = {"feature": self.feature, "cmap": self.cmap, "label": self._labels.get(str(self.feature))}
        return feature_figure(self.trace, **{**selection, **options})
