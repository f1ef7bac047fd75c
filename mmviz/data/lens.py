"""Lens traces: what each layer's hidden state would predict if the model stopped there.

A ``LensTrace`` is what ``mmviz.logit_lens`` and ``mmviz.text_lens`` return: numpy arrays only, so it saves,
loads, shows and exports without torch. For every batch item, layer and lensed position it holds the ``k``
most probable outputs with their probabilities, the entropy of the whole distribution, and the probability
and score of each output the user named. Outputs are vocabulary tokens (logit lens) or captions (the text lens
of a CLIP/SigLIP vision tower). Nothing is ``O(vocabulary)``: the full distributions are never stored.
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
    from mmviz.widgets.lens_view import LensView

__all__ = ["DiffusionLensTrace", "LensTrace"]

METHODS = ("logit_lens", "text_lens")


def _table_text(texts: Sequence[str]) -> np.ndarray:
    return np.asarray([str(t) for t in texts], dtype=str) if len(texts) else np.zeros(0, dtype="<U1")


@dataclass(eq=False)
class LensTrace(Shown):
    """Per layer and position: the top outputs, their probabilities, the entropy and the named outputs.

    Attributes:
        top_ids: ``[batch, layers, positions, k]`` int64 ids of the ``k`` most probable outputs, most probable
            first (vocabulary ids; caption indices for the text lens).
        top_probs: ``[batch, layers, positions, k]`` float32 their probabilities.
        entropy: ``[batch, layers, positions]`` float32 entropy of the whole distribution, in nats.
        named_probs: ``[batch, layers, positions, named]`` float32 probability of each named output.
        named_scores: ``[batch, layers, positions, named]`` float32 its score before normalisation (the logit;
            the cosine similarity for the text lens).
        named: the named outputs' texts, in the order of the last axis of ``named_probs``.
        named_ids: ``[named]`` their ids.
        vocab_ids: ``[vocab]`` every id that occurs in ``top_ids`` or ``named_ids``.
        vocab_text: ``[vocab]`` display text of each of them (untrusted: views render it as text).
        layers: the hidden state of each layer row: 0 is the input of the first block (embeddings), ``l`` the
            output of block ``l - 1``; the last row of a full lens is the model's own output distribution.
        positions: ``[positions]`` the row of the token table each position column refers to.
        tables: one token table per batch item (image tokens carry ``(image, row, col)``).
        method: ``"logit_lens"`` or ``"text_lens"``.
        info: JSON-able facts (model class, readout modules, ...).
    """

    top_ids: np.ndarray
    top_probs: np.ndarray
    entropy: np.ndarray
    named_probs: np.ndarray
    named_scores: np.ndarray
    named: tuple[str, ...]
    named_ids: np.ndarray
    vocab_ids: np.ndarray
    vocab_text: np.ndarray
    layers: tuple[int, ...]
    positions: np.ndarray
    tables: tuple[TokenTable, ...]
    method: str = "logit_lens"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.top_ids = np.asarray(self.top_ids, dtype=np.int64)
        self.top_probs = np.asarray(self.top_probs, dtype=np.float32)
        self.entropy = np.asarray(self.entropy, dtype=np.float32)
        self.named_probs = np.asarray(self.named_probs, dtype=np.float32)
        self.named_scores = np.asarray(self.named_scores, dtype=np.float32)
        self.named = tuple(str(n) for n in self.named)
        self.named_ids = np.asarray(self.named_ids, dtype=np.int64).reshape(-1)
        self.vocab_ids = np.asarray(self.vocab_ids, dtype=np.int64).reshape(-1)
        self.vocab_text = _table_text(list(np.asarray(self.vocab_text).reshape(-1)))
        self.layers = tuple(int(layer) for layer in self.layers)
        self.positions = np.asarray(self.positions, dtype=np.int64).reshape(-1)
        self.tables = tuple(self.tables)
        if self.method not in METHODS:
            raise ValueError(f"LensTrace: method must be one of {METHODS}, not {self.method!r}")
        if self.top_ids.ndim != 4 or self.top_ids.shape != self.top_probs.shape:
            raise ValueError(
                "LensTrace: top_ids and top_probs must both be [batch, layers, positions, k], got shapes "
                f"{self.top_ids.shape} and {self.top_probs.shape}"
            )
        batch, n_layers, n_positions, _ = self.top_ids.shape
        if self.entropy.shape != (batch, n_layers, n_positions):
            raise ValueError(f"LensTrace: entropy must be {(batch, n_layers, n_positions)}, got {self.entropy.shape}")
        named_shape = (batch, n_layers, n_positions, len(self.named))
        if self.named_probs.shape != named_shape or self.named_scores.shape != named_shape:
            raise ValueError(
                f"LensTrace: named_probs and named_scores must be {named_shape}, got {self.named_probs.shape} "
                f"and {self.named_scores.shape}"
            )
        if self.named_ids.shape != (len(self.named),):
            raise ValueError(f"LensTrace: {len(self.named)} named outputs but {self.named_ids.size} named ids")
        if len(self.layers) != n_layers or self.positions.shape != (n_positions,):
            raise ValueError(
                f"LensTrace: {len(self.layers)} layers and {self.positions.size} positions label arrays of "
                f"{n_layers} layers and {n_positions} positions"
            )
        if len(self.tables) != batch:
            raise ValueError(f"LensTrace: {batch} batch item(s) but {len(self.tables)} token table(s)")
        for i, table in enumerate(self.tables):
            if n_positions and (self.positions.min() < 0 or self.positions.max() >= len(table)):
                raise ValueError(f"LensTrace: positions reach past the {len(table)} rows of token table {i}")
        if self.vocab_text.shape != self.vocab_ids.shape:
            raise ValueError("LensTrace: vocab_ids and vocab_text must have one entry each per id")
        known = set(self.vocab_ids.tolist())
        missing = (set(np.unique(self.top_ids).tolist()) | set(self.named_ids.tolist())) - known
        if missing:
            raise ValueError(f"LensTrace: ids {sorted(missing)[:5]} have no text in vocab_ids/vocab_text")
        self._text = dict(zip(self.vocab_ids.tolist(), self.vocab_text.tolist()))

    # -- reading ---------------------------------------------------------------------------------
    @property
    def tokens(self) -> TokenTable:
        """The token table of batch item 0 (``tables`` holds one per item)."""
        return self.tables[0]

    @property
    def k(self) -> int:
        """How many top outputs are kept per layer and position."""
        return int(self.top_ids.shape[3])

    def text(self, token_id: int) -> str:
        """Display text of an id held by the trace."""
        try:
            return self._text[int(token_id)]
        except KeyError:
            raise KeyError(f"id {token_id} is neither a top-{self.k} output nor a named output of this lens") from None

    def layer_row(self, layer: int) -> int:
        """Row of ``layer`` (a hidden-state index from ``layers``; ``-1`` is the last row)."""
        if layer < 0 and -len(self.layers) <= layer:
            return len(self.layers) + layer
        if layer not in self.layers:
            raise IndexError(f"layer {layer} was not lensed; this lens holds layers {list(self.layers)}")
        return self.layers.index(layer)

    def column(self, position: int) -> int:
        """Column of token-table ``position`` (``-1`` is the last lensed position)."""
        if position < 0 and -len(self.positions) <= position:
            return len(self.positions) + position
        hits = np.flatnonzero(self.positions == position)
        if not hits.size:
            raise IndexError(f"position {position} was not lensed; pass positions=None to lens every position")
        return int(hits[0])

    def _named_index(self, token: str | int) -> int:
        if isinstance(token, (int, np.integer)):
            hits = np.flatnonzero(self.named_ids == int(token))
        else:
            hits = np.asarray([i for i, n in enumerate(self.named) if n == token], dtype=np.int64)
        if not hits.size:
            raise KeyError(
                f"{token!r} is not a named output of this lens (named: {list(self.named)}); pass it in "
                "tokens=[...] (texts=[...] for the text lens) when computing the lens"
            )
        return int(hits[0])

    def prob(self, token: str | int, batch_index: int = 0) -> np.ndarray:
        """``[layers, positions]`` probability of a named output (its text or id) at every layer and position."""
        return self.named_probs[batch_index, :, :, self._named_index(token)]

    def score(self, token: str | int, batch_index: int = 0) -> np.ndarray:
        """``[layers, positions]`` score of a named output before normalisation (logit, or cosine similarity)."""
        return self.named_scores[batch_index, :, :, self._named_index(token)]

    def top(self, layer: int, position: int, batch_index: int = 0) -> list[tuple[str, float]]:
        """The top-``k`` outputs at one layer and position, as ``(text, probability)``, most probable first."""
        row, col = self.layer_row(layer), self.column(position)
        ids, probs = self.top_ids[batch_index, row, col], self.top_probs[batch_index, row, col]
        return [(self.text(i), float(p)) for i, p in zip(ids.tolist(), probs.tolist())]

    def top_text(self, batch_index: int = 0) -> np.ndarray:
        """``[layers, positions]`` text of the most probable output at every layer and position."""
        ids = self.top_ids[batch_index, :, :, 0]
        return np.vectorize(self.text, otypes=[str])(ids) if ids.size else np.zeros(ids.shape, dtype=str)

    # -- showing ---------------------------------------------------------------------------------
    def show(self, **options: Any) -> LensView:
        """A ``LensView`` of this lens (keyword arguments go to the view: ``token=``, ``layer=``, ...)."""
        try:
            from mmviz.widgets.lens_view import LensView
        except ImportError as exc:
            raise ImportError(
                "LensTrace.show() needs anywidget and ipywidgets, which mmviz depends on: reinstall them "
                "(pip install anywidget ipywidgets); the lens itself is plain numpy: see .prob(), .top() and .tokens"
            ) from exc
        return LensView(self, **options)

    def __repr__(self) -> str:
        batch, n_layers, n_positions, k = self.top_ids.shape
        parts = [f"LensTrace({self.method}, {n_layers} layers × {n_positions} positions, top-{k}"]
        if batch > 1:
            parts.append(f"batch {batch}")
        if self.named:
            parts.append(f"named={list(self.named)}")
        return ", ".join(parts) + ")"

    # -- files -----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the lens to a ``.mmviz`` file (read it back with ``mmviz.load``)."""
        io.save(self, path, "lens")

    def to_payload(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Metadata and arrays for ``mmviz.data.io.save``."""
        arrays: dict[str, np.ndarray] = {}
        tables = []
        for i, table in enumerate(self.tables):
            table_meta, table_arrays = table.to_payload(f"tokens{i}")
            tables.append(table_meta)
            arrays.update(table_arrays)
        for name in ("top_ids", "top_probs", "entropy", "named_probs", "named_scores", "named_ids"):
            arrays[name] = getattr(self, name)
        arrays.update(vocab_ids=self.vocab_ids, vocab_text=self.vocab_text, positions=self.positions)
        meta = {
            "tables": tables,
            "named": list(self.named),
            "layers": list(self.layers),
            "method": self.method,
            "info": self.info,
        }
        return meta, arrays

    @classmethod
    def from_payload(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> LensTrace:
        """Inverse of ``to_payload``."""
        return cls(
            top_ids=arrays["top_ids"],
            top_probs=arrays["top_probs"],
            entropy=arrays["entropy"],
            named_probs=arrays["named_probs"],
            named_scores=arrays["named_scores"],
            named=tuple(meta["named"]),
            named_ids=arrays["named_ids"],
            vocab_ids=arrays["vocab_ids"],
            vocab_text=arrays["vocab_text"].astype(str),
            layers=tuple(meta["layers"]),
            positions=arrays["positions"],
            tables=tuple(TokenTable.from_payload(t, arrays) for t in meta["tables"]),
            method=str(meta["method"]),
            info=dict(meta.get("info") or {}),
        )


io.register_type("lens", LensTrace.from_payload)


@dataclass(eq=False)
class DiffusionLensTrace:
    """The Diffusion Lens of a text-to-image pipeline: one image per text-encoder layer.

    The image of layer ``l`` is what the denoiser draws when the text encoder's hidden state ``l`` (through
    its final norm) conditions it in place of the last layer's, from the same initial noise; the last layer's
    image is the pipeline's own.

    Attributes:
        images: ``[layers, height, width, 3]`` uint8 images.
        layers: the text encoder's hidden state of each image (0: the embeddings; ``l``: block ``l - 1``).
        prompt: the prompt drawn.
        tokens: the prompt's token table.
        info: JSON-able facts (pipeline class, steps, seed, ...).
    """

    images: np.ndarray
    layers: tuple[int, ...]
    prompt: str
    tokens: TokenTable
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images)
        self.layers = tuple(int(layer) for layer in self.layers)
        if self.images.ndim != 4 or self.images.shape[3] != 3 or self.images.dtype != np.uint8:
            raise ValueError(
                "DiffusionLensTrace: images must be uint8 [layers, height, width, 3], got "
                f"{self.images.dtype} {self.images.shape}"
            )
        if len(self.layers) != self.images.shape[0]:
            raise ValueError(f"DiffusionLensTrace: {len(self.layers)} layers label {self.images.shape[0]} images")

    def image(self, layer: int) -> np.ndarray:
        """``[height, width, 3]`` the image drawn from hidden state ``layer`` (``-1``: the last)."""
        if layer < 0 and -len(self.layers) <= layer:
            return self.images[len(self.layers) + layer]
        if layer not in self.layers:
            raise IndexError(f"layer {layer} was not drawn; this lens holds layers {list(self.layers)}")
        return self.images[self.layers.index(layer)]

    def figure(self, **options: Any) -> Any:
        """A matplotlib ``Figure``: the images in rows, each labelled with its layer.

        Args:
            **options: ``title=``, ``columns=``, ``figsize=``, ``into=`` (see
                ``mmviz.export.lens_figures.diffusion_lens_figure``).
        """
        from mmviz.export.lens_figures import diffusion_lens_figure

        return diffusion_lens_figure(self, **options)

    def __repr__(self) -> str:
        h, w = self.images.shape[1:3]
        return f"DiffusionLensTrace({len(self.layers)} layers, {h}×{w} images, prompt={self.prompt!r})"

    # -- files -----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the lens to a ``.mmviz`` file (read it back with ``mmviz.load``)."""
        io.save(self, path, "diffusion_lens")

    def to_payload(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Metadata and arrays for ``mmviz.data.io.save``."""
        table_meta, arrays = self.tokens.to_payload("tokens")
        arrays["images"] = self.images
        meta = {"tokens": table_meta, "layers": list(self.layers), "prompt": self.prompt, "info": self.info}
        return meta, arrays

    @classmethod
    def from_payload(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> DiffusionLensTrace:
        """Inverse of ``to_payload``."""
        return cls(
            images=arrays["images"],
            layers=tuple(meta["layers"]),
            prompt=str(meta["prompt"]),
            tokens=TokenTable.from_payload(meta["tokens"], arrays),
            info=dict(meta.get("info") or {}),
        )


io.register_type("diffusion_lens", DiffusionLensTrace.from_payload)
