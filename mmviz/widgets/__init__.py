"""anywidget views of mmviz traces (``trace.show()`` returns one).

Each view keeps its trace in Python, syncs small binary summaries, serves full attention maps on
request, and links its panes in the browser. ``view.save("x.html")`` writes an offline page.
"""

from __future__ import annotations

from mmviz._static import MissingBundleError
from mmviz.widgets._view import COLORMAPS, View
from mmviz.widgets.attention_view import AttentionView
from mmviz.widgets.attribution_view import AttributionView
from mmviz.widgets.cross_attention_view import CrossAttentionView
from mmviz.widgets.dashboard import Dashboard
from mmviz.widgets.decomposition_view import DecompositionView
from mmviz.widgets.faithfulness_view import FaithfulnessView
from mmviz.widgets.feature_view import FeatureView
from mmviz.widgets.lens_view import LensView
from mmviz.widgets.patching_view import PatchingView

__all__ = [
    "COLORMAPS",
    "AttentionView",
    "AttributionView",
    "CrossAttentionView",
    "Dashboard",
    "DecompositionView",
    "FaithfulnessView",
    "FeatureView",
    "LensView",
    "MissingBundleError",
    "PatchingView",
    "View",
]
