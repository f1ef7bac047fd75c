"""Naming the teaching SAE's features: mean activation per colour and per shape over scenes with exact masks.

The teaching sparse autoencoder (``mmviz.teaching.load_sae()``) reads the teaching VLM's vision tower after
its second block (`SAE_SITE`), at the 64 image patches. Because every scene's objects carry exact masks, each
patch has a known owner (an object, or the background), so every feature's mean activation on red patches,
on blue patches, on triangles, on the background... is a plain average, and a feature that fires on one
colour and on no other can be *named*::

    import mmviz.teaching as teaching
    from mmviz.teaching.naming import feature_table

    vlm, _ = teaching.load_vlm()
    sae = teaching.load_sae()
    table = feature_table(vlm, sae, teaching.make_scenes(200, seed=50_000))
    table.named("colour")          # [(feature, 'red', selectivity), ...]

Selectivity of a feature for its best class is ``1 - second / best`` over the mean activations of the four
classes and the background (1: it fires on that class only; 0: as much on another one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mmviz.teaching._common import IMAGE_SIZE, PATCH_SIZE
from mmviz.teaching.shapes import COLOURS, SHAPES, Scene

if TYPE_CHECKING:
    import torch

    from mmviz.features import SAE

__all__ = [
    "GRID",
    "SAE_SITE",
    "FeatureTable",
    "feature_table",
    "object_positions",
    "patch_owners",
    "site_activations",
]

SAE_SITE = "model.vision_tower.encoder.layers.1"
"""Where the teaching SAE reads: the VLM's vision tower after its second block (position 0 is CLS, 1-64 the
patches), the hidden state LLaVA hands to the projector (``vision_feature_layer=-2`` of a 3-block tower). Both
colour and shape are linearly readable there at the patches an object covers (least-squares probes: 100% and
99.4% on held-out scenes); after the first block colour is (100%), shape is not (59%)."""

GRID = IMAGE_SIZE // PATCH_SIZE
"""Patches per side (8): the site's image positions 1 … 64 are these patches, row-major."""


def patch_owners(scene: Scene, cover: float = 0.5) -> np.ndarray:
    """Which object each of the 64 patches shows, from the scene's exact masks.

    Args:
        scene: a shapes-world scene (32 px).
        cover: least fraction of a patch's pixels an object must cover to own it; ``cover=0`` gives every
            patch an object touches (at least one pixel) to that object.

    Returns:
        ``[64]`` int, row-major patches: the object's index in ``scene.objects``; -1 for background (no
        object pixel at all); -2 for a patch an object touches without owning it.
    """
    owners = np.full(GRID * GRID, -1, dtype=np.int64)
    for index, obj in enumerate(scene.objects):
        covered = obj.mask.reshape(GRID, PATCH_SIZE, GRID, PATCH_SIZE).mean(axis=(1, 3)).reshape(-1)
        owners[(covered > 0) & (owners == -1)] = -2
        owners[(covered >= cover) & (covered > 0)] = index
    return owners


def object_positions(scene: Scene, index: int) -> list[int]:
    """Positions at `SAE_SITE` of the patches object ``index`` touches (at least one pixel; CLS is position 0).

    Args:
        scene: the scene.
        index: the object's index in ``scene.objects``.

    Returns:
        Sorted positions in 1 … 64, for ``mmviz.steer(..., positions=...)``.
    """
    owners = patch_owners(scene, cover=0.0)
    return [1 + int(p) for p in np.flatnonzero(owners == index)]


def site_activations(model: Any, scenes: Sequence[Scene], batch_size: int = 256, site: str = SAE_SITE) -> torch.Tensor:
    """The residual stream at a vision-tower site at the image patches, for each scene (the tower alone runs).

    Args:
        model: the teaching VLM (``mmviz.teaching.load_vlm()[0]``).
        scenes: the scenes.
        batch_size: scenes per forward call.
        site: a site of the vision tower (``mmviz.steering.sites(model)``); `SAE_SITE` by default.

    Returns:
        ``[scenes, 64, d]`` float32 tensor (patches row-major; CLS left out).
    """
    import torch

    from mmviz._hf.residual import evaluating, record_residual
    from mmviz._hf.sites import find_site
    from mmviz.teaching._common import pixels

    where = find_site(model, site)
    parts = []
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start : start + batch_size]
        with evaluating(model), record_residual(where.blocks, [where.state]) as seen:
            model.model.vision_tower(pixel_values=pixels([s.image for s in chunk]))
        if not seen[where.state]:
            raise ValueError(f"site {where.name!r} is not in the vision tower: pick one of its blocks")
        parts.append(seen[where.state][0][:, 1:])
    return torch.cat(parts).float()


