"""What every view and every figure shows, computed once (numpy only).

The widgets (``mmviz.widgets``), their exported pages and the matplotlib figures (``mmviz.export``) all
call these functions, so a map drawn in a notebook, in an HTML page and in a PDF is the same map:

* ``AGGREGATES`` and ``select_map``: one attention map of a trace, by head or reduced over heads
  (mean, max, rollout);
* ``block_mean`` and ``steps``: big maps averaged over blocks of cells so that neither side passes a limit;
* ``display_units`` and ``display_matrix``: hiding special/padding tokens and merging subwords into words,
  as the front end's ``js/src/render/matrix.ts`` does;
* ``patch_label``: the one way an image patch is named (``img0[3,5]``: image 0, row 3, column 5);
* ``colormap_names`` and ``colormap_lut``: the one colormap definition (``colormaps.json``), interpolated
  exactly as ``js/src/render/colormap.ts`` does;
* ``robust_max``: the top of a colour scale (a high quantile of the positive values).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mmviz.data.attention import AttentionTrace
    from mmviz.data.tokens import TokenTable

__all__ = [
    "AGGREGATES",
    "COLORMAP_FILE",
    "HIDDEN_KINDS",
    "Display",
    "Unit",
    "block_mean",
    "colormap_lut",
    "colormap_names",
    "display_matrix",
    "display_units",
    "patch_label",
    "robust_max",
    "select_map",
    "steps",
]

AGGREGATES = ("head", "mean", "max", "rollout")
"""How one attention map is chosen: one head, or a reduction over the heads."""

HIDDEN_KINDS = ("special", "pad")
"""Token kinds that ``hide_special`` hides."""

COLORMAP_FILE = Path(__file__).resolve().parents[1] / "colormaps.json"
"""The one colormap definition (``mmviz/colormaps.json``): hex stops per name, bundled into the front end too."""


# -- naming ----------------------------------------------------------------------------------------
def patch_label(image: int | np.integer, row: int | np.integer, col: int | np.integer) -> str:
    """The label of an image patch everywhere mmviz names one: ``img0[3,5]`` (image 0, row 3, column 5)."""
    return f"img{int(image)}[{int(row)},{int(col)}]"


# -- colormaps -------------------------------------------------------------------------------------
@cache
def _stops() -> dict[str, list[str]]:
    with COLORMAP_FILE.open(encoding="utf-8") as f:
        data: dict[str, list[str]] = json.load(f)
    return data


def colormap_names() -> tuple[str, ...]:
    """Colormap names the views and figures know, the default (viridis) first."""
    return tuple(_stops())


def colormap_lut(name: str) -> np.ndarray:
    """``[256, 3]`` uint8 lookup table of a colormap, computed as the front end's ``lut()`` does.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    stops = _stops()
    if name not in stops:
        raise ValueError(f"unknown colormap {name!r}; use one of {list(stops)}")
    rgb = np.asarray([[int(h[i : i + 2], 16) for i in (0, 2, 4)] for h in stops[name]], dtype=np.float64)
    x = np.arange(256) / 255 * (len(rgb) - 1)
    lo = np.minimum(np.floor(x).astype(np.int64), len(rgb) - 2)
    f = (x - lo)[:, None]
    values = rgb[lo] * (1 - f) + rgb[lo + 1] * f
    # Uint8ClampedArray rounds half to even, like np.rint
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def robust_max(values: np.ndarray, q: float = 0.995) -> float:
    """The colour-scale maximum the front end uses (``robustMax``): a high quantile of positive values."""
    positive = values[values > 0]
    if positive.size == 0:
        return 1.0
    at = float(np.quantile(positive, q, method="lower"))
    return at if at > 0 else float(positive.max())


# -- choosing and shrinking maps -------------------------------------------------------------------
def select_map(
    trace: AttentionTrace,
    module: str,
    batch_index: int,
    layer: int,
    aggregate: str,
    head: int = 0,
    rollout: np.ndarray | None = None,
) -> np.ndarray:
    """One ``[query, key]`` attention map of a trace: a head, or the head mean, max or rollout of a layer.

    Args:
        trace: the trace.
        module: module stack name.
        batch_index: batch item.
        layer: model layer index.
        aggregate: one of ``AGGREGATES``.
        head: model head index (``aggregate == "head"``).
        rollout: the module's ``[layers, query, key]`` rollout if the caller already computed it.

    Raises:
        ValueError: an unknown aggregate (the message lists them).
        KeyError: the module, layer or head was not captured.
    """
    if aggregate == "head":
        return trace.probs(module, batch_index, layers=[layer], heads=[head])[0, 0]
    if aggregate == "mean":
        return trace.head_mean(module, batch_index, layers=[layer])[0]
    if aggregate == "max":
        return trace.head_max(module, batch_index, layers=[layer])[0]
    if aggregate == "rollout":
        slot = list(trace.module(module).layers).index(layer)
        return (trace.rollout(module, batch_index) if rollout is None else rollout)[slot]
    raise ValueError(f"unknown aggregate {aggregate!r}; use one of {AGGREGATES}")


def steps(n_query: int, n_key: int, max_matrix: int) -> tuple[int, int]:
    """Rows/columns averaged into one matrix cell so that neither side exceeds ``max_matrix``."""
    return max(1, math.ceil(n_query / max_matrix)), max(1, math.ceil(n_key / max_matrix))


