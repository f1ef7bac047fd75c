"""Diffusion cross-attention: per-timestep, per-layer word maps and the DAAM heat map method.

A ``CrossAttentionTrace`` holds what ``with mmviz.capture(pipe) as cap:`` recorded while a diffusers
pipeline denoised: for every cross-attention layer, the attention that the image positions paid to each
prompt token at every timestep, already reduced while the pipeline ran (mean over heads unless heads were
kept, conditional branch of classifier-free guidance only). Each layer keeps its own resolution, so the
memory is O(steps × layers × tokens × h × w).

``CrossAttentionTrace.heatmap`` is DAAM (Tang et al., ACL 2023, "What the DAAM"), re-implemented
in numpy: each layer's map, summed over the chosen timesteps, is upsampled bicubically to the image
size, clamped at zero and summed over the chosen layers; a word's map is the mean of its subword maps.

With ``capture(pipe, concepts=[...])`` the trace also holds concept maps (ConceptAttention) beside the
word maps, same axes; their accessors are in ``mmviz.data._concept_maps``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mmviz.data import io
from mmviz.data._concept_maps import ConceptMapsMixin, check_concept_maps
from mmviz.data._shown import Shown
from mmviz.data.tokens import TokenTable

if TYPE_CHECKING:
    from matplotlib.figure import Figure, SubFigure

    from mmviz.widgets.cross_attention_view import CrossAttentionView

__all__ = ["CrossAttentionLayer", "CrossAttentionTrace", "resize_bicubic"]

LayerSelection = int | str | Sequence[int | str] | None
StepSelection = int | slice | Sequence[int] | None


@dataclass(frozen=True)
class CrossAttentionLayer:
    """One cross-attention layer of the denoiser.

    Attributes:
        name: module name in the denoiser, e.g. ``"up_blocks.1.attentions.0.transformer_blocks.0.attn2"``.
        resolution: ``(h, w)`` of its maps (latent positions, or patches for transformers).
        heads: number of attention heads of the layer.
    """

    name: str
    resolution: tuple[int, int]
    heads: int


def _cubic_weights(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` bicubic interpolation matrix, as ``torch.nn.functional.interpolate`` computes it.

    Keys' cubic convolution with ``A = -0.75``, ``align_corners=False``, border pixels replicated.
    """
    a = -0.75
    scale = n_in / n_out
    src = (np.arange(n_out) + 0.5) * scale - 0.5
    base = np.floor(src).astype(np.int64)
    t = src - base
    weights = np.zeros((n_out, n_in), dtype=np.float64)
    for offset in (-1, 0, 1, 2):
        x = np.abs(t - offset)
        w = np.where(
            x <= 1,
            ((a + 2) * x - (a + 3)) * x * x + 1,
            np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0),
        )
        idx = np.clip(base + offset, 0, n_in - 1)
        np.add.at(weights, (np.arange(n_out), idx), w)
    return weights


