"""Sparse-autoencoder features of a model's activations at one site, per position (numpy only).

A ``FeatureTrace`` keeps, for every position of one or more inputs, its ``k`` most active features and their
activations, how well the SAE reconstructs the activation there, and the full activation rows of the
features named up front. Memory is ``O(positions × k)``, never ``O(positions × d_sae)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mmviz.data import io
from mmviz.data._shown import Shown
from mmviz.data.tokens import TokenTable

if TYPE_CHECKING:
    from matplotlib.figure import Figure, SubFigure

    from mmviz.widgets.feature_view import FeatureView

__all__ = ["FeatureTrace"]


@dataclass(eq=False)
class FeatureTrace(Shown):
    """Features of an SAE over the positions of one site.

    Attributes:
        tokens: the positions (for a collection, every input's table one after another; images merged).
        item: ``[positions]`` which input (batch row, then list entry) each position belongs to.
        top_features: ``[positions, k]`` each position's most active features, strongest first (``-1``: fewer
            than ``k`` features were active there).
        top_activations: ``[positions, k]`` their activations (``0`` where ``top_features`` is ``-1``).
        reconstruction_error: ``[positions]`` ``‖x − decode(encode(x))‖₂`` of the activation ``x``.
        norms: ``[positions]`` ``‖x‖₂``.
        named: ``[n]`` features whose full activation rows were kept.
        named_activations: ``[positions, n]`` their activations at every position.
        feature_max: ``[d_sae]`` each feature's largest activation over all positions.
        feature_count: ``[d_sae]`` at how many positions each feature is active (> 0).
        site: the site's full name (a block's dotted path).
        info: SAE description (``d_in``, ``d_sae``, ``activation``, ``source``) and run details.
    """

    tokens: TokenTable
    item: np.ndarray
    top_features: np.ndarray
    top_activations: np.ndarray
    reconstruction_error: np.ndarray
    norms: np.ndarray
    named: np.ndarray
    named_activations: np.ndarray
    feature_max: np.ndarray
    feature_count: np.ndarray
    site: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    _ARRAYS = (
        "item",
        "top_features",
        "top_activations",
        "reconstruction_error",
        "norms",
        "named",
        "named_activations",
        "feature_max",
        "feature_count",
    )

    def __post_init__(self) -> None:
        n = len(self.tokens)
        if self.top_features.ndim != 2 or self.top_features.shape[0] != n:
            raise ValueError(f"FeatureTrace: `top_features` must be [positions={n}, k], got {self.top_features.shape}")
        if self.top_activations.shape != self.top_features.shape:
            raise ValueError("FeatureTrace: `top_activations` must have the shape of `top_features`")
        for name in ("item", "reconstruction_error", "norms"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"FeatureTrace: `{name}` must be [positions={n}]")
        if self.named_activations.shape != (n, len(self.named)):
            raise ValueError(f"FeatureTrace: `named_activations` must be [positions={n}, {len(self.named)}]")
        if self.feature_count.shape != self.feature_max.shape:
            raise ValueError("FeatureTrace: `feature_count` and `feature_max` must both be [d_sae]")

    def __repr__(self) -> str:
        return (
            f"FeatureTrace(site={self.site!r}, positions={len(self.tokens)}, k={self.k}, d_sae={self.d_sae}, "
            f"items={self.n_items}, named={self.named.tolist()})"
        )

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def k(self) -> int:
        """Features kept per position."""
        return int(self.top_features.shape[1])

    @property
    def d_sae(self) -> int:
        """Number of features of the SAE."""
        return int(self.feature_max.shape[0])

    @property
    def n_items(self) -> int:
        """Number of inputs (batch rows over every input given)."""
        return int(self.item.max()) + 1 if len(self.item) else 0

    @property
    def relative_error(self) -> np.ndarray:
        """``[positions]`` reconstruction error over the activation's norm (``nan`` where the norm is 0)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.norms > 0, self.reconstruction_error / self.norms, np.nan).astype(np.float32)

    # -- reading -------------------------------------------------------------------------------
    def _check_feature(self, feature: int) -> int:
        f = int(feature)
        if not 0 <= f < self.d_sae:
            raise IndexError(f"feature {feature} does not exist: the SAE has features 0 … {self.d_sae - 1}")
        return f

    def _check_position(self, position: int) -> int:
        n = len(self.tokens)
        p = int(position)
        if not -n <= p < n:
            raise IndexError(f"position {position} does not exist: this trace has positions 0 … {n - 1}")
        return p % n

    def is_exact(self, feature: int) -> bool:
        """Whether ``activations(feature)`` is exact everywhere (named up front, or inside every top-k)."""
        f = self._check_feature(feature)
        return bool(f in self.named.tolist() or self.info.get("exact_topk", False))

    def activations(self, feature: int) -> np.ndarray:
        """``[positions]`` the activation of ``feature`` at every position.

        Exact for features named up front (``features=[...]``) and for top-k SAEs whose ``k`` fits the trace's
        ``k``; otherwise a position where the feature is outside the top ``k`` reads 0 (its activation there
        is at most that position's ``k``-th largest; see ``is_exact``).
        """
        f = self._check_feature(feature)
        hits = np.flatnonzero(self.named == f)
        if hits.size:
            return self.named_activations[:, int(hits[0])].copy()
        hit = self.top_features == f
        return np.where(hit, self.top_activations, 0.0).sum(axis=1).astype(np.float32)

    def top(self, position: int, k: int = 5) -> list[tuple[int, float]]:
        """The ``k`` most active features at ``position`` as ``(feature, activation)``, strongest first."""
        p = self._check_position(position)
        keep = self.top_features[p] >= 0
        feats, acts = self.top_features[p][keep][:k], self.top_activations[p][keep][:k]
        return [(int(f), float(a)) for f, a in zip(feats, acts) if a > 0]

    def top_positions(self, feature: int, n: int = 10) -> list[tuple[int, float]]:
        """The ``n`` positions where ``feature`` is most active, as ``(position, activation)``, strongest first."""
        acts = self.activations(feature)
        order = np.argsort(-acts, kind="stable")[:n]
        return [(int(p), float(acts[p])) for p in order if acts[p] > 0]

    def image_map(self, feature: int, image: int = 0) -> np.ndarray:
        """``[rows, cols]`` the activation of ``feature`` over the patches of image ``image`` (nan: no token)."""
        if not 0 <= image < len(self.tokens.grids):
            raise IndexError(f"image {image} does not exist: this trace has {len(self.tokens.grids)} image(s)")
        rows, cols = self.tokens.grids[image]
        out = np.full((rows, cols), np.nan, dtype=np.float32)
        sel = (self.tokens.kind == "image") & (self.tokens.image_index == image)
        out[self.tokens.patch_row[sel], self.tokens.patch_col[sel]] = self.activations(feature)[sel]
        return out

    def crop(self, position: int, margin: int = 1) -> np.ndarray | None:
        """``uint8 [h, w, 3]`` the image region of an image-patch position (``margin`` patches around it).

        Returns ``None`` for text positions.
        """
        p = self._check_position(position)
        t = self.tokens
        if t.kind[p] != "image" or t.image_index[p] < 0:
            return None
        image = t.images[int(t.image_index[p])]
        rows, cols = t.grids[int(t.image_index[p])]
        h, w = image.shape[0] / rows, image.shape[1] / cols
        r, c = int(t.patch_row[p]), int(t.patch_col[p])
        top, bottom = int(max(r - margin, 0) * h), round(min(r + 1 + margin, rows) * h)
        left, right = int(max(c - margin, 0) * w), round(min(c + 1 + margin, cols) * w)
        return np.ascontiguousarray(image[top:bottom, left:right])

    def gallery(self, feature: int, n: int = 8, margin: int = 1) -> list[tuple[int, float, np.ndarray | None]]:
        """The ``n`` top-activating positions of ``feature``: ``(position, activation, crop or None)``."""
        return [(p, a, self.crop(p, margin)) for p, a in self.top_positions(feature, n)]

    # -- showing -------------------------------------------------------------------------------
    def show(self, **options: Any) -> FeatureView:
        """A ``FeatureView`` of this trace (``feature=`` picks the feature that colours the tokens)."""
        from mmviz.widgets.feature_view import FeatureView

        return FeatureView(self, **options)

    def figure(self, **options: Any) -> Figure | SubFigure:
        """A matplotlib figure: tokens and patches coloured by one feature (see ``mmviz.export.feature_figure``)."""
        from mmviz.export.feature_figures import feature_figure

        return feature_figure(self, **options)

    # -- files ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the trace to a ``.mmviz`` file (read back with ``mmviz.load``)."""
        io.save(self, path, "features")

    def to_payload(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Metadata and arrays for ``mmviz.data.io.save``."""
        table_meta, arrays = self.tokens.to_payload("tokens")
        for name in self._ARRAYS:
            arrays[name] = np.ascontiguousarray(getattr(self, name))
        return {"tokens": table_meta, "site": self.site, "info": self.info}, arrays

    @classmethod
    def from_payload(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> FeatureTrace:
        """Inverse of ``to_payload``."""
        return cls(
            tokens=TokenTable.from_payload(meta["tokens"], arrays),
            site=str(meta.get("site", "")),
            info=dict(meta.get("info") or {}),
            **{name: arrays[name] for name in cls._ARRAYS},
        )


io.register_type("features", FeatureTrace.from_payload)
