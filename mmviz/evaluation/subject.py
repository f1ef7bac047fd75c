"""What ``mmviz.evaluate`` judges: any map turned into scores over a token table, plus how to recompute it.

A ``Subject`` is the common form of every map a view shows: ``[positions]`` scores over a ``TokenTable``
(image tokens carry their patch), the ``[H, W]`` pixel map of each image where the map has one, and a
``recompute(model)`` that draws the same map again on a (randomised) model. ``subject(...)`` builds it
from an ``Attribution``, an attention choice (``attention_map``), a cross-attention word map or a plain
array.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmviz.data import AttentionTrace, Attribution, CrossAttentionTrace, PatchingTrace, TokenTable

__all__ = ["Subject", "attention_map", "cross_attention_map", "patching_map", "subject", "upsample"]

Recompute = Callable[[Any, Any, Any], np.ndarray]
"""``(model, inputs, other_target) → [positions]``: the same map drawn on ``model`` (for ``other_target``, when
not ``None``)."""


@dataclass
class Subject:
    """A map in the form every check reads.

    Attributes:
        name: what the map is (method, target, layer/head choice).
        scores: ``[positions]`` float64.
        tokens: the positions.
        pixel_maps: one ``[H, W]`` map per image of ``tokens`` (empty: upsample the patch scores).
        recompute: ``(model, inputs, other_target) → [positions]`` the same map drawn again, or ``None``.
        retargetable: whether ``recompute`` can draw the map for another target (attributions).
        perturb: keyword arguments of ``mmviz.attribution.explained`` (target, baseline, sources).
        attribution: the ``Attribution`` judged, if any (completeness reads it).
    """

    name: str
    scores: np.ndarray
    tokens: TokenTable
    pixel_maps: tuple[np.ndarray, ...] = ()
    recompute: Recompute | None = None
    retargetable: bool = False
    perturb: dict[str, Any] = field(default_factory=dict)
    attribution: Attribution | None = None

    def image_map(self, image: int, shape: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
        """``[H, W]`` map of one image at a mask's size: its pixel map, else its patch scores upsampled."""
        if image < len(self.pixel_maps) and self.pixel_maps[image].shape == tuple(shape):
            return self.pixel_maps[image]
        if image >= len(self.tokens.images):
            raise ValueError(
                f"a pixel mask was given for image {image} but the map covers {len(self.tokens.images)} image(s)"
            )
        grid = self.tokens.image_positions(image)
        cells = np.where(grid >= 0, self.scores[np.maximum(grid, 0)], np.nan)
        if np.isnan(cells).any():
            cells = np.where(np.isnan(cells), np.nanmin(cells) if np.isfinite(cells).any() else 0.0, cells)
        return upsample(cells, shape, mode)


