"""Decompositions: an image embedding written as the sum of the direct contributions of a vision tower.

A ``DecompositionTrace`` is what ``mmviz.decompose`` returns (numpy only, so it saves, loads and shows
without torch). For the detailed image (batch item ``info["batch_index"]``):

``embedding == embed + mlp.sum(0) + heads.sum((0, 1)) + bias.sum(0) + constant + sum(extra.values())``

up to float rounding (``info["relative_error"]``). ``patches`` splits the attention terms by source
position instead of by head; ``maps`` holds every (layer, head, source) term projected on the embedding's
own direction and on each text's, so patch maps of any head exist without the full
``[layers, heads, positions, dim]`` array, which ``detail`` keeps only for the layers that fit a budget.
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
    from matplotlib.figure import Figure, SubFigure

    from mmviz.widgets.decomposition_view import DecompositionView

__all__ = ["DecompositionTrace", "textspan"]


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def textspan(outputs: np.ndarray, texts: np.ndarray, k: int = 5) -> tuple[list[int], np.ndarray]:
    """The TextSpan greedy basis: the texts whose directions explain most of the variance of ``outputs``.

    Each round picks the text whose direction (unit length, after the previous rounds' removals) carries
    the most remaining variance of the centred outputs, then removes that direction from the outputs and
    from every text.

    Args:
        outputs: ``[samples, dim]`` one head's direct contributions over a set of images.
        texts: ``[texts, dim]`` text embeddings (the pool to choose from).
        k: how many texts to pick (at most the pool's size).

    Returns:
        ``(picked, explained)``: indices into ``texts`` in the order picked, and ``[k]`` the fraction of
        the outputs' total variance each one explained (they sum to at most 1).
    """
    residual = np.asarray(outputs, dtype=np.float64)
    residual = residual - residual.mean(axis=0, keepdims=True)
    pool = np.asarray(texts, dtype=np.float64).copy()
    total = float((residual**2).sum())
    picked: list[int] = []
    explained: list[float] = []
    for _ in range(min(k, len(pool))):
        directions = _unit(pool)
        variance = ((residual @ directions.T) ** 2).sum(axis=0)
        variance[picked] = -1.0
        best = int(np.argmax(variance))
        u = directions[best]
        if not np.any(u):
            break
        picked.append(best)
        explained.append(float(variance[best]) / total if total > 0 else 0.0)
        residual = residual - np.outer(residual @ u, u)
        pool = pool - np.outer(pool @ u, u)
    return picked, np.asarray(explained)


@dataclass(eq=False)
class DecompositionTrace(Shown):
    """An image embedding as the sum of the direct contributions of a vision tower's parts.

    Attributes:
        embedding: ``[dim]`` the model's own image embedding (after the projection, before L2
            normalisation) of the detailed image.
        embed: ``[dim]`` the direct contribution of the input embedding (patches + positions, after the
            pre-norm when the tower has one).
        mlp: ``[layers, dim]`` each block's MLP.
        heads: ``[layers, heads, dim]`` each attention head (summed over source positions).
        bias: ``[layers, dim]`` each attention's output-projection bias.
        constant: ``[dim]`` what no block writes (the final norm's shift and the head's biases).
        tokens: the tower's positions (CLS, then patches row-major), with the image.
        patches: ``[layers, positions, dim]`` attention by source position (summed over heads).
        maps: ``[1 + texts, layers, heads, positions]`` each (layer, head, source) term's dot product with
            the unit embedding direction (row 0) and each unit text embedding.
        extra: named ``[dim]`` terms kept whole (SigLIP: ``"pooling.mlp"``, the pooling head's MLP).
        detail: ``[kept layers, heads, positions, dim]`` every term of ``detail_layers``, or ``None``.
        detail_layers: the layers ``detail`` holds.
        texts: the caption texts scored against.
        text_embeddings: ``[texts, dim]`` their embeddings (the model's text tower and projection).
        batch_heads: ``[images, layers, heads, dim]`` head contributions of every image of the batch
            (what ``describe`` spans).
        info: JSON-able facts (model class, family, batch index, relative error, ...).
    """

    embedding: np.ndarray
    embed: np.ndarray
    mlp: np.ndarray
    heads: np.ndarray
    bias: np.ndarray
    constant: np.ndarray
    tokens: TokenTable
    patches: np.ndarray
    maps: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    detail: np.ndarray | None = None
    detail_layers: tuple[int, ...] = ()
    texts: tuple[str, ...] = ()
    text_embeddings: np.ndarray | None = None
    batch_heads: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        f32 = lambda x: np.asarray(x, dtype=np.float32)  # noqa: E731
        self.embedding, self.embed, self.constant = f32(self.embedding), f32(self.embed), f32(self.constant)
        self.mlp, self.heads, self.bias = f32(self.mlp), f32(self.heads), f32(self.bias)
        self.patches, self.maps = f32(self.patches), f32(self.maps)
        self.extra = {str(k): f32(v) for k, v in self.extra.items()}
        dim = self.embedding.shape[0]
        n_layers, n_heads = self.heads.shape[:2]
        n_pos = len(self.tokens)
        expected = {
            "embed": (self.embed.shape, (dim,)),
            "constant": (self.constant.shape, (dim,)),
            "mlp": (self.mlp.shape, (n_layers, dim)),
            "heads": (self.heads.shape, (n_layers, n_heads, dim)),
            "bias": (self.bias.shape, (n_layers, dim)),
            "patches": (self.patches.shape, (n_layers, n_pos, dim)),
            "maps": (self.maps.shape, (1 + len(self.texts), n_layers, n_heads, n_pos)),
            **{f"extra[{k}]": (v.shape, (dim,)) for k, v in self.extra.items()},
        }
        self.texts = tuple(str(t) for t in self.texts)
        if self.text_embeddings is not None:
            self.text_embeddings = f32(self.text_embeddings)
            expected["text_embeddings"] = (self.text_embeddings.shape, (len(self.texts), dim))
        self.detail_layers = tuple(int(i) for i in self.detail_layers)
        if self.detail is not None:
            self.detail = f32(self.detail)
            expected["detail"] = (self.detail.shape, (len(self.detail_layers), n_heads, n_pos, dim))
        if self.batch_heads is not None:
            self.batch_heads = f32(self.batch_heads)
            expected["batch_heads"] = (self.batch_heads.shape[1:], (n_layers, n_heads, dim))
        for name, (got, want) in expected.items():
            if tuple(got) != tuple(want):
                raise ValueError(f"DecompositionTrace: {name} must have shape {want}, got {tuple(got)}")

    # -- shapes ----------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        """Number of encoder blocks."""
        return int(self.heads.shape[0])

    @property
    def n_heads(self) -> int:
        """Attention heads per block."""
        return int(self.heads.shape[1])

    # -- sums ------------------------------------------------------------------------------------
    def total(self) -> np.ndarray:
        """``[dim]`` the sum of every direct contribution (equals ``embedding`` up to rounding)."""
        parts = [self.embed, self.mlp.sum(0), self.heads.sum((0, 1)), self.bias.sum(0), self.constant]
        parts += list(self.extra.values())
        return np.sum(np.stack([p.astype(np.float64) for p in parts]), axis=0).astype(np.float32)

    def by_head(self) -> np.ndarray:
        """``[layers, heads, dim]`` the direct contribution of each attention head."""
        return self.heads

    def by_layer(self) -> np.ndarray:
        """``[layers, dim]`` each block's direct contribution (its heads, its output bias and its MLP)."""
        return self.heads.sum(1) + self.bias + self.mlp

    def by_patch(self, layer: int | None = None) -> np.ndarray:
        """``[positions, dim]`` the attention terms read from each source position (summed over heads).

        Args:
            layer: one block, or ``None`` for all blocks summed.
        """
        return self.patches.sum(0) if layer is None else self.patches[self.layer_index(layer)]

    def by_head_and_patch(self, layer: int) -> np.ndarray:
        """``[heads, positions, dim]`` every term of one block (kept only for ``detail_layers``).

        Raises:
            KeyError: the layer's full terms were not kept; ``mmviz.decompose(..., layers=[layer])`` keeps them.
        """
        layer = self.layer_index(layer)
        if self.detail is None or layer not in self.detail_layers:
            raise KeyError(
                f"layer {layer}'s [heads, positions, dim] terms were not kept (kept: {list(self.detail_layers)}); "
                f"run mmviz.decompose(..., layers=[{layer}]) to keep them, or use maps/by_head/by_patch"
            )
        return self.detail[self.detail_layers.index(layer)]

    # -- similarity ------------------------------------------------------------------------------
    def text_index(self, text: str | int) -> int:
        """The row of ``text`` (one of ``texts``, or an index into them) in ``texts`` and ``text_embeddings``.

        Raises:
            KeyError: not one of the trace's texts (the message lists them); IndexError: index out of range.
        """
        if isinstance(text, (int, np.integer)):
            if not 0 <= int(text) < len(self.texts):
                raise IndexError(f"text index {text} out of range: the trace holds {len(self.texts)} text(s)")
            return int(text)
        if text not in self.texts:
            held = ", ".join(repr(t) for t in self.texts) or "none: pass texts= to mmviz.decompose"
            raise KeyError(f"{text!r} is not one of the trace's texts ({held})")
        return self.texts.index(text)

    def _unit_text(self, text: str | int) -> np.ndarray:
        if self.text_embeddings is None:
            raise KeyError("this trace holds no texts: pass texts=[...] to mmviz.decompose")
        return _unit(self.text_embeddings[self.text_index(text)].astype(np.float64))

    def similarity(self, text: str | int) -> float:
        """The cosine similarity of the image embedding and the text's embedding (what ``scores`` splits)."""
        return float(_unit(self.embedding.astype(np.float64)) @ self._unit_text(text))

    def scores(self, text: str | int) -> np.ndarray:
        """``[layers, heads]`` each head's share of the image–text cosine similarity.

        A head's share is its contribution's dot product with the unit text embedding, over the image
        embedding's norm; the shares of all terms (heads, MLPs, embedding, biases) sum to ``similarity(text)``.

        Args:
            text: one of ``texts`` (or its index).
        """
        return self._share(self.heads, text)

    def shares(self, text: str | int) -> dict[str, np.ndarray]:
        """Every term's share of the similarity; all of them sum to ``similarity(text)``.

        Returns:
            ``heads`` ``[layers, heads]``, ``mlp`` and ``bias`` ``[layers]``, ``embed``, ``constant`` and each
            ``extra`` term (scalars).
        """
        out = {"heads": self.scores(text), "mlp": self._share(self.mlp, text), "bias": self._share(self.bias, text)}
        out["embed"], out["constant"] = self._share(self.embed, text), self._share(self.constant, text)
        out.update({name: self._share(value, text) for name, value in self.extra.items()})
        return out

    def _share(self, terms: np.ndarray, text: str | int) -> np.ndarray:
        scale = float(np.linalg.norm(self.embedding.astype(np.float64)))
        return ((terms.astype(np.float64) @ self._unit_text(text)) / scale).astype(np.float32)

    def patch_scores(
        self, text: str | int | None = None, layer: int | None = None, head: int | None = None
    ) -> np.ndarray:
        """``[positions]`` each source position's share of the similarity (or of the embedding's norm).

        Args:
            text: one of ``texts``; ``None`` scores against the image embedding's own direction (shares
                of ``|embedding|``).
            layer: one block (``None``: all).
            head: one head (``None``: all); needs nothing else kept.
        """
        row = 0 if text is None else 1 + self.text_index(text)
        maps = self.maps[row]
        maps = maps if layer is None else maps[self.layer_index(layer)][None]
        maps = maps if head is None else maps[:, self.head_index(head)][:, None]
        return (maps.sum((0, 1)) / float(np.linalg.norm(self.embedding))).astype(np.float32)

    def patch_map(self, text: str | int | None = None, layer: int | None = None, head: int | None = None) -> np.ndarray:
        """``patch_scores`` laid out on the image's patch grid: ``[rows, cols]`` (CLS left out)."""
        scores = self.patch_scores(text, layer, head)
        grid = self.tokens.image_positions(0)
        out = np.full(grid.shape, np.nan, dtype=np.float32)
        out[grid >= 0] = scores[grid[grid >= 0]]
        return out

    # -- TextSpan ----------------------------------------------------------------------------------
    def describe(
        self, k: int = 5, layers: Sequence[int] | None = None
    ) -> dict[tuple[int, int], list[tuple[str, float]]]:
        """Each head read as text: its TextSpan basis over the batch's images, from the trace's texts.

        Args:
            k: texts per head.
            layers: blocks to describe (default: all).

        Returns:
            ``(layer, head)`` → ``[(text, fraction of the head's variance explained), ...]`` in order picked.

        Raises:
            ValueError: no texts, or fewer than two images (the variance over one image is zero).
        """
        if self.text_embeddings is None or not self.texts:
            raise ValueError("describe needs a pool of texts: pass texts=[...] to mmviz.decompose")
        if self.batch_heads is None or self.batch_heads.shape[0] < 2:
            raise ValueError(
                "describe spans each head's outputs over a set of images: decompose a batch of several "
                "images (TextSpan used thousands; tens already separate colour from shape heads)"
            )
        chosen = range(self.n_layers) if layers is None else [self.layer_index(i) for i in layers]
        out: dict[tuple[int, int], list[tuple[str, float]]] = {}
        for layer in chosen:
            for head in range(self.n_heads):
                picked, explained = textspan(self.batch_heads[:, layer, head], self.text_embeddings, k)
                out[(layer, head)] = [(self.texts[i], float(e)) for i, e in zip(picked, explained)]
        return out

    # -- helpers -----------------------------------------------------------------------------------
    def layer_index(self, layer: int) -> int:
        """``layer`` as an index ``0 … n_layers − 1`` (negative counts from the end); IndexError when out of range."""
        if not -self.n_layers <= layer < self.n_layers:
            raise IndexError(f"layer {layer} out of range: the tower has {self.n_layers} blocks")
        return layer % self.n_layers

    def head_index(self, head: int) -> int:
        """``head`` as an index ``0 … n_heads − 1`` (negative counts from the end); IndexError when out of range."""
        if not -self.n_heads <= head < self.n_heads:
            raise IndexError(f"head {head} out of range: each block has {self.n_heads} heads")
        return head % self.n_heads

    def __repr__(self) -> str:
        err = self.info.get("relative_error")
        parts = [f"DecompositionTrace({self.n_layers} layers × {self.n_heads} heads × {len(self.tokens)} positions"]
        parts.append(f"dim {self.embedding.shape[0]}")
        if self.texts:
            parts.append(f"{len(self.texts)} text(s)")
        if self.batch_heads is not None:
            parts.append(f"{self.batch_heads.shape[0]} image(s)")
        if err is not None:
            parts.append(f"relative error {float(err):.1e}")
        return ", ".join(parts) + ")"

    # -- showing ---------------------------------------------------------------------------------
    def show(self, **options: Any) -> DecompositionView:
        """A ``DecompositionView`` of this trace (keyword arguments go to the view: ``text=``, ``layer=``, ...)."""
        try:
            from mmviz.widgets.decomposition_view import DecompositionView
        except ImportError as exc:
            raise ImportError(
                "DecompositionTrace.show() needs anywidget and ipywidgets, which mmviz depends on: reinstall "
                "them (pip install anywidget ipywidgets); the trace itself is plain numpy: see .heads, .maps"
            ) from exc
        return DecompositionView(self, **options)

    def figure(self, **options: Any) -> Figure | SubFigure:
        """A matplotlib ``Figure``: the head grid and a head's patch map for one text.

        See ``mmviz.export.decomposition_figures.decomposition_figure`` (``text=``, ``layer=``, ``head=``, ...).
        """
        from mmviz.export.decomposition_figures import decomposition_figure

        return decomposition_figure(self, **options)

    # -- files -----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the trace to a ``.mmviz`` file (read it back with ``mmviz.load``)."""
        io.save(self, path, "decomposition")

    _ARRAYS = ("embedding", "embed", "mlp", "heads", "bias", "constant", "patches", "maps")
    _OPTIONAL = ("detail", "text_embeddings", "batch_heads")

    def to_payload(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Metadata and arrays for ``mmviz.data.io.save``."""
        table_meta, arrays = self.tokens.to_payload("tokens")
        for name in (*self._ARRAYS, *self._OPTIONAL):
            value = getattr(self, name)
            if value is not None:
                arrays[name] = value
        extra_names = sorted(self.extra)
        for i, name in enumerate(extra_names):
            arrays[f"extra{i}"] = self.extra[name]
        meta = {
            "tokens": table_meta,
            "extra": extra_names,
            "detail_layers": list(self.detail_layers),
            "texts": list(self.texts),
            "info": self.info,
        }
        return meta, arrays

    @classmethod
    def from_payload(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> DecompositionTrace:
        """Inverse of ``to_payload``."""
        return cls(
            embedding=arrays["embedding"],
            embed=arrays["embed"],
            mlp=arrays["mlp"],
            heads=arrays["heads"],
            bias=arrays["bias"],
            constant=arrays["constant"],
            patches=arrays["patches"],
            maps=arrays["maps"],
            detail=arrays.get("detail"),
            text_embeddings=arrays.get("text_embeddings"),
            batch_heads=arrays.get("batch_heads"),
            tokens=TokenTable.from_payload(meta["tokens"], arrays),
            extra={str(name): arrays[f"extra{i}"] for i, name in enumerate(meta["extra"])},
            detail_layers=tuple(meta["detail_layers"]),
            texts=tuple(meta["texts"]),
            info=dict(meta.get("info") or {}),
        )


io.register_type("decomposition", DecompositionTrace.from_payload)
