"""Concept maps of a diffusion trace (ConceptAttention, Helbling et al. 2025), numpy only.

``with mmviz.capture(pipe, concepts=["cat", "sky"])`` records, beside the prompt words' maps, one map per
concept word at every step of every joint-attention layer: the dot product between each image token's
attention output and each concept token's attention output, softmaxed over the concepts (so that at
every image position the concepts' values sum to one). ``ConceptMapsMixin`` gives
``CrossAttentionTrace`` the accessors of these maps; the trace holds them as one array per layer
(``None`` for a layer without concept maps, such as Flux's single-stream blocks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mmviz.data.cross_attention import CrossAttentionLayer, LayerSelection, StepSelection

__all__ = ["ConceptMapsMixin", "check_concept_maps"]


def check_concept_maps(
    concepts: Sequence[str],
    concept_maps: Sequence[np.ndarray | None] | None,
    layers: Sequence[CrossAttentionLayer],
    batch: int,
    steps: int,
) -> list[np.ndarray | None]:
    """Validates concept maps against the trace's layers; returns one entry per layer.

    Args:
        concepts: the concept words (empty: the trace has no concept maps).
        concept_maps: one ``[batch, steps, concepts, h, w]`` array or ``None`` per layer.
        layers: the trace's layers.
        batch: batch items of the trace.
        steps: steps of the trace.
    """
    if not concepts:
        if concept_maps is not None and any(m is not None for m in concept_maps):
            raise ValueError("concept maps were given without their concepts; pass concepts=[...] too")
        return [None] * len(layers)
    if any(not isinstance(c, str) or not c.strip() for c in concepts):
        raise ValueError(f"concepts must be non-empty strings, got {list(concepts)!r}")
    if concept_maps is None or len(concept_maps) != len(layers):
        raise ValueError(f"give one concept map array (or None) per layer ({len(layers)} layers)")
    out: list[np.ndarray | None] = []
    for m, layer in zip(concept_maps, layers):
        if m is None:
            out.append(None)
            continue
        arr = np.asarray(m)
        expected = (batch, steps, len(concepts), *layer.resolution)
        if arr.shape != expected:
            raise ValueError(
                f"layer {layer.name!r}: concept maps of shape {arr.shape}, expected [batch, steps, concepts, h, w] "
                f"= {expected}"
            )
        out.append(arr)
    if all(m is None for m in out):
        raise ValueError("concepts were given but no layer holds concept maps")
    return out


class ConceptMapsMixin:
    """Accessors of the concept maps (mixed into ``CrossAttentionTrace``)."""

    concepts: tuple[str, ...]
    """The concept words, in the order of the concept axis (empty without concept maps)."""
    layers: tuple[CrossAttentionLayer, ...]
    _concept_maps: list[np.ndarray | None]

    if TYPE_CHECKING:

        @property
        def num_steps(self) -> int: ...

        @property
        def image_size(self) -> tuple[int, int]: ...

        def layer_index(
            self, layers: LayerSelection = None, resolutions: Sequence[tuple[int, int]] | None = None
        ) -> list[int]: ...

        def _check_batch(self, batch_index: int) -> None: ...

    @property
    def concept_layers(self) -> list[int]:
        """Indices of the layers that hold concept maps (joint-attention layers)."""
        return [i for i, m in enumerate(self._concept_maps) if m is not None]

    def concept_index(self, concept: str | int) -> int:
        """Index of a concept (its word, case-insensitive, or its index) on the concept axis."""
        if not self.concepts:
            raise KeyError(
                "this trace has no concept maps; capture with mmviz.capture(pipe, concepts=[...]) on an SD3, Flux "
                "or PixArt pipeline"
            )
        if isinstance(concept, (int, np.integer)):
            if not -len(self.concepts) <= int(concept) < len(self.concepts):
                raise IndexError(f"concept index {concept} is out of range: the trace holds {len(self.concepts)}")
            return int(concept) % len(self.concepts)
        key = str(concept).strip().lower()
        for i, name in enumerate(self.concepts):
            if name.strip().lower() == key:
                return i
        raise KeyError(f"{concept!r} is not a captured concept; concepts: {list(self.concepts)}")

    def concept_maps(self, layer: int | str, batch_index: int = 0) -> np.ndarray:
        """Stored concept maps of one layer.

        Args:
            layer: layer index or name (a layer with concept maps, see ``concept_layers``).
            batch_index: batch item.

        Returns:
            ``[steps, concepts, h, w]`` float32; at each step and image position the concepts sum to one.
        """
        self._check_batch(batch_index)
        slots = self.layer_index(layer)
        if len(slots) != 1:
            raise KeyError(f"{layer!r} matches {len(slots)} layers; name one of {[x.name for x in self.layers]}")
        m = self._concept_maps[slots[0]]
        if m is None:
            names = [self.layers[i].name for i in self.concept_layers]
            raise KeyError(f"layer {self.layers[slots[0]].name!r} holds no concept maps; layers with them: {names}")
        return m[batch_index].astype(np.float32)

    def concept_token_maps(
        self,
        timesteps: StepSelection = None,
        layers: LayerSelection = None,
        batch_index: int = 0,
        size: tuple[int, int] | None = None,
        per_step: bool = False,
    ) -> np.ndarray:
        """Every concept's map at image size: the mean over the chosen steps and layers.

        Args:
            timesteps: step indices (``0`` is the first, noisiest step), a slice, or ``None`` for all.
            layers: layer selection (see ``layer_index``); layers without concept maps are skipped.
            batch_index: batch item.
            size: ``(H, W)`` output size (default: ``image_size``).
            per_step: keep the steps apart instead of averaging them.

        Returns:
            ``[concepts, H, W]`` float32 (``[steps, concepts, H, W]`` with ``per_step``): per layer, the
            maps averaged over the chosen steps and upsampled bicubically, then averaged over the layers
            (ConceptAttention averages over time and layers); values stay near ``[0, 1]``.
        """
        from mmviz.data.cross_attention import _steps, resize_bicubic

        self.concept_index(0)  # a trace without concepts says so
        steps = _steps(timesteps, self.num_steps)
        slots = [s for s in self.layer_index(layers) if self._concept_maps[s] is not None]
        if not slots:
            names = [self.layers[i].name for i in self.concept_layers]
            raise KeyError(f"no selected layer holds concept maps; layers with them: {names}")
        out_size = self.image_size if size is None else (int(size[0]), int(size[1]))
        shape = (len(steps), len(self.concepts), *out_size) if per_step else (len(self.concepts), *out_size)
        total = np.zeros(shape, dtype=np.float32)
        for slot in slots:
            m = self.concept_maps(slot, batch_index)[steps]  # [steps, concepts, h, w]
            total += resize_bicubic(m if per_step else m.mean(axis=0), out_size)
        return total / len(slots)

    def concept_heatmap(
        self,
        concept: str | int,
        timesteps: StepSelection = None,
        layers: LayerSelection = None,
        batch_index: int = 0,
        size: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """One concept's map at image size (see ``concept_token_maps``).

        Args:
            concept: a captured concept (case-insensitive) or its index.
            timesteps: steps to average (``None``: all).
            layers: layers to average (``None``: every layer with concept maps).
            batch_index: batch item.
            size: ``(H, W)`` (default: the generated image's size).

        Returns:
            ``[H, W]`` float32.
        """
        index = self.concept_index(concept)
        return self.concept_token_maps(timesteps, layers, batch_index, size)[index]

    def _concept_payload(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Metadata and arrays of the concept maps for ``to_payload``."""
        arrays = {f"concept{i}": m for i, m in enumerate(self._concept_maps) if m is not None}
        return {"concepts": list(self.concepts)}, arrays