def upsample(cells: np.ndarray, shape: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """Resizes a ``[rows, cols]`` grid to ``[H, W]`` pixels.

    Args:
        cells: ``[rows, cols]`` values.
        shape: ``(H, W)``.
        mode: ``"bilinear"`` (cell centres at half-pixel offsets, edges clamped, as ``torch``'s
            ``align_corners=False``) or ``"nearest"`` (each pixel takes its cell's value).
    """
    rows, cols = cells.shape
    h, w = shape
    if mode == "nearest":
        return cells[(np.arange(h) * rows // h)[:, None], (np.arange(w) * cols // w)[None, :]].astype(np.float64)
    if mode != "bilinear":
        raise ValueError(f"upsample must be 'bilinear' or 'nearest', not {mode!r}")

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, pos - lo

    y0, y1, fy = axis(h, rows)
    x0, x1, fx = axis(w, cols)
    c = cells.astype(np.float64)
    top = c[y0][:, x0] * (1 - fx) + c[y0][:, x1] * fx
    bottom = c[y1][:, x0] * (1 - fx) + c[y1][:, x1] * fx
    return top * (1 - fy)[:, None] + bottom * fy[:, None]


# -- attributions -----------------------------------------------------------------------------------
def _from_attribution(attr: Attribution, processor: Any, row: int, target: Any, baseline: Any) -> Subject:
    if not 0 <= row < attr.scores.shape[0]:
        raise ValueError(f"target_row {row} is out of range: the attribution has {attr.scores.shape[0]} row(s)")
    call = dict(attr.info.get("call") or {})
    spec_target: Any = target if target is not None else _target_of(call.get("target"))
    if target is None and call.get("target_given"):
        spec_target = MissingArgument("target")
    # removal (deletion/insertion): the baseline given to evaluate, else the attribution's own
    recorded = call.get("baseline", attr.info.get("baseline"))
    spec_baseline = baseline if baseline is not None else recorded if isinstance(recorded, str) else None
    if spec_baseline is None or spec_baseline == "tensor":
        spec_baseline = "zeros"
    # recomputing: the attribution's own baseline; one it could not record must be given again
    redo_baseline: Any = recorded if isinstance(recorded, str) and recorded != "tensor" else baseline
    if redo_baseline is None:
        redo_baseline = MissingArgument("baseline") if call.get("baseline_given") else "zeros"
    options = {k: call[k] for k in ("steps", "per_token", "rule") if k in call}
    if call.get("sources") is not None:
        options["sources"] = tuple(call["sources"])

    def draw(model: Any, inputs: Any, other: Any = None) -> np.ndarray:
        from mmviz.attribution import attribute

        what = spec_target if other is None else other
        for given in (what, redo_baseline):
            if isinstance(given, MissingArgument):
                raise ValueError(given.message)
        other = attribute(
            model,
            inputs,
            method=attr.method,
            target=what,
            processor=processor,
            baseline=redo_baseline,
            progress=False,
            **options,
        )
        return other.scores[min(row, other.scores.shape[0] - 1)].astype(np.float64)

    perturb = {"target": spec_target, "baseline": spec_baseline, "per_token": bool(call.get("per_token", False))}
    if "sources" in options:  # a map of the image tokens' embeddings is judged by removing their pixels
        perturb["sources"] = tuple(dict.fromkeys("image" if x == "image_embeddings" else x for x in options["sources"]))
    label = attr.targets[row] if attr.targets else attr.target
    return Subject(
        name=f"{attr.method} of {label}" if label else attr.method,
        scores=attr.scores[row].astype(np.float64),
        tokens=attr.tokens,
        pixel_maps=tuple(p[row] for p in attr.pixel_maps),
        recompute=draw,
        retargetable=True,
        perturb=perturb,
        attribution=attr,
    )


class MissingArgument:
    """A target or baseline ``mmviz.attribute`` was given but could not record (a tensor, a callable)."""

    def __init__(self, what: str) -> None:
        self.message = (
            f"this attribution was computed with a {what} that its file cannot hold (a tensor or a callable); "
            f"pass the same {what}= to mmviz.evaluate to recompute it"
        )


def _target_of(recorded: Any) -> Any:
    return tuple(recorded) if isinstance(recorded, list) else recorded


# -- attention --------------------------------------------------------------------------------------
def attention_map(
    trace: AttentionTrace,
    *,
    layer: int | str = -1,
    head: int | None = None,
    query: int = -1,
    module: str | None = None,
    batch_index: int = 0,
    processor: Any = None,
) -> Subject:
    """An attention choice as a map: the attention (or rollout) of one query position over the keys.

    Example::

        rep = mmviz.evaluate(mmviz.evaluation.attention_map(cap.attention, layer=-1, query=-1), model, inputs)
        rep = mmviz.evaluate((cap.attention, {"layer": "rollout"}), model, inputs)   # the same, as a tuple

    Args:
        trace: an ``AttentionTrace`` (from ``mmviz.capture``).
        layer: a captured layer index (negative counts from the last captured), ``"mean"`` (mean over the
            captured layers) or ``"rollout"`` (attention rollout up to the last layer).
        head: one head, or ``None`` for the mean over heads.
        query: the query position whose row is the map (negative counts from the end).
        module: the attention module (default: the trace's default).
        batch_index: batch item.
        processor: handed to ``mmviz.capture`` when the map is recomputed on a randomised model.
    """
    m = trace.module(module)
    name = m.name

    def reduce(t: AttentionTrace) -> np.ndarray:
        probs = t.probs(name, batch_index)  # [layers, heads, query, key]
        if layer == "rollout":
            mat = t.rollout(name, batch_index)[-1]
        else:
            per_layer = probs.mean(1) if head is None else probs[:, _index(t.module(name).heads, head, "head")]
            if layer == "mean":
                mat = per_layer.mean(0)
            elif isinstance(layer, (int, np.integer)):
                mat = per_layer[_index(t.module(name).layers, int(layer), "layer")]
            else:
                raise ValueError(f"layer must be an int, 'mean' or 'rollout', not {layer!r}")
        q = query if query >= 0 else mat.shape[0] + query
        if not 0 <= q < mat.shape[0]:
            raise ValueError(f"query {query} is out of range for {mat.shape[0]} query positions")
        return mat[q].astype(np.float64)

    def redraw(model: Any, inputs: Any, other: Any = None) -> np.ndarray:
        import torch

        from mmviz.capture import capture

        data = dict(inputs.data) if hasattr(inputs, "data") and not isinstance(inputs, dict) else dict(inputs)
        with torch.no_grad(), capture(model, processor) as cap:
            model(**data)
        return reduce(cap.attention)

    what = "rollout" if layer == "rollout" else f"layer {layer}, {'head mean' if head is None else f'head {head}'}"
    return Subject(
        name=f"attention of {name} ({what}, query {query})",
        scores=reduce(trace),
        tokens=trace.tokens(name, batch_index, "key"),
        recompute=redraw,
    )


def _index(labels: tuple[int, ...] | Any, wanted: int, what: str) -> int:
    labels = tuple(int(x) for x in labels)
    if wanted < 0:
        if -wanted > len(labels):
            raise ValueError(f"{what} {wanted} is out of range: {len(labels)} captured")
        return len(labels) + wanted
    if wanted not in labels:
        raise ValueError(f"{what} {wanted} was not captured; captured: {list(labels)}")
    return labels.index(wanted)


# -- cross-attention --------------------------------------------------------------------------------
def cross_attention_map(trace: CrossAttentionTrace, word: str | int, batch_index: int = 0, **options: Any) -> Subject:
    """A diffusion word map (``trace.heatmap(word)``) as a map over the generated image's pixels.

    Its positions are the cells of the image's grid at the coarsest cross-attention resolution (each
    scored by its pixels' mean); mask checks read the pixel map itself.

    Args:
        trace: a ``CrossAttentionTrace``.
        word: a word of the prompt or its index.
        batch_index: batch item.
        **options: ``heatmap``'s options (``timesteps=``, ``layers=``, ...).
    """
    heat = trace.heatmap(word, batch_index=batch_index, **options).astype(np.float64)
    image = trace.image(batch_index)
    rows, cols = min(trace.resolutions, key=lambda rc: rc[0] * rc[1]) if trace.resolutions else heat.shape
    return _pixel_subject(f"cross-attention of {word!r}", heat, image, (rows, cols))


def _pixel_subject(name: str, heat: np.ndarray, image: np.ndarray | None, grid: tuple[int, int]) -> Subject:
    h, w = heat.shape
    rows, cols = grid
    ys, xs = np.arange(h) * rows // h, np.arange(w) * cols // w
    sums = np.zeros((rows, cols))
    np.add.at(sums, (ys[:, None], xs[None, :]), heat)
    counts = np.zeros((rows, cols))
    np.add.at(counts, (ys[:, None], xs[None, :]), 1.0)
    if image is None or image.shape[:2] != (h, w):
        image = np.zeros((h, w, 3), dtype=np.uint8)
    rr, cc = np.divmod(np.arange(rows * cols), cols)
    tokens = TokenTable.build(
        [f"patch {r},{c}" for r, c in zip(rr, cc)],
        kind=["image"] * (rows * cols),
        image_index=np.zeros(rows * cols, dtype=np.int64),
        patch_row=rr,
        patch_col=cc,
        images=[np.ascontiguousarray(image, dtype=np.uint8)],
        grids=[(rows, cols)],
    )
    return Subject(name=name, scores=(sums / counts).reshape(-1), tokens=tokens, pixel_maps=(heat,))


# -- patching ---------------------------------------------------------------------------------------
def patching_map(trace: PatchingTrace, site: str | int = 0, layer: int = 0) -> Subject:
    """One site and layer of a patching trace as a map over its positions (``trace.position_effects``).

    Positions no column restored have no score (``nan``): deletion and insertion leave them in place, mask
    checks never pick them. The map cannot be recomputed here (``patch`` needs its clean and corrupted inputs).

    Args:
        trace: a ``PatchingTrace`` (``mmviz.patch``).
        site: site name or index.
        layer: block index.
    """
    name = trace.sites[trace.site_index(site)]
    return Subject(
        name=f"patching effect at {name}, layer {layer} ({trace.metric})" if trace.metric else f"patching {name}",
        scores=trace.position_effects(site, layer).astype(np.float64),
        tokens=trace.tokens,
    )


# -- the entry point --------------------------------------------------------------------------------
def subject(
    map_: Any,
    *,
    processor: Any = None,
    tokens: TokenTable | None = None,
    target_row: int = 0,
    target: Any = None,
    baseline: Any = None,
) -> Subject:
    """Turns any map ``mmviz.evaluate`` accepts into a ``Subject`` (see ``mmviz.evaluate``'s ``map``)."""
    if isinstance(map_, Subject):
        return map_
    if isinstance(map_, Attribution):
        return _from_attribution(map_, processor, target_row, target, baseline)
    if isinstance(map_, tuple) and len(map_) == 2:
        first, spec = map_
        if isinstance(first, AttentionTrace):
            if not isinstance(spec, Mapping):
                raise TypeError("an attention map is (trace, {'layer': ..., 'head': ..., 'query': ...})")
            return attention_map(first, processor=processor, **dict(spec))
        if isinstance(first, CrossAttentionTrace):
            return cross_attention_map(first, spec)
        if isinstance(first, PatchingTrace):
            if not isinstance(spec, Mapping):
                raise TypeError("a patching map is (trace, {'site': ..., 'layer': ...})")
            return patching_map(first, **dict(spec))
    if isinstance(map_, np.ndarray) or isinstance(map_, (list, tuple)):
        values = np.asarray(map_, dtype=np.float64)
        if tokens is not None:
            if values.shape != (len(tokens),):
                raise ValueError(f"the map has shape {values.shape}; give one score per position ({len(tokens)})")
            return Subject(name="map", scores=values, tokens=tokens)
        if values.ndim == 2:
            return _pixel_subject("pixel map", values, None, values.shape)
        raise ValueError("a 1-D numpy map needs tokens= (the TokenTable whose positions it scores)")
    raise TypeError(
        f"mmviz.evaluate cannot judge a {type(map_).__name__}: give an Attribution, (AttentionTrace, "
        "{'layer': ..., 'head': ..., 'query': ...}), (CrossAttentionTrace, word), (PatchingTrace, {'site': ..., "
        "'layer': ...}), a Subject, or a numpy array with tokens="
    )
