"""CrossAttentionView: a diffusion trace's word maps over the generated image, per denoising step.

The state holds, for one batch item, each word's maps at every step, summed over the layers of each
resolution (uint8, quantised per step and word), plus the image. The browser upsamples and sums the
resolutions that are switched on, so scrubbing timesteps, playing them, hovering words and toggling
resolutions never waits for the kernel. Which layers feed the sums is ``layers=`` (a Python option: the
state is rebuilt). Durable selections (word, step, resolutions, opacity, colormap) are traits.

A trace captured with ``concepts=[...]`` also shows its concept maps (ConceptAttention): they follow the
words on the same axis of each group's maps (index ``len(words) + i`` is concept ``i``), so the scrubber,
the resolutions and the small multiples treat them alike; the front end styles them apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import traitlets

from mmviz import _codec
from mmviz.data.cross_attention import CrossAttentionTrace
from mmviz.errors import BudgetError
from mmviz.widgets._view import DEFAULT_BUDGET, View, trace_title

if TYPE_CHECKING:
    from matplotlib.figure import Figure, SubFigure

    from mmviz.data.tokens import TokenTable

__all__ = ["CrossAttentionView", "cross_attention_state"]


def _res_key(res: tuple[int, int]) -> str:
    return f"{res[0]}x{res[1]}"


def cross_attention_state(
    trace: CrossAttentionTrace,
    batch_index: int = 0,
    layers: Any = None,
    special: bool = False,
) -> dict[str, Any]:
    """The data part of a view's state (``js/src/views/cross-attention.ts: CrossAttentionState``).

    Args:
        trace: the trace.
        batch_index: batch item.
        layers: layers summed into the maps (see ``CrossAttentionTrace.layer_index``).
        special: offer BOS/EOS as words too.

    Returns:
        ``_words`` (text per word), ``_word_positions`` (prompt positions per word), ``_concepts``
        (concept words, empty without concept maps), ``_timesteps``, ``_groups`` (one per resolution: key,
        ``[h, w]``, layer names, and ``maps``: uint8 ``[steps, words + concepts, h, w]`` quantised per
        (step, word); a concept's map is the mean over the group's layers that hold concept maps),
        ``_image``, ``_previews`` (uint8 ``[steps, h, w, 3]`` x0 predictions, when captured).
    """
    words = trace.words(batch_index, special=special)
    if not words:
        raise ValueError("the trace's prompt has no words to show; pass special=True to show BOS/EOS")
    slots = trace.layer_index(layers)
    groups = []
    for res in trace.resolutions:
        chosen = [s for s in slots if trace.layers[s].resolution == res]
        if not chosen:
            continue
        total = sum(trace.maps(s, batch_index) for s in chosen)  # [steps, tokens, h, w]
        assert isinstance(total, np.ndarray)
        per_word = np.stack([total[:, pos].mean(axis=1) for _, pos in words], axis=1)  # [steps, words, h, w]
        if trace.concepts:
            with_concepts = [s for s in chosen if s in trace.concept_layers]
            concepts = (
                sum(trace.concept_maps(s, batch_index) for s in with_concepts) / len(with_concepts)
                if with_concepts
                else np.zeros((trace.num_steps, len(trace.concepts), *res), dtype=np.float32)
            )
            per_word = np.concatenate([per_word, concepts], axis=1)
        groups.append(
            {
                "key": _res_key(res),
                "resolution": [int(res[0]), int(res[1])],
                "layers": [trace.layers[s].name for s in chosen],
                "maps": _codec.encode_uint8(per_word, axes=2),
            }
        )
    image = trace.image(batch_index)
    height, width = trace.image_size
    return {
        "_words": [w for w, _ in words],
        "_word_positions": [[int(p) for p in pos] for _, pos in words],
        "_concepts": list(trace.concepts),
        "_timesteps": [float(t) for t in trace.timesteps],
        "_groups": groups,
        "_image": None if image is None else _codec.encode_tensor(image, "uint8"),
        "_image_size": [int(height), int(width)],
        "_previews": None if trace.previews is None else _codec.encode_tensor(trace.previews[batch_index], "uint8"),
    }


class CrossAttentionView(View):
    """Interactive view of a ``CrossAttentionTrace`` (``trace.show(...)``).

    The generated image with the selected word's map over it; the prompt's words (hover to preview,
    click to select); a timestep scrubber with play, whose last position sums every step (DAAM); one
    toggle per resolution; small multiples of every word at the current step; and, when the capture had
    ``previews=True``, the denoiser's prediction of the image at the current step. In a Dashboard,
    hovering a word highlights it in the other panes (e.g. the text encoder's attention over the prompt).
    A trace with concept maps (``capture(pipe, concepts=[...])``) shows its concepts after the words,
    as dashed chips and thumbnails labelled "concept".

    Args:
        trace: the trace to show.
        word: index into ``trace.words()`` (then the concepts: ``len(words) + i``), the word itself, or a
            captured concept.
        step: ``-1`` (the default) sums all steps: DAAM's map.
        resolutions: switched on (e.g. ``["16x16"]``; default all).
        opacity: opacity of the map over the image (0–1).
        cmap: colormap (``mmviz.widgets.COLORMAPS``).
        batch_index: batch item.
        layers: layers summed (indices, names or parts of names; default all).
        special: offer BOS/EOS as words.
        title: heading shown above the view.
        budget: bytes of maps the state may hold.

    Raises:
        BudgetError: the maps exceed ``budget``; the message names ``layers=`` and ``budget=``.
        TypeError: an unknown keyword argument (the message lists the valid ones).
    """

    KIND = "cross_attention"
    TRIM = "show fewer layers with trace.show(layers=[...]) or raise budget="

    word = traitlets.Int(0).tag(sync=True)
    """Selected word index."""
    step = traitlets.Int(-1).tag(sync=True)
    """Selected step, ``-1`` for the sum over all steps."""
    resolutions: traitlets.List[str] = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """Resolutions switched on (``"HxW"``)."""
    opacity = traitlets.Float(0.6).tag(sync=True)
    """Opacity of the heat map over the image."""
    batch_index = traitlets.Int(0).tag(sync=True)
    """Batch item shown (setting it re-sends the maps)."""

    _words: traitlets.List[str] = traitlets.List().tag(sync=True)
    _word_positions: traitlets.List[list[int]] = traitlets.List().tag(sync=True)
    _concepts: traitlets.List[str] = traitlets.List().tag(sync=True)
    _timesteps: traitlets.List[float] = traitlets.List().tag(sync=True)
    _groups: traitlets.List[dict[str, Any]] = traitlets.List().tag(sync=True)
    _image = traitlets.Any(None).tag(sync=True)
    _image_size: traitlets.List[int] = traitlets.List().tag(sync=True)
    _previews = traitlets.Any(None).tag(sync=True)

    def __init__(
        self,
        trace: CrossAttentionTrace,
        *,
        word: int | str = 0,
        step: int = -1,
        resolutions: Sequence[str] | None = None,
        opacity: float = 0.6,
        cmap: str = "viridis",
        batch_index: int = 0,
        layers: Any = None,
        special: bool = False,
        title: str | None = None,
        budget: int = DEFAULT_BUDGET,
    ) -> None:
        if not isinstance(trace, CrossAttentionTrace):
            raise TypeError(f"CrossAttentionView needs a CrossAttentionTrace, not {type(trace).__name__}")
        self.trace = trace
        self._layer_filter = layers
        self._special = bool(special)
        self.budget = budget
        data = self._data(batch_index)
        choices = [*data["_words"], *data["_concepts"]]
        if isinstance(word, str):
            names = [w.lower() for w in choices]
            if word.strip().lower() not in names:
                raise KeyError(f"word {word!r} is neither in the prompt nor a captured concept; words: {choices}")
            word = names.index(word.strip().lower())
        if not 0 <= word < len(choices):
            raise IndexError(f"word {word} is out of range: the view shows {len(choices)} words and concepts")
        if not -1 <= step < trace.num_steps:
            raise IndexError(f"step {step} is out of range: the trace holds {trace.num_steps} steps (-1: all)")
        keys = [g["key"] for g in data["_groups"]]
        chosen = list(resolutions or keys)
        for r in chosen:
            if r not in keys:
                raise KeyError(f"resolution {r!r} is not in this view; resolutions: {keys}")
        super().__init__(
            title=trace_title(title, trace),
            budget=budget,
            word=int(word),
            step=step,
            resolutions=chosen,
            opacity=float(opacity),
            cmap=cmap,
            batch_index=batch_index,
            **data,
        )

    def tokens(self) -> TokenTable:
        """The prompt's token table for the batch item shown."""
        return self.trace.tables[self.batch_index]

    def _data(self, batch_index: int) -> dict[str, Any]:
        data = cross_attention_state(self.trace, batch_index, self._layer_filter, self._special)
        need = _codec.payload_nbytes(data)
        if need > self.budget:
            raise BudgetError(
                f"CrossAttentionView: the maps would hold {need / 1e6:.1f} MB, over the budget of "
                f"{self.budget / 1e6:.1f} MB ({self.trace.num_steps} steps × {len(data['_words'])} words × "
                f"{len(data['_groups'])} resolutions). Show fewer layers with layers=[...] (e.g. "
                "layers=['up_blocks']), or raise budget=."
            )
        return data

    @traitlets.validate("word")
    def _valid_word(self, proposal: dict[str, Any]) -> int:
        value = int(proposal["value"])
        n = len(self._words) + len(self._concepts)
        if self._words and not 0 <= value < n:
            raise traitlets.TraitError(f"word {value} is out of range: the view shows {n} words and concepts")
        return value

    @traitlets.validate("step")
    def _valid_step(self, proposal: dict[str, Any]) -> int:
        value = int(proposal["value"])
        if self._timesteps and not -1 <= value < len(self._timesteps):
            raise traitlets.TraitError(f"step {value} is out of range (-1 … {len(self._timesteps) - 1})")
        return value

    @traitlets.observe("batch_index")
    def _on_batch(self, change: dict[str, Any]) -> None:
        if self._words:
            data = self._data(int(change["new"]))
            with self.hold_sync():
                for key, value in data.items():
                    setattr(self, key, value)
                if self.word >= len(self._words) + len(self._concepts):
                    self.word = 0

    def figure(self, **options: Any) -> Figure | SubFigure:
        """A matplotlib ``Figure``: the image and each word's (then concept's) map at the current step and resolutions.

        Args:
            **options: overrides (``words=``, ``concepts=``, ``timesteps=``, ``layers=``, ``cmap=``, ``alpha=``,
                ``title=``; see ``mmviz.export.cross_attention_figures.cross_attention_figure``).
        """
        from mmviz.export.cross_attention_figures import cross_attention_figure

        on = {tuple(int(v) for v in r.split("x")) for r in self.resolutions}
        layers = self.trace.layer_index(self._layer_filter)
        selection: dict[str, Any] = {
            "timesteps": None if self.step < 0 else [self.step],
            "layers": [s for s in layers if (self.trace.layers[s].resolution in on) or not on],
            "batch_index": self.batch_index,
            "cmap": self.cmap,
            "alpha": self.opacity,
            "title": self._title or None,
        }
        selection.update(options)
        return cross_attention_figure(self.trace, **selection)
