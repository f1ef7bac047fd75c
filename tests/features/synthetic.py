"""A hand-made FeatureTrace over a VLM-like table (shared by the view, figure and browser tests)."""

from __future__ import annotations

import numpy as np

from mmviz.data import FeatureTrace
from tests.fixtures.synthetic import vlm_table

D_SAE, K = 10, 3


def dense_activations() -> np.ndarray:
    """``[positions, d_sae]``: feature 3 on the left half of the image and " red", 7 on the right and
    " circle", 5 weakly everywhere (positions: <s>, 16 patches, " red", " cir", "cle", two markup tokens, </s>)."""
    table = vlm_table(["red", "circle"], evil=True)
    dense = np.zeros((len(table), D_SAE), np.float32)
    image = table.kind == "image"
    dense[image & (table.patch_col < 2), 3] = 2.0
    dense[image & (table.patch_col >= 2), 7] = 1.0
    dense[17, 3], dense[18, 7], dense[:, 5] = 1.5, 0.8, 0.1
    return dense


def synthetic_features(named: tuple[int, ...] = (3,)) -> FeatureTrace:
    """The trace of ``dense_activations`` kept as top-3 per position, with ``named`` kept whole."""
    table = vlm_table(["red", "circle"], evil=True)
    dense = dense_activations()
    order = np.argsort(-dense, axis=1, kind="stable")[:, :K]
    acts = np.take_along_axis(dense, order, axis=1)
    return FeatureTrace(
        tokens=table,
        item=np.zeros(len(table), np.int32),
        top_features=np.where(acts > 0, order, -1).astype(np.int32),
        top_activations=acts,
        reconstruction_error=np.full(len(table), 0.5, np.float32),
        norms=np.full(len(table), 2.0, np.float32),
        named=np.asarray(named, np.int64),
        named_activations=dense[:, list(named)],
        feature_max=dense.max(axis=0),
        feature_count=(dense > 0).sum(axis=0),
        site="model.language_model.layers.1",
        info={"d_in": 32, "d_sae": D_SAE, "activation": "relu", "exact_topk": False},
    )