def resize_bicubic(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of the last two axes (matches torch's ``interpolate(mode="bicubic")``).

    Args:
        maps: ``[..., h, w]`` array.
        size: ``(H, W)`` output size.

    Returns:
        ``[..., H, W]`` float32.
    """
    h, w = maps.shape[-2:]
    height, width = int(size[0]), int(size[1])
    m = np.asarray(maps, dtype=np.float32)
    if (h, w) == (height, width):
        return m.copy()
    wy = _cubic_weights(h, height).astype(np.float32)
    wx = _cubic_weights(w, width).astype(np.float32)
    return np.einsum("Hh,...hw,Ww->...HW", wy, m, wx, optimize=True).astype(np.float32)


def _steps(selection: StepSelection, n: int) -> list[int]:
    if selection is None:
        return list(range(n))
    if isinstance(selection, slice):
        return list(range(n))[selection]
    items = [selection] if isinstance(selection, (int, np.integer)) else list(selection)
    out = []
    for item in items:
        i = int(item)
        if not -n <= i < n:
            raise IndexError(f"timestep index {i} is out of range: the trace holds {n} denoising steps")
        out.append(i % n)
    return out


class CrossAttentionTrace(ConceptMapsMixin, Shown):
    """Cross-attention maps of one diffusion pipeline call, as numpy arrays.

    Args:
        maps: one array per layer, ``[batch, steps, tokens, h, w]`` (or ``[batch, steps, heads, tokens, h,
            w]`` when heads were kept), float16 or float32: the attention probabilities that each image
            position paid to each stored prompt token, mean over heads unless heads were kept.
        layers: the layers, in the order of ``maps``.
        tokens: one ``TokenTable`` per batch item, one row per stored token (the ``tokens`` axis).
        timesteps: ``[steps]`` the denoiser's timestep value at each step.
        images: ``uint8 [batch, H, W, 3]`` generated images, or ``None`` when none was decoded.
        info: JSON-able facts (pipeline class, options).
        previews: ``uint8 [batch, steps, h, w, 3]`` the denoiser's prediction of the final image at each
            step (``capture(..., previews=True)``), or ``None``.
        complete: ``False`` when the pipeline call raised or was interrupted: the trace holds the steps
            that finished before (``images`` is then ``None``).
        concepts: concept words captured with ``capture(pipe, concepts=[...])`` (empty: none).
        concept_maps: one ``[batch, steps, concepts, h, w]`` array per layer, ``None`` for a layer without
            concept maps: at each image position a softmax over the concepts of the dot products between the
            image token's and each concept's attention outputs (see ``mmviz.data._concept_maps``).
    """

    def __init__(
        self,
        maps: Sequence[np.ndarray],
        layers: Sequence[CrossAttentionLayer],
        tokens: Sequence[TokenTable],
        timesteps: np.ndarray | Sequence[float],
        images: np.ndarray | None = None,
        info: dict[str, Any] | None = None,
        previews: np.ndarray | None = None,
        complete: bool = True,
        concepts: Sequence[str] = (),
        concept_maps: Sequence[np.ndarray | None] | None = None,
    ) -> None:
        self.complete = bool(complete)
        self._maps = [np.asarray(m) for m in maps]
        self.layers = tuple(layers)
        self.tables = tuple(tokens)
        self.timesteps = np.asarray(timesteps, dtype=np.float64).reshape(-1)
        self.images = None if images is None else np.asarray(images)
        self.info = dict(info or {})
        self.previews = None if previews is None else np.asarray(previews)
        if not self.layers or len(self._maps) != len(self.layers):
            raise ValueError(f"a CrossAttentionTrace needs one map array per layer ({len(self.layers)} layers)")
        ndim = self._maps[0].ndim
        if ndim not in (5, 6):
            raise ValueError("maps must be [batch, steps, tokens, h, w] or [batch, steps, heads, tokens, h, w]")
        self.has_heads = ndim == 6
        batch, steps = self._maps[0].shape[:2]
        n_tokens = self._maps[0].shape[-3]
        for m, layer in zip(self._maps, self.layers):
            if m.ndim != ndim or m.shape[:2] != (batch, steps) or m.shape[-3] != n_tokens:
                raise ValueError(f"layer {layer.name!r}: maps of shape {m.shape} do not match the other layers")
            if tuple(m.shape[-2:]) != tuple(layer.resolution):
                raise ValueError(
                    f"layer {layer.name!r}: maps are {m.shape[-2:]} but the resolution is {layer.resolution}"
                )
            if self.has_heads and m.shape[2] != layer.heads:
                raise ValueError(f"layer {layer.name!r}: {m.shape[2]} heads stored but the layer has {layer.heads}")
        if self.timesteps.shape != (steps,):
            raise ValueError(f"{steps} steps stored but {self.timesteps.shape[0]} timesteps given")
        if len(self.tables) != batch or any(len(t) != n_tokens for t in self.tables):
            raise ValueError(f"give one token table of {n_tokens} positions per batch item ({batch})")
        if self.images is not None and (
            self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[0] != batch
        ):
            raise ValueError(
                f"images must be uint8 [batch={batch}, H, W, 3], got {self.images.dtype} {self.images.shape}"
            )
        if self.previews is not None and (
            self.previews.dtype != np.uint8 or self.previews.ndim != 5 or self.previews.shape[:2] != (batch, steps)
        ):
            raise ValueError(
                f"previews must be uint8 [batch={batch}, steps={steps}, h, w, 3], got {self.previews.shape}"
            )
        self.concepts = tuple(concepts)
        self._concept_maps = check_concept_maps(self.concepts, concept_maps, self.layers, batch, steps)

    # -- shape and lookup ----------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        """Number of generated images (batch items)."""
        return int(self._maps[0].shape[0])

    @property
    def num_steps(self) -> int:
        """Number of recorded denoising steps."""
        return int(self.timesteps.shape[0])

    @property
    def num_tokens(self) -> int:
        """Length of the stored token axis."""
        return int(self._maps[0].shape[-3])

    @property
    def layer_names(self) -> list[str]:
        """Names of the layers, in storage order."""
        return [layer.name for layer in self.layers]

    @property
    def resolutions(self) -> list[tuple[int, int]]:
        """The distinct layer resolutions, largest first."""
        return sorted({layer.resolution for layer in self.layers}, key=lambda r: (-r[0] * r[1], r))

    @property
    def nbytes(self) -> int:
        """Bytes held by the maps (word and concept maps)."""
        return int(sum(m.nbytes for m in [*self._maps, *self._concept_maps] if m is not None))

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the generated image (else of the finest map)."""
        if self.images is not None:
            return int(self.images.shape[1]), int(self.images.shape[2])
        size = self.info.get("image_size")
        if size:
            return int(size[0]), int(size[1])
        return self.resolutions[0]

    def tokens(self, batch_index: int = 0) -> TokenTable:
        """The ``TokenTable`` of the stored tokens of one batch item."""
        self._check_batch(batch_index)
        return self.tables[batch_index]

    def image(self, batch_index: int = 0) -> np.ndarray | None:
        """The generated ``uint8 [H, W, 3]`` image of one batch item (``None`` if none was decoded)."""
        self._check_batch(batch_index)
        return None if self.images is None else self.images[batch_index]

    def words(self, batch_index: int = 0, special: bool = False, padding: bool = False) -> list[tuple[str, np.ndarray]]:
        """The prompt's words with their token positions (subwords merged).

        Args:
            batch_index: batch item.
            special: include special tokens (BOS, EOS) as words of their own.
            padding: include padding positions.

        Returns:
            ``(text, positions)`` pairs in prompt order; ``positions`` index the stored token axis.
        """
        table = self.tokens(batch_index)
        out = []
        for text, positions in table.words():
            kinds = set(table.kind[positions].tolist())
            if ("pad" in kinds and not padding) or ("special" in kinds and not special):
                continue
            out.append((text.strip() or text, positions))
        return out

    def layer_index(
        self, layers: LayerSelection = None, resolutions: Sequence[tuple[int, int]] | None = None
    ) -> list[int]:
        """Storage indices of the selected layers.

        Args:
            layers: ``None`` (all), an index, a name, a part of a name (``"up_blocks"``, ``"mid"``), or a list
                of these.
            resolutions: keep only layers of these ``(h, w)`` resolutions.

        Returns:
            Sorted layer indices.
        """
        if layers is None:
            chosen = set(range(len(self.layers)))
        else:
            items = [layers] if isinstance(layers, (int, np.integer, str)) else list(layers)
            chosen = set()
            for item in items:
                if isinstance(item, str):
                    exact = [i for i, lay in enumerate(self.layers) if lay.name == item]
                    hits = exact or [i for i, lay in enumerate(self.layers) if item in lay.name]
                    if not hits:
                        raise KeyError(f"no layer matches {item!r}; layers: {self.layer_names}")
                    chosen.update(hits)
                else:
                    i = int(item)
                    if not -len(self.layers) <= i < len(self.layers):
                        raise IndexError(f"layer index {i} is out of range: the trace holds {len(self.layers)} layers")
                    chosen.add(i % len(self.layers))
        if resolutions is not None:
            wanted = {(int(h), int(w)) for h, w in resolutions}
            chosen = {i for i in chosen if self.layers[i].resolution in wanted}
        if not chosen:
            raise KeyError(f"no layer left after the selection; resolutions: {self.resolutions}")
        return sorted(chosen)

    def _word(self, word: str | int, batch_index: int, special: bool) -> tuple[str, np.ndarray]:
        words = self.words(batch_index, special=special)
        if isinstance(word, (int, np.integer)):
            if not -len(words) <= int(word) < len(words):
                raise IndexError(f"word index {word} is out of range: the prompt has {len(words)} words")
            return words[int(word)]
        key = str(word).strip().lower()
        for text, positions in words:
            if text.strip().lower() == key:
                return text, positions
        raise KeyError(f"{word!r} is not a word of the prompt; words: {[w for w, _ in words]}")

    # -- maps --------------------------------------------------------------------------------------
    def maps(self, layer: int | str, batch_index: int = 0, head: int | None = None) -> np.ndarray:
        """Stored maps of one layer.

        Args:
            layer: layer index or name.
            batch_index: batch item.
            head: a head index (needs ``heads=True`` at capture); ``None``: mean over heads.

        Returns:
            ``[steps, tokens, h, w]`` float32.
        """
        self._check_batch(batch_index)
        slots = self.layer_index(layer)
        if len(slots) != 1:
            raise KeyError(f"{layer!r} matches {len(slots)} layers; name one of {self.layer_names}")
        slot = slots[0]
        m = self._maps[slot][batch_index]
        if self.has_heads:
            if head is None:
                return m.astype(np.float32).mean(axis=1)
            if not 0 <= head < m.shape[1]:
                raise IndexError(f"head {head} is out of range: layer {self.layers[slot].name!r} has {m.shape[1]}")
            return m[:, head].astype(np.float32)
        if head is not None:
            raise ValueError("this trace holds the mean over heads; capture with heads=True to select a head")
        return m.astype(np.float32)

    def token_maps(
        self,
        timesteps: StepSelection = None,
        layers: LayerSelection = None,
        batch_index: int = 0,
        size: tuple[int, int] | None = None,
        resolutions: Sequence[tuple[int, int]] | None = None,
        head: int | None = None,
        per_step: bool = False,
    ) -> np.ndarray:
        """DAAM maps of every stored token.

        Args:
            timesteps: step indices (``0`` is the first, noisiest step), a slice, or ``None`` for all.
            layers: layer selection (see ``layer_index``).
            batch_index: batch item.
            size: ``(H, W)`` output size (default: ``image_size``).
            resolutions: keep only layers of these resolutions.
            head: one head (needs ``heads=True`` at capture); ``None``: mean over heads.
            per_step: keep the steps apart instead of summing them.

        Returns:
            ``[tokens, H, W]`` float32 (``[steps, tokens, H, W]`` with ``per_step``): per layer, the maps
            summed over the chosen steps, upsampled bicubically, clamped at zero, then summed over layers.
        """
        steps = _steps(timesteps, self.num_steps)
        out_size = self.image_size if size is None else (int(size[0]), int(size[1]))
        shape = (len(steps), self.num_tokens, *out_size) if per_step else (self.num_tokens, *out_size)
        total = np.zeros(shape, dtype=np.float32)
        for slot in self.layer_index(layers, resolutions):
            m = self.maps(slot, batch_index, head)[steps]  # [steps, tokens, h, w]
            agg = m if per_step else m.sum(axis=0)
            total += np.maximum(resize_bicubic(agg, out_size), 0.0)
        return total

    def heatmap(
        self,
        word_or_index: str | int,
        timesteps: StepSelection = None,
        layers: LayerSelection = None,
        batch_index: int = 0,
        size: tuple[int, int] | None = None,
        resolutions: Sequence[tuple[int, int]] | None = None,
        head: int | None = None,
        special: bool = False,
    ) -> np.ndarray:
        """DAAM heat map of one word at image size.

        Args:
            word_or_index: a word of the prompt (case-insensitive) or its index in ``words``.
            timesteps: step indices to sum over (``None``: all).
            layers: layers to sum over (see ``layer_index``; ``None``: all).
            batch_index: batch item.
            size: ``(H, W)`` (default: the generated image's size).
            resolutions: keep only layers of these resolutions.
            head: one head (needs ``heads=True`` at capture).
            special: count BOS/EOS as words (so that ``word_or_index`` may name them).

        Returns:
            ``[H, W]`` float32, the mean of the word's subword maps (not normalised).
        """
        _, positions = self._word(word_or_index, batch_index, special)
        return self._layer_sum(positions, timesteps, layers, batch_index, size, resolutions, head, per_step=False)

    def step_heatmaps(
        self,
        word_or_index: str | int,
        layers: LayerSelection = None,
        batch_index: int = 0,
        size: tuple[int, int] | None = None,
        resolutions: Sequence[tuple[int, int]] | None = None,
        special: bool = False,
    ) -> np.ndarray:
        """A word's heat map at every step, to watch it settle during denoising.

        Returns:
            ``[steps, H, W]`` float32.
        """
        _, positions = self._word(word_or_index, batch_index, special)
        return self._layer_sum(positions, None, layers, batch_index, size, resolutions, None, per_step=True)

    def _layer_sum(
        self,
        positions: np.ndarray,
        timesteps: StepSelection,
        layers: LayerSelection,
        batch_index: int,
        size: tuple[int, int] | None,
        resolutions: Sequence[tuple[int, int]] | None,
        head: int | None,
        per_step: bool,
    ) -> np.ndarray:
        steps = _steps(timesteps, self.num_steps)
        out_size = self.image_size if size is None else (int(size[0]), int(size[1]))
        total = np.zeros((len(steps), *out_size) if per_step else out_size, dtype=np.float32)
        for slot in self.layer_index(layers, resolutions):
            m = self.maps(slot, batch_index, head)[steps][:, positions].mean(axis=1)  # [steps, h, w]
            agg = m if per_step else m.sum(axis=0)
            total += np.maximum(resize_bicubic(agg, out_size), 0.0)
        return total

    # -- display -----------------------------------------------------------------------------------
    def figure(self, **options: Any) -> Figure | SubFigure:
        """A matplotlib figure: the image, then each word's heat map over it (min-max normalised per word).

        Args:
            **options: ``words=``, ``timesteps=``, ``layers=``, ``batch_index=``, ``cmap=``, ``alpha=``,
                ``ncols=``, ``panel_size=``, ``title=`` (see ``mmviz.export.cross_attention_figure``).
        """
        from mmviz.export.cross_attention_figures import cross_attention_figure

        return cross_attention_figure(self, **options)

    def show(self, **options: Any) -> CrossAttentionView:
        """An interactive ``CrossAttentionView`` of this trace."""
        from mmviz.widgets.cross_attention_view import CrossAttentionView

        return CrossAttentionView(self, **options)

    def __repr__(self) -> str:
        words = " ".join(w for w, _ in self.words()) if self.batch_size else ""
        res = ", ".join(f"{h}×{w}" for h, w in self.resolutions)
        return (
            f"CrossAttentionTrace(batch={self.batch_size}, steps={self.num_steps}, layers={len(self.layers)} "
            f"[{res}], tokens={self.num_tokens}{', heads kept' if self.has_heads else ''}"
            f"{'' if self.complete else ', complete=False'}; prompt: {words!r}"
            f"{f'; concepts: {list(self.concepts)!r}' if self.concepts else ''})"
        )

    def _check_batch(self, batch_index: int) -> None:
        if not 0 <= batch_index < self.batch_size:
            raise IndexError(f"batch_index {batch_index} is out of range: the trace holds {self.batch_size} item(s)")

    # -- files -------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the trace to a ``.mmviz`` file (read it back with ``mmviz.load``)."""
        io.save(self, path, "cross_attention")

    def to_payload(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Metadata and arrays for ``mmviz.data.io.save``."""
        arrays: dict[str, np.ndarray] = {f"map{i}": m for i, m in enumerate(self._maps)}
        arrays["timesteps"] = self.timesteps
        if self.images is not None:
            arrays["images"] = self.images
        if self.previews is not None:
            arrays["previews"] = self.previews
        tables = []
        for b, table in enumerate(self.tables):
            meta, arr = table.to_payload(f"table{b}")
            tables.append(meta)
            arrays.update(arr)
        layers = [{"name": lay.name, "resolution": list(lay.resolution), "heads": lay.heads} for lay in self.layers]
        meta = {"layers": layers, "tables": tables, "info": self.info, "complete": self.complete}
        if self.concepts:
            concept_meta, concept_arrays = self._concept_payload()
            meta.update(concept_meta)
            arrays.update(concept_arrays)
        return meta, arrays

    @classmethod
    def from_payload(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> CrossAttentionTrace:
        """Inverse of ``to_payload``."""
        layers = [
            CrossAttentionLayer(str(e["name"]), (int(e["resolution"][0]), int(e["resolution"][1])), int(e["heads"]))
            for e in meta["layers"]
        ]
        return cls(
            maps=[arrays[f"map{i}"] for i in range(len(layers))],
            layers=layers,
            tokens=[TokenTable.from_payload(t, arrays) for t in meta["tables"]],
            timesteps=arrays["timesteps"],
            images=arrays.get("images"),
            info=meta.get("info"),
            previews=arrays.get("previews"),
            complete=meta.get("complete", True),
            concepts=meta.get("concepts", ()),
            concept_maps=[arrays.get(f"concept{i}") for i in range(len(layers))] if meta.get("concepts") else None,
        )


_SCHEMA = {
    "layers": [{"name": str, "resolution": [int], "heads": int}],
    "tables": [TokenTable.SCHEMA],
    "info?": (dict, None),
    "concepts?": [str],
}
io.register_type("cross_attention", CrossAttentionTrace.from_payload, schema=_SCHEMA)
