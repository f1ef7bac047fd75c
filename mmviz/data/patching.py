"""Activation patching results: how much of a clean answer comes back when one activation is restored.

A ``PatchingTrace`` is what ``mmviz.patch`` returns: numpy arrays only, so it saves, loads, shows and
exports without torch. Its effects are laid out ``[sites, layers, columns]``: a site is a kind of
activation (``"residual"``, ``"attention"``, ``"mlp"``, or one head ``"head.3"`` of the attention
output), a layer is a block of the model, and a column is one position of its ``TokenTable`` or a group of
positions restored together (an image region).

Effects are normalised so that 0 is the corrupted run's metric and 1 the clean run's:
``effect = (patched − corrupt) / (clean − corrupt)``.
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
    from mmviz.widgets.patching_view import PatchingView

__all__ = ["PatchingTrace", "normalise_effects"]


def normalise_effects(patched: np.ndarray, clean: float, corrupt: float) -> np.ndarray:
    """Raw metric values of patched runs → effects, 0 at the corrupted value and 1 at the clean one.

    Args:
        patched: metric of each patched run, any shape.
        clean: the clean run's metric.
        corrupt: the corrupted run's metric.

    Returns:
        float32 effects shaped like ``patched``; all 0 when clean and corrupt agree (to 1e-6 relative), since
        nothing then separates the two runs.
    """
    gap = clean - corrupt
    if abs(gap) <= 1e-6 * max(1.0, abs(clean), abs(corrupt)):
        return np.zeros(np.shape(patched), dtype=np.float32)
    return ((np.asarray(patched, dtype=np.float64) - corrupt) / gap).astype(np.float32)


@dataclass(eq=False)
class PatchingTrace(Shown):
    """Effects of restoring clean activations into a corrupted run, per site, layer and position.

    Attributes:
        effects: ``[sites, layers, columns]`` float32 normalised effect (0 = corrupted, 1 = clean).
        patched: ``[sites, layers, columns]`` float64 raw metric of each patched run (for
            ``method="attribution"``, its first-order estimate).
        sites: ``[sites]`` names: ``"residual"`` (the stream entering the block), ``"attention"``,
            ``"mlp"``, ``"head.<h>"``.
        layers: ``[layers]`` block index of each layer row.
        groups: one int array of ``tokens`` positions per column: the positions restored together.
        tokens: the positions of the patched sequence (text tokens, image tokens with ``(image, row, col)``).
        clean_metric: the metric of the clean run.
        corrupt_metric: the metric of the corrupted run.
        metric: description of the metric (``"log p(' red')"``, ``"logit(' red') − logit(' blue')"``).
        method: ``"exact"`` or ``"attribution"``.
        corruption: description of the corruption (``"input"``, ``"noise ×3 std on 64 positions"``, ...).
        info: JSON-able facts (model class, batch size, noise scale, ...).
    """

    effects: np.ndarray
    patched: np.ndarray
    sites: tuple[str, ...]
    layers: np.ndarray
    groups: tuple[np.ndarray, ...]
    tokens: TokenTable
    clean_metric: float
    corrupt_metric: float
    metric: str = ""
    method: str = "exact"
    corruption: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.effects = np.asarray(self.effects, dtype=np.float32)
        self.patched = np.asarray(self.patched, dtype=np.float64)
        self.sites = tuple(str(s) for s in self.sites)
        self.layers = np.asarray(self.layers, dtype=np.int64).reshape(-1)
        self.groups = tuple(np.asarray(g, dtype=np.int64).reshape(-1) for g in self.groups)
        self.clean_metric = float(self.clean_metric)
        self.corrupt_metric = float(self.corrupt_metric)
        shape = (len(self.sites), len(self.layers), len(self.groups))
        if self.effects.shape != shape or self.patched.shape != shape:
            raise ValueError(
                f"PatchingTrace: effects and patched must be [sites, layers, columns] = {shape}, got "
                f"{self.effects.shape} and {self.patched.shape}"
            )
        n = len(self.tokens)
        for i, g in enumerate(self.groups):
            if g.size == 0 or g.min() < 0 or g.max() >= n:
                raise ValueError(f"PatchingTrace: column {i} must hold positions of the {n}-position token table")

    # -- reading ---------------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        """Display text of each column: the token's text, or its positions' span for a group."""
        out = []
        for g in self.groups:
            if g.size == 1:
                out.append(str(self.tokens.text[g[0]]))
                continue
            image = self.tokens.image_index[g]
            if (self.tokens.kind[g] == "image").all() and (image == image[0]).all():
                rows, cols = self.tokens.patch_row[g], self.tokens.patch_col[g]
                out.append(f"img{image[0]} r{rows.min()}-{rows.max()} c{cols.min()}-{cols.max()}")
            else:
                out.append("".join(self.tokens.text[g].tolist()))
        return out

    def site_index(self, site: str | int) -> int:
        """Index of a site on the first axis, from its name or index."""
        if isinstance(site, (int, np.integer)):
            if not -len(self.sites) <= int(site) < len(self.sites):
                raise IndexError(f"site {site} is out of range: this trace has {len(self.sites)} site(s)")
            return int(site) % len(self.sites)
        if site not in self.sites:
            raise KeyError(f"site {site!r} was not patched; this trace has {list(self.sites)}")
        return self.sites.index(site)

    def layer_index(self, layer: int) -> int:
        """Row of a block index on the layer axis (negative block indices count from the last row)."""
        if layer < 0:
            if -layer > len(self.layers):
                raise IndexError(f"layer {layer} is out of range: this trace has {len(self.layers)} layer(s)")
            return len(self.layers) + layer
        hit = np.flatnonzero(self.layers == layer)
        if hit.size == 0:
            raise KeyError(f"layer {layer} was not patched; this trace holds layers {self.layers.tolist()}")
        return int(hit[0])

    def position_effects(self, site: str | int = 0, layer: int = 0) -> np.ndarray:
        """One layer's effects spread over the token table's positions.

        Args:
            site: site name or index.
            layer: block index.

        Returns:
            ``[positions]`` float32: each position carries the effect of the column that restored it, ``nan``
            where no column did.
        """
        row = self.effects[self.site_index(site), self.layer_index(layer)]
        out = np.full(len(self.tokens), np.nan, dtype=np.float32)
        for value, g in zip(row, self.groups):
            out[g] = value
        return out

    def patch_map(self, site: str | int = 0, layer: int = 0, image: int = 0) -> np.ndarray:
        """One layer's effects on one image's patch grid.

        Args:
            site: site name or index.
            layer: block index.
            image: index into ``tokens.images``.

        Returns:
            ``[rows, cols]`` float32, ``nan`` where no restored position holds the patch.
        """
        grid = self.tokens.image_positions(image)
        values = self.position_effects(site, layer)
        out = np.full(grid.shape, np.nan, dtype=np.float32)
        held = grid >= 0
        out[held] = values[grid[held]]
        return out

    def top(self, k: int = 10, site: str | int | None = None) -> list[tuple[str, int, str, float]]:
        """The ``k`` (site, layer, column) cells with the largest effect.

        Args:
            k: how many.
            site: only this site (default: all).

        Returns:
            ``(site, layer, column label, effect)``, largest first.
        """
        sites = range(len(self.sites)) if site is None else [self.site_index(site)]
        cells = [(s, li, c) for s in sites for li in range(len(self.layers)) for c in range(len(self.groups))]
        values = np.asarray([self.effects[cell] for cell in cells])
        order = np.argsort(-values, kind="stable")[:k]
        labels = self.labels
        return [
            (self.sites[cells[i][0]], int(self.layers[cells[i][1]]), labels[cells[i][2]], float(values[i]))
            for i in order
        ]

    def __repr__(self) -> str:
        _, n_l, n_c = self.effects.shape
        return (
            f"PatchingTrace({self.method}, sites={list(self.sites)}, {n_l} layer(s) × {n_c} column(s), "
            f"metric={self.metric!r}, clean={self.clean_metric:.4g}, corrupt={self.corrupt_metric:.4g})"
        )

    # -- showing ---------------------------------------------------------------------------------
    def show(self, **options: Any) -> PatchingView:
        """A ``PatchingView`` of this trace (``site=``, ``layer=``, ``opacity=``, ``title=``, ``budget=``)."""
        from mmviz.widgets.patching_view import PatchingView

        return PatchingView(self, **options)

    # -- files -----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the trace to a ``.mmviz`` file (read it back with ``mmviz.load``)."""
        io.save(self, path, "patching")

    def to_payload(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Metadata and arrays for ``mmviz.data.io.save``."""
        table_meta, arrays = self.tokens.to_payload("tokens")
        sizes = np.asarray([g.size for g in self.groups], dtype=np.int64)
        arrays.update(
            effects=self.effects,
            patched=self.patched,
            layers=self.layers,
            group_sizes=sizes,
            group_members=np.concatenate(self.groups) if self.groups else np.zeros(0, dtype=np.int64),
        )
        meta = {
            "tokens": table_meta,
            "sites": list(self.sites),
            "clean_metric": self.clean_metric,
            "corrupt_metric": self.corrupt_metric,
            "metric": self.metric,
            "method": self.method,
            "corruption": self.corruption,
            "info": self.info,
        }
        return meta, arrays

    @classmethod
    def from_payload(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> PatchingTrace:
        """Inverse of ``to_payload``."""
        sizes = arrays["group_sizes"].astype(np.int64)
        members = arrays["group_members"].astype(np.int64)
        if int(sizes.sum()) != members.size:
            raise ValueError("group sizes do not add up to the stored members")
        return cls(
            effects=arrays["effects"],
            patched=arrays["patched"],
            sites=tuple(meta["sites"]),
            layers=arrays["layers"],
            groups=tuple(np.split(members, np.cumsum(sizes)[:-1])) if sizes.size else (),
            tokens=TokenTable.from_payload(meta["tokens"], arrays),
            clean_metric=float(meta["clean_metric"]),
            corrupt_metric=float(meta["corrupt_metric"]),
            metric=str(meta.get("metric", "")),
            method=str(meta.get("method", "exact")),
            corruption=str(meta.get("corruption", "")),
            info=dict(meta.get("info") or {}),
        )


io.register_type("patching", PatchingTrace.from_payload)
