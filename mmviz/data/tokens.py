"""The token table: one row per sequence position, the spine that links every view.

A position is a text token, an image token (a patch of one of the images), a special token or padding.
Views link on the position index and on ``(image, row, col)``; attention, attributions and
cross-attention all refer to rows of a ``TokenTable``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["KINDS", "TokenTable"]

KINDS = ("text", "image", "special", "pad")
"""The kinds a position can have."""


def _int_column(values: Sequence[int] | np.ndarray | None, n: int, fill: int, name: str) -> np.ndarray:
    if values is None:
        return np.full(n, fill, dtype=np.int64)
    column = np.asarray(values, dtype=np.int64).reshape(-1)
    if column.shape != (n,):
        raise ValueError(f"TokenTable: `{name}` has {column.shape[0]} entries but there are {n} tokens")
    return column


@dataclass(frozen=True, eq=False)
class TokenTable:
    """Positions of one sequence (one batch item) with their text, kind, word and image patch.

    Attributes:
        text: ``[positions]`` display text of each token (untrusted: views render it as text).
        kind: ``[positions]`` one of ``"text"``, ``"image"``, ``"special"``, ``"pad"``.
        word_id: ``[positions]`` index of the word a position belongs to; subwords of one word share it.
        image_index: ``[positions]`` index into ``images`` for image tokens, ``-1`` otherwise.
        patch_row: ``[positions]`` patch row in that image's grid, ``-1`` for non-image tokens.
        patch_col: ``[positions]`` patch column in that image's grid, ``-1`` for non-image tokens.
        token_id: ``[positions]`` vocabulary id, ``-1`` where there is none (patches of a vision tower).
        generated: ``[positions]`` ``True`` for tokens produced by ``generate``.
        images: the images, each ``uint8 [height, width, 3]``.
        grids: each image's patch grid as ``(rows, cols)``.
        tiles: empty when every image is a whole image; else, per image, ``(source, top, left, bottom,
            right)``: the image is a tile cut from the prompt's ``source``-th image (counted in order of
            appearance in this table), covering that box in fractions of the source's height and width (a
            whole image or a global view is ``(source, 0, 0, 1, 1)``).
    """

    text: np.ndarray
    kind: np.ndarray
    word_id: np.ndarray
    image_index: np.ndarray
    patch_row: np.ndarray
    patch_col: np.ndarray
    token_id: np.ndarray
    generated: np.ndarray
    images: tuple[np.ndarray, ...] = ()
    grids: tuple[tuple[int, int], ...] = field(default=())
    tiles: tuple[tuple[int, float, float, float, float], ...] = field(default=())

    @classmethod
    def build(
        cls,
        text: Sequence[str],
        *,
        kind: Sequence[str] | None = None,
        word_id: Sequence[int] | np.ndarray | None = None,
        image_index: Sequence[int] | np.ndarray | None = None,
        patch_row: Sequence[int] | np.ndarray | None = None,
        patch_col: Sequence[int] | np.ndarray | None = None,
        token_id: Sequence[int] | np.ndarray | None = None,
        generated: Sequence[bool] | np.ndarray | None = None,
        images: Sequence[np.ndarray] = (),
        grids: Sequence[tuple[int, int]] = (),
        tiles: Sequence[tuple[int, float, float, float, float]] = (),
    ) -> TokenTable:
        """Builds a table, filling what is not given with defaults.

        Args:
            text: display text per position.
            kind: kind per position (default ``"text"``).
            word_id: word per position (default: each position its own word).
            image_index: image per position (default ``-1``).
            patch_row: patch row per position (default ``-1``).
            patch_col: patch column per position (default ``-1``).
            token_id: vocabulary id per position (default ``-1``).
            generated: generated flag per position (default ``False``).
            images: ``uint8 [height, width, 3]`` images referred to by ``image_index``.
            grids: ``(rows, cols)`` patch grid per image.
            tiles: per image, ``(source, top, left, bottom, right)`` where images are tiles (else empty).

        Returns:
            A validated ``TokenTable``.
        """
        n = len(text)
        kinds = np.asarray(list(kind) if kind is not None else ["text"] * n, dtype="<U7")
        gen = np.zeros(n, dtype=bool) if generated is None else np.asarray(generated, dtype=bool).reshape(-1)
        return cls(
            text=np.asarray([str(t) for t in text], dtype=str).reshape(n),
            kind=kinds,
            word_id=_int_column(word_id, n, 0, "word_id") if word_id is not None else np.arange(n),
            image_index=_int_column(image_index, n, -1, "image_index"),
            patch_row=_int_column(patch_row, n, -1, "patch_row"),
            patch_col=_int_column(patch_col, n, -1, "patch_col"),
            token_id=_int_column(token_id, n, -1, "token_id"),
            generated=gen,
            images=tuple(np.ascontiguousarray(im) for im in images),
            grids=tuple((int(r), int(c)) for r, c in grids),
            tiles=tuple((int(t[0]), float(t[1]), float(t[2]), float(t[3]), float(t[4])) for t in tiles),
        )

    def __post_init__(self) -> None:
        n = self.text.shape[0]
        for name in ("kind", "word_id", "image_index", "patch_row", "patch_col", "token_id", "generated"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"TokenTable: `{name}` must have one entry per token ({n})")
        unknown = set(np.unique(self.kind).tolist()) - set(KINDS)
        if unknown:
            raise ValueError(f"TokenTable: unknown token kind(s) {sorted(unknown)}; use one of {KINDS}")
        if len(self.grids) != len(self.images):
            raise ValueError("TokenTable: give one (rows, cols) grid per image")
        if self.tiles and len(self.tiles) != len(self.images):
            raise ValueError("TokenTable: give one (source, top, left, bottom, right) tile box per image, or none")
        for i, image in enumerate(self.images):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(
                    f"TokenTable: image {i} must be uint8 [height, width, 3], got {image.dtype} {image.shape}"
                )
        is_image = self.kind == "image"
        if is_image.any():
            idx = self.image_index[is_image]
            if idx.min() < 0 or idx.max() >= len(self.images):
                raise ValueError("TokenTable: an image token refers to an image that is not in `images`")
            rows = np.asarray([self.grids[i][0] for i in idx])
            cols = np.asarray([self.grids[i][1] for i in idx])
            r, c = self.patch_row[is_image], self.patch_col[is_image]
            if (r < 0).any() or (c < 0).any() or (r >= rows).any() or (c >= cols).any():
                raise ValueError("TokenTable: an image token's (row, col) lies outside its image's patch grid")

    def __len__(self) -> int:
        return int(self.text.shape[0])

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={int((self.kind == k).sum())}" for k in KINDS if (self.kind == k).any())
        return f"TokenTable({len(self)} positions: {counts}; {len(self.images)} image(s))"

    @property
    def tokens(self) -> list[str]:
        """Display text per position, as a list."""
        return self.text.tolist()

    def label(self, position: int) -> str:
        """How views and figures name a position: its text, or ``img0[3,5]`` for an image patch."""
        from mmviz.data.display import patch_label

        if str(self.kind[position]) == "image":
            return patch_label(self.image_index[position], self.patch_row[position], self.patch_col[position])
        return str(self.text[position])

    def positions(self, kind: str | Sequence[str]) -> np.ndarray:
        """Indices of the positions of the given kind(s).

        Args:
            kind: a kind or several kinds from ``KINDS``.

        Returns:
            ``[n]`` int array of positions, ascending.
        """
        kinds = [kind] if isinstance(kind, str) else list(kind)
        return np.flatnonzero(np.isin(self.kind, kinds))

    def image_positions(self, image: int = 0) -> np.ndarray:
        """Positions of one image's patches laid out on its grid.

        Args:
            image: index into ``images``.

        Returns:
            ``[rows, cols]`` int array: the position of each patch, ``-1`` where no token holds that patch.
        """
        if not 0 <= image < len(self.images):
            raise IndexError(f"image {image} is out of range: this table has {len(self.images)} image(s)")
        rows, cols = self.grids[image]
        grid = np.full((rows, cols), -1, dtype=np.int64)
        sel = np.flatnonzero((self.kind == "image") & (self.image_index == image))
        grid[self.patch_row[sel], self.patch_col[sel]] = sel
        return grid

    def words(self) -> list[tuple[str, np.ndarray]]:
        """Groups positions into words, in order of first appearance.

        Returns:
            One ``(text, positions)`` pair per word id; the text joins the subword texts.
        """
        _, first, inverse = np.unique(self.word_id, return_index=True, return_inverse=True)
        order = np.argsort(first)
        result = []
        for group in order:
            members = np.flatnonzero(inverse == group)
            result.append(("".join(self.text[members].tolist()), members))
        return result

    def select(self, positions: Sequence[int] | np.ndarray) -> TokenTable:
        """Returns a table of the given positions only (images are kept whole).

        Args:
            positions: indices to keep, in the order wanted.
        """
        idx = np.asarray(positions, dtype=np.int64)
        return TokenTable(
            text=self.text[idx],
            kind=self.kind[idx],
            word_id=self.word_id[idx],
            image_index=self.image_index[idx],
            patch_row=self.patch_row[idx],
            patch_col=self.patch_col[idx],
            token_id=self.token_id[idx],
            generated=self.generated[idx],
            images=self.images,
            grids=self.grids,
            tiles=self.tiles,
        )

    def concat(self, other: TokenTable) -> TokenTable:
        """Appends ``other``'s positions (used to add generated tokens); images are merged.

        Args:
            other: positions to append; its image indices are shifted past this table's images.
        """
        shift = len(self.images)
        other_image = np.where(other.image_index >= 0, other.image_index + shift, -1)
        word_shift = int(self.word_id.max()) + 1 if len(self) else 0
        return TokenTable(
            text=np.concatenate([self.text, other.text]),
            kind=np.concatenate([self.kind, other.kind]),
            word_id=np.concatenate([self.word_id, other.word_id + word_shift]),
            image_index=np.concatenate([self.image_index, other_image]),
            patch_row=np.concatenate([self.patch_row, other.patch_row]),
            patch_col=np.concatenate([self.patch_col, other.patch_col]),
            token_id=np.concatenate([self.token_id, other.token_id]),
            generated=np.concatenate([self.generated, other.generated]),
            images=self.images + other.images,
            grids=self.grids + other.grids,
            tiles=_joined_tiles(self, other),
        )

    # -- files ---------------------------------------------------------------------------------
    def to_payload(self, prefix: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Splits the table into JSON metadata and named arrays for a ``.mmviz`` file.

        Args:
            prefix: name prefix for the arrays (unique within the file).
        """
        arrays = {
            f"{prefix}.{name}": getattr(self, name)
            for name in ("text", "kind", "word_id", "image_index", "patch_row", "patch_col", "token_id", "generated")
        }
        for i, image in enumerate(self.images):
            arrays[f"{prefix}.image{i}"] = image
        meta: dict[str, Any] = {"prefix": prefix, "images": len(self.images), "grids": [list(g) for g in self.grids]}
        if self.tiles:
            meta["tiles"] = [list(t) for t in self.tiles]
        return meta, arrays

    @classmethod
    def from_payload(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> TokenTable:
        """Inverse of ``to_payload``."""
        p = meta["prefix"]
        return cls(
            text=arrays[f"{p}.text"].astype(str),
            kind=arrays[f"{p}.kind"].astype("<U7"),
            word_id=arrays[f"{p}.word_id"].astype(np.int64),
            image_index=arrays[f"{p}.image_index"].astype(np.int64),
            patch_row=arrays[f"{p}.patch_row"].astype(np.int64),
            patch_col=arrays[f"{p}.patch_col"].astype(np.int64),
            token_id=arrays[f"{p}.token_id"].astype(np.int64),
            generated=arrays[f"{p}.generated"].astype(bool),
            images=tuple(arrays[f"{p}.image{i}"] for i in range(int(meta["images"]))),
            grids=tuple((int(r), int(c)) for r, c in meta["grids"]),
            tiles=tuple((int(t[0]), float(t[1]), float(t[2]), float(t[3]), float(t[4])) for t in meta.get("tiles", [])),
        )


def _joined_tiles(first: TokenTable, second: TokenTable) -> tuple[tuple[int, float, float, float, float], ...]:
    """Tile boxes of ``first``'s images, then ``second``'s with sources shifted past; empty if neither has any."""
    if not first.tiles and not second.tiles:
        return ()

    def boxes(table: TokenTable, shift: int) -> list[tuple[int, float, float, float, float]]:
        if table.tiles:
            return [(t[0] + shift, t[1], t[2], t[3], t[4]) for t in table.tiles]
        return [(shift + i, 0.0, 0.0, 1.0, 1.0) for i in range(len(table.images))]

    head = boxes(first, 0)
    shift = max((t[0] for t in head), default=-1) + 1
    return tuple(head + boxes(second, shift))