def block_mean(values: np.ndarray, q_step: int, k_step: int) -> np.ndarray:
    """Means over ``q_step × k_step`` blocks of the last two axes (edge blocks may be smaller).

    Args:
        values: ``[..., query, key]`` array.
        q_step: query rows per block.
        k_step: key columns per block.

    Returns:
        ``[..., ceil(query / q_step), ceil(key / k_step)]`` float32.
    """
    v = np.asarray(values, dtype=np.float32)
    if q_step == 1 and k_step == 1:
        return v
    *lead, nq, nk = v.shape
    rows, cols = math.ceil(nq / q_step), math.ceil(nk / k_step)
    if nq % q_step or nk % k_step:  # zero-pad to whole blocks; the area below counts real cells only
        pad = [(0, 0)] * len(lead) + [(0, rows * q_step - nq), (0, cols * k_step - nk)]
        v = np.pad(v, pad)
    # reshaped sums run at memory speed (several times faster than np.add.reduceat here)
    sums = v.reshape(*lead, rows, q_step, cols * k_step).sum(axis=-2).reshape(*lead, rows, cols, k_step).sum(axis=-1)
    q_count = np.minimum(q_step, nq - np.arange(rows) * q_step)
    k_count = np.minimum(k_step, nk - np.arange(cols) * k_step)
    return (sums / (q_count[:, None] * k_count[None, :])).astype(np.float32)


# -- hiding and merging ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Unit:
    """One row or column of a displayed matrix: a token, a word (merged subwords) or an image patch."""

    positions: tuple[int, ...]
    label: str
    kind: str
    image: int


def display_units(table: TokenTable, hide: bool, merge: bool) -> tuple[list[Unit], np.ndarray]:
    """Rows/columns of a displayed matrix, as the front end's ``buildUnits`` builds them.

    Args:
        table: token table of one side of the matrix.
        hide: leave out special and padding positions.
        merge: merge the subwords of one word into one unit.

    Returns:
        The units in order, and ``[positions]`` int64 unit index per position (``-1``: hidden).
    """
    unit_of_pos = np.full(len(table), -1, dtype=np.int64)
    positions: list[list[int]] = []
    labels: list[str] = []
    kinds: list[str] = []
    by_word: dict[int, int] = {}
    for p in range(len(table)):
        kind = str(table.kind[p])
        if hide and kind in HIDDEN_KINDS:
            continue
        word = int(table.word_id[p])
        if merge and kind != "image" and word in by_word:
            u = by_word[word]
            positions[u].append(p)
            labels[u] += str(table.text[p])
            unit_of_pos[p] = u
            continue
        unit_of_pos[p] = len(positions)
        if merge and kind != "image":
            by_word[word] = len(positions)
        positions.append([p])
        kinds.append(kind)
        if kind == "image":
            labels.append(patch_label(table.image_index[p], table.patch_row[p], table.patch_col[p]))
        else:
            labels.append(str(table.text[p]))
    units = [
        Unit(tuple(ps), lab, k, int(table.image_index[ps[0]]) if k == "image" else -1)
        for ps, lab, k in zip(positions, labels, kinds)
    ]
    return units, unit_of_pos


@dataclass
class Display:
    """A map as shown: the matrix, its units on both sides and how positions map to them."""

    matrix: np.ndarray
    """``[rows, cols]`` float32 shown."""
    full: np.ndarray
    """``[query, key]`` at full resolution (hidden keys zeroed and rows renormalised)."""
    q_units: list[Unit]
    k_units: list[Unit]
    q_unit_of_pos: np.ndarray
    k_unit_of_pos: np.ndarray
    q_step: int
    k_step: int


def display_matrix(
    full: np.ndarray, q_tab: TokenTable, k_tab: TokenTable, hide: bool, merge: bool, max_matrix: int
) -> Display:
    """A ``[query, key]`` map as a view shows it: hidden positions, merged words, block means.

    Hiding and merging are off when the map is block-averaged (``max_matrix`` smaller than a side), as in
    the front end.

    Args:
        full: ``[query, key]`` map.
        q_tab: token table of the queries.
        k_tab: token table of the keys.
        hide: hide special and padding keys and queries (rows renormalised over the rest).
        merge: merge subwords into words (attention to a word sums, from a word averages).
        max_matrix: most rows/columns shown.
    """
    nq, nk = full.shape
    q_step, k_step = steps(nq, nk, max_matrix)
    down = q_step > 1 or k_step > 1
    hide, merge = hide and not down, merge and not down
    q_units, q_of = display_units(q_tab, hide, merge)
    k_units, k_of = display_units(k_tab, hide, merge)
    if hide:
        full = full * (k_of >= 0)[None, :]
        total = full.sum(axis=-1, keepdims=True)
        full = np.divide(full, total, out=np.zeros_like(full), where=total > 0)
    if down:
        matrix = block_mean(full, q_step, k_step)
    elif hide or merge:
        q_weights = np.zeros((len(q_units), nq), dtype=np.float32)
        for u, unit in enumerate(q_units):
            q_weights[u, list(unit.positions)] = 1.0 / len(unit.positions)
        k_member = np.zeros((nk, len(k_units)), dtype=np.float32)
        visible = np.flatnonzero(k_of >= 0)
        k_member[visible, k_of[visible]] = 1.0
        matrix = q_weights @ full @ k_member
    else:
        matrix = full
    return Display(matrix, full, q_units, k_units, q_of, k_of, q_step, k_step)