@dataclass(frozen=True)
class FeatureTable:
    """Mean activation of every feature per colour, per shape and on the background.

    Attributes:
        colour: ``[4, d_sae]`` mean over the patches of objects of each colour (rows in `COLOURS` order).
        shape: ``[4, d_sae]`` the same per shape (rows in `SHAPES` order).
        background: ``[d_sae]`` mean over background patches.
        patches: ``{"colour": [4], "shape": [4], "background": []}`` how many patches each mean averages.
    """

    colour: np.ndarray
    shape: np.ndarray
    background: np.ndarray
    patches: dict[str, np.ndarray]

    def means(self, kind: str) -> tuple[list[str], np.ndarray]:
        """Class names and the ``[5, d_sae]`` means of ``kind`` (``"colour"`` or ``"shape"``), background last."""
        if kind not in ("colour", "shape"):
            raise ValueError(f"kind must be 'colour' or 'shape', got {kind!r}")
        names = list(COLOURS) if kind == "colour" else list(SHAPES)
        rows = self.colour if kind == "colour" else self.shape
        return [*names, "background"], np.vstack([rows, self.background[None]])

    def selectivity(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """Each feature's best class of ``kind`` and its selectivity ``1 − second / best``.

        Returns:
            ``(best, selectivity)``: ``[d_sae]`` class index (4 = background) and ``[d_sae]`` in ``[0, 1]``
            (0 for a feature that never fires).
        """
        _, means = self.means(kind)
        order = np.sort(means, axis=0)
        best, second = order[-1], order[-2]
        with np.errstate(divide="ignore", invalid="ignore"):
            sel = np.where(best > 0, 1.0 - second / np.where(best > 0, best, 1.0), 0.0)
        return np.argmax(means, axis=0), sel

    def named(self, kind: str, threshold: float = 0.8, min_mean: float = 1.0) -> list[tuple[int, str, float]]:
        """Features whose selectivity for one class of ``kind`` (not the background) reaches ``threshold``.

        Args:
            kind: ``"colour"`` or ``"shape"``.
            threshold: least selectivity.
            min_mean: least mean activation on that class: a feature that hardly ever fires can be perfectly
                selective by chance, and names nothing a student would see.

        Returns:
            ``(feature, class name, selectivity)`` sorted by class, then by selectivity (highest first).
        """
        names, means = self.means(kind)
        best, sel = self.selectivity(kind)
        found = [
            (int(f), names[int(best[f])], float(sel[f]))
            for f in np.flatnonzero((sel >= threshold) & (means.max(axis=0) >= min_mean))
        ]
        found = [row for row in found if row[1] != "background"]
        return sorted(found, key=lambda row: (names.index(row[1]), -row[2]))

    def best_for(self, kind: str, name: str) -> int:
        """The feature that stands for class ``name``.

        It is the feature whose mean activation on ``name`` exceeds its mean on every other class (and on the
        background) by the most.

        Raises:
            ValueError: ``name`` is not a class of ``kind``.
        """
        names, means = self.means(kind)
        if name not in names[:-1]:
            raise ValueError(f"{name!r} is not a {kind}; use one of {names[:-1]}")
        row = names.index(name)
        margin = means[row] - np.delete(means, row, axis=0).max(axis=0)
        return int(np.argmax(margin))


def feature_table(
    model: Any, sae: SAE, scenes: Sequence[Scene], cover: float = 0.5, site: str = SAE_SITE
) -> FeatureTable:
    """Encodes the scenes' patches at a site and averages each feature per colour, per shape, on background.

    Args:
        model: the teaching VLM.
        sae: an SAE reading ``site`` (``mmviz.teaching.load_sae()`` reads `SAE_SITE`).
        scenes: held-out scenes (the shipped SAE was trained on seeds below 50 000).
        cover: least fraction of a patch an object must cover for the patch to count as that object's
            (patches along edges, partly covered, count for nothing; background patches show no object pixel).
        site: the vision-tower site the SAE reads.

    Returns:
        A `FeatureTable`.
    """
    acts = sae.encode(site_activations(model, scenes, site=site)).numpy()  # [scenes, 64, d_sae]
    owners = np.stack([patch_owners(s, cover) for s in scenes])  # [scenes, 64]
    colour_of = np.full(owners.shape, -1)
    shape_of = np.full(owners.shape, -1)
    for i, scene in enumerate(scenes):
        for j, obj in enumerate(scene.objects):
            colour_of[i, owners[i] == j] = list(COLOURS).index(obj.colour)
            shape_of[i, owners[i] == j] = SHAPES.index(obj.shape)
    flat = acts.reshape(-1, acts.shape[-1])

    def mean_over(mask: np.ndarray) -> np.ndarray:
        return flat[mask.reshape(-1)].mean(axis=0) if mask.any() else np.zeros(flat.shape[1], np.float32)

    return FeatureTable(
        colour=np.stack([mean_over(colour_of == c) for c in range(len(COLOURS))]),
        shape=np.stack([mean_over(shape_of == s) for s in range(len(SHAPES))]),
        background=mean_over(owners == -1),
        patches={
            "colour": np.array([(colour_of == c).sum() for c in range(len(COLOURS))]),
            "shape": np.array([(shape_of == s).sum() for s in range(len(SHAPES))]),
            "background": np.array((owners == -1).sum()),
        },
    )
