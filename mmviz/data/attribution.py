"""Attributions: how much each input position (token, image patch, pixel) contributed to a target.

An ``Attribution`` is what ``mmviz.attribute`` returns: numpy arrays only, so it saves, loads,
shows and exports without torch. Rows are targets (one for a single logit or answer, one per
generated token for a ``[generated, source]`` matrix), columns are positions of its
``TokenTable``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mmviz.data import io
from mmviz.data._shown import Shown
from mmviz.data.tokens import TokenTable

if TYPE_CHECKING:
    from mmviz.widgets.attribution_view import AttributionView

__all__ = ["SIGNED_METHODS", "Attribution"]

SIGNED_METHODS = frozenset({"input_x_gradient", "integrated_gradients", "occlusion"})
"""Methods whose scores have a sign (views use a diverging colormap centred at 0)."""


@dataclass(eq=False)
class Attribution(Shown):
    """Scores of input positions (and pixels) for one or more targets.

    Attributes:
        scores: ``[targets, positions]`` float32 score of each position of ``tokens`` per target.
        tokens: the positions scored (text tokens, image patches, specials); image tokens carry
            ``(image, row, col)`` so views link them to patches of attention traces.
        method: the method's name (``"saliency"``, ``"integrated_gradients"``, ...).
        targets: ``[targets]`` description of each row (e.g. ``"log p(' red')"``).
        target: description of the whole target (e.g. ``"answer ' red square'"``).
        pixel_maps: one ``[targets, height, width]`` float32 map per image in ``tokens``, at the
            model's input resolution (empty when no image was attributed).
        delta: ``[targets]`` completeness gap ``sum(scores) − (f(x) − f(baseline))`` for integrated
            gradients, else ``None``.
        info: JSON-able facts (model class, baseline, steps, ...).
    """

    scores: np.ndarray
    tokens: TokenTable
    method: str
    targets: tuple[str, ...]
    target: str = ""
    pixel_maps: tuple[np.ndarray, ...] = ()
    delta: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float32)
        if self.scores.ndim == 1:
            self.scores = self.scores[None]
        if self.scores.ndim != 2 or self.scores.shape[1] != len(self.tokens):
            raise ValueError(
                f"Attribution: scores must be [targets, positions] with {len(self.tokens)} positions, "
                f"got shape {self.scores.shape}"
            )
        self.targets = tuple(str(t) for t in self.targets)
        if len(self.targets) != self.scores.shape[0]:
            raise ValueError(
                f"Attribution: {self.scores.shape[0]} score rows but {len(self.targets)} target descriptions"
            )
        self.pixel_maps = tuple(np.asarray(p, dtype=np.float32) for p in self.pixel_maps)
        for i, p in enumerate(self.pixel_maps):
            if p.ndim != 3 or p.shape[0] != self.scores.shape[0]:
                raise ValueError(f"Attribution: pixel map {i} must be [targets, height, width], got {p.shape}")
        if self.pixel_maps and len(self.pixel_maps) != len(self.tokens.images):
            raise ValueError(
                f"Attribution: {len(self.pixel_maps)} pixel maps but the token table holds "
                f"{len(self.tokens.images)} image(s); give one map per image"
            )
        if self.delta is not None:
            self.delta = np.asarray(self.delta, dtype=np.float64).reshape(-1)
            if self.delta.shape != (self.scores.shape[0],):
                raise ValueError("Attribution: delta must have one value per target")

    # -- reading ---------------------------------------------------------------------------------
    @property
    def signed(self) -> bool:
        """Whether scores have a sign (diverging colormap) rather than being magnitudes."""
        return self.method in SIGNED_METHODS or self.method.startswith("contrast")

    @property
    def pixels(self) -> np.ndarray | None:
        """``[targets, height, width]`` pixel map of the first image, or ``None``."""
        return self.pixel_maps[0] if self.pixel_maps else None

    def patch_map(self, image: int = 0, target: int = 0) -> np.ndarray:
        """Scores of one image's patches laid out on its grid.

        Args:
            image: index into ``tokens.images``.
            target: score row.

        Returns:
            ``[rows, cols]`` float32, ``nan`` where no position holds a patch.
        """
        grid = self.tokens.image_positions(image)
        out = np.full(grid.shape, np.nan, dtype=np.float32)
        held = grid >= 0
        out[held] = self.scores[target, grid[held]]
        return out

    def word_scores(self, target: int = 0) -> list[tuple[str, float]]:
        """Scores summed over the subwords of each word (images' patches are words of their own).

        Args:
            target: score row.
        """
        return [(text, float(self.scores[target, members].sum())) for text, members in self.tokens.words()]

    def top(
        self, k: int = 10, target: int = 0, kind: str | Sequence[str] | None = None
    ) -> list[tuple[int, str, float]]:
        """The ``k`` positions with the largest absolute score.

        Args:
            k: how many.
            target: score row.
            kind: only positions of this kind (or kinds), e.g. ``"image"``.

        Returns:
            ``(position, text, score)`` triples, largest first.
        """
        positions = np.arange(len(self.tokens)) if kind is None else self.tokens.positions(kind)
        row = self.scores[target, positions]
        order = np.argsort(-np.abs(row), kind="stable")[:k]
        return [(int(positions[i]), self.tokens.label(int(positions[i])), float(row[i])) for i in order]

    def normalized(self) -> np.ndarray:
        """``[targets, positions]`` scores divided by each row's largest absolute value."""
        scale = np.abs(self.scores).max(axis=1, keepdims=True)
        return np.divide(self.scores, scale, out=np.zeros_like(self.scores), where=scale > 0)

    # -- showing ---------------------------------------------------------------------------------
    def show(self, **kwargs: Any) -> AttributionView:
        """An ``AttributionView`` widget of this attribution (keyword arguments go to the view)."""
        try:
            from mmviz.widgets import AttributionView
        except ImportError as exc:
            raise ImportError(
                "Attribution.show() needs anywidget and ipywidgets, which mmviz depends on: reinstall them "
                "(pip install anywidget ipywidgets); the attribution itself is plain numpy: see .scores, "
                ".pixel_maps and .tokens"
            ) from exc
        return AttributionView(self, **kwargs)

    def __repr__(self) -> str:
        n_t, n_p = self.scores.shape
        parts = [f"Attribution({self.method}, {n_t} target(s) × {n_p} positions"]
        if self.target:
            parts.append(f"target={self.target!r}")
        if self.pixel_maps:
            h, w = self.pixel_maps[0].shape[1:]
            parts.append(f"{len(self.pixel_maps)} pixel map(s) {h}×{w}")
        if self.delta is not None:
            parts.append(f"|delta|max={float(np.abs(self.delta).max()):.3g}")
        return ", ".join(parts) + ")"

    # -- files -----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the attribution to a ``.mmviz`` file (read it back with ``mmviz.load``)."""
        io.save(self, path, "attribution")

    def to_payload(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Metadata and arrays for ``mmviz.data.io.save``."""
        table_meta, arrays = self.tokens.to_payload("tokens")
        arrays["scores"] = self.scores
        for i, p in enumerate(self.pixel_maps):
            arrays[f"pixels{i}"] = p
        if self.delta is not None:
            arrays["delta"] = self.delta
        meta = {
            "tokens": table_meta,
            "method": self.method,
            "targets": list(self.targets),
            "target": self.target,
            "pixel_maps": len(self.pixel_maps),
            "info": self.info,
        }
        return meta, arrays

    @classmethod
    def from_payload(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Attribution:
        """Inverse of ``to_payload``."""
        return cls(
            scores=arrays["scores"],
            tokens=TokenTable.from_payload(meta["tokens"], arrays),
            method=str(meta["method"]),
            targets=tuple(meta["targets"]),
            target=str(meta.get("target", "")),
            pixel_maps=tuple(arrays[f"pixels{i}"] for i in range(int(meta["pixel_maps"]))),
            delta=arrays.get("delta"),
            info=dict(meta.get("info") or {}),
        )


io.register_type("attribution", Attribution.from_payload)
