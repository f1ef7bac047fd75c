"""CLIP and SigLIP image embeddings decomposed into direct contributions of layers, heads and patches.

``mmviz.decompose(model, inputs, processor, texts=[...])`` runs the vision tower once and writes the image
embedding as the sum of what each part writes into the residual stream, read out through the tower's final
norm (linearised with the run's own statistics, as TextSpan does) and projection: the input embedding, each
block's MLP, each block's attention split by head and by source position, and the fixed terms. The result
is a ``DecompositionTrace`` (numpy only). See ``docs/decompose.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

__all__ = ["decompose"]

DEFAULT_BUDGET = 256 * 2**20
"""Bytes the kept arrays of a decomposition may take (the full per-head, per-patch terms need the most)."""


def decompose(
    model: Any,
    inputs: Any,
    processor: Any = None,
    *,
    texts: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    batch_index: int = 0,
    batch_size: int = 8,
    budget: int = DEFAULT_BUDGET,
) -> Any:
    """Writes a CLIP or SigLIP image embedding as the sum of the direct contributions of its parts.

    Example::

        clip, processor = mmviz.teaching.load_clip()
        inputs = processor(images=images, return_tensors="pt")          # one image or a batch
        dec = mmviz.decompose(clip, inputs, processor, texts=["a red shape", "a circle", "a square"])
        dec.by_head()            # [layers, heads, dim]
        dec.scores("a circle")   # [layers, heads] each head's share of the cosine similarity
        dec.describe(k=3)        # TextSpan: each head's texts over the batch's images

    Args:
        model: a ``CLIPModel``, ``CLIPVisionModelWithProjection``, ``CLIPVisionModel``, ``SiglipModel`` or
            ``SiglipVisionModel`` (with its pooling head).
        inputs: the processor's output (a mapping with ``pixel_values`` ``[images, 3, H, W]``), a pixel
            tensor, or PIL images (then ``processor`` prepares them).
        processor: the model's processor: prepares PIL images and texts, and un-normalises the pixels
            shown in views.
        texts: caption texts to score the image against (``scores``, ``patch_scores``) and to describe
            heads with (``describe``); needs a model with a text tower.
        layers: blocks whose full ``[heads, positions, dim]`` terms to keep. ``None`` keeps every block's
            when they fit in ``budget`` and none otherwise (head, patch and per-text map reductions are
            always kept).
        batch_index: the image detailed by patch (every image of the batch gets its per-head terms).
        batch_size: images run through the tower at once (what the hooks hold is a few times one forward's
            activations for this many images).
        budget: bytes the kept arrays may take.

    Returns:
        A ``DecompositionTrace``.

    Raises:
        CaptureError: the model is not a supported tower, or its computation is not the one decomposed
            (the message says where).
        BudgetError: the ``layers`` asked for do not fit in ``budget``.
    """
    import torch

    from mmviz._hf.modules import stack_names
    from mmviz._hf.tokens import images_from_pixels, patch_table
    from mmviz.data.decomposition import DecompositionTrace
    from mmviz.decompose._towers import find_tower
    from mmviz.errors import CaptureError

    tower = find_tower(model)
    parameter = next(tower.vision.parameters())
    pixels = _pixel_values(inputs, processor).to(parameter.device)
    if not 0 <= batch_index < pixels.shape[0]:
        raise IndexError(f"batch_index {batch_index} out of range: the inputs hold {pixels.shape[0]} image(s)")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive number of images, not {batch_size!r}")
    was_training = model.training
    try:
        model.eval()
        text_emb = _text_embeddings(model, processor, list(texts)) if texts else None
        with torch.no_grad():
            main, batch_heads, keep = _decompose_batches(
                tower, pixels, batch_index, text_emb, layers, budget, batch_size
            )
    finally:
        model.train(was_training)
    assert main.patches is not None and main.maps is not None
    n_pos = main.patches.shape[1]
    grid = (pixels.shape[-2] // _patch_size(tower), pixels.shape[-1] // _patch_size(tower))
    image = images_from_pixels(pixels[batch_index : batch_index + 1], processor)[0]
    trace = DecompositionTrace(
        embedding=main.embedding.cpu().numpy(),
        embed=main.embed.cpu().numpy(),
        mlp=main.mlp.cpu().numpy(),
        heads=main.heads.cpu().numpy(),
        bias=main.bias.cpu().numpy(),
        constant=main.constant.cpu().numpy(),
        tokens=patch_table(n_pos, grid, image),
        patches=main.patches.cpu().numpy(),
        maps=main.maps.cpu().numpy(),
        extra={k: v.cpu().numpy() for k, v in main.extra.items()},
        detail=torch.stack([main.detail[i] for i in keep]).cpu().numpy() if keep else None,
        detail_layers=keep,
        texts=tuple(texts or ()),
        text_embeddings=text_emb.cpu().numpy() if text_emb is not None else None,
        batch_heads=batch_heads.cpu().numpy(),
        info={
            "model": type(model).__name__,
            "family": tower.family,
            "batch_index": batch_index,
            "module": stack_names(model).get(id(tower.blocks[0].self_attn), ("", 0))[0],
        },
    )
    error = float(abs(trace.total().astype("float64") - trace.embedding).max() / max(abs(trace.embedding).max(), 1e-12))
    trace.info["relative_error"] = error
    if error > max(1e-3, 8 * torch.finfo(parameter.dtype).eps):  # half-precision runs round more
        raise CaptureError(
            f"decompose: the contributions sum to the embedding only within {error:.1e} (relative); the tower "
            "computes something the decomposition does not model. Please report the model class."
        )
    return trace


def _decompose_batches(
    tower: Any,
    pixels: Any,
    batch_index: int,
    text_emb: Any,
    layers: Sequence[int] | None,
    budget: int,
    batch_size: int,
) -> tuple[Any, Any, tuple[int, ...]]:
    """Runs the tower ``batch_size`` images at a time, the detailed image first.

    Returns:
        The detailed image's ``ImageTerms``, ``[images, layers, heads, dim]`` every image's head terms (in
        the inputs' order) and the layers whose full terms were kept.
    """
    import torch

    from mmviz.decompose._run import decompose_image, run

    n = pixels.shape[0]
    order = [batch_index] + [i for i in range(n) if i != batch_index]
    heads: list[Any] = [None] * n
    main: Any = None
    folds = None
    keep: tuple[int, ...] = ()
    for start in range(0, n, batch_size):
        chunk = order[start : start + batch_size]
        rec = run(tower, pixels[chunk])
        assert rec.embedding is not None and rec.stream0 is not None
        first = 0
        if main is None:
            first_attention: Any = tower.blocks[0].self_attn
            shape = _Shape(
                len(tower.blocks),
                int(first_attention.num_heads),
                rec.stream0.shape[1],
                rec.embedding.shape[-1],
                0 if text_emb is None else text_emb.shape[0],
                n,
            )
            keep = _kept_layers(shape, layers, budget)
            directions = torch.nn.functional.normalize(rec.embedding[:1], dim=-1)
            if text_emb is not None:
                directions = torch.cat([directions, torch.nn.functional.normalize(text_emb.to(directions), dim=-1)])
            main, folds = decompose_image(tower, rec, 0, directions=directions, detail_layers=keep)
            heads[batch_index] = main.heads
            first = 1
        for j in range(first, len(chunk)):
            heads[chunk[j]] = decompose_image(tower, rec, j, folds=folds)[0].heads
        del rec
    return main, torch.stack(heads), keep


class _Shape(NamedTuple):
    layers: int
    heads: int
    positions: int
    dim: int
    texts: int
    images: int


def _kept_layers(shape: _Shape, layers: Sequence[int] | None, budget: int) -> tuple[int, ...]:
    """The layers whose full terms fit in ``budget`` bytes next to the reductions always kept."""
    from mmviz.errors import BudgetError

    s = shape
    base = 4 * (s.layers * s.positions * s.dim + (1 + s.texts) * s.layers * s.heads * s.positions)
    base += 4 * s.images * s.layers * s.heads * s.dim
    per_layer = 4 * s.heads * s.positions * s.dim
    if layers is None:
        return tuple(range(s.layers)) if base + s.layers * per_layer <= budget else ()
    keep = tuple(sorted({int(i) % s.layers for i in layers}))
    if base + len(keep) * per_layer > budget:
        raise BudgetError(
            f"keeping layers {list(keep)} needs {(base + len(keep) * per_layer) / 2**20:.1f} MiB, over the "
            f"budget of {budget / 2**20:.1f} MiB: keep fewer layers (layers=[...]) or raise budget="
        )
    return keep


def _patch_size(tower: Any) -> int:
    config = getattr(tower.vision, "config", None)
    size = getattr(config, "patch_size", None)
    if not isinstance(size, int):
        raise ValueError("decompose: the vision tower's config has no integer patch_size")
    return size


def _pixel_values(inputs: Any, processor: Any) -> Any:
    import torch

    if isinstance(inputs, torch.Tensor):
        pixels = inputs
    elif isinstance(inputs, Mapping) or hasattr(inputs, "keys"):
        if "pixel_values" not in inputs:
            raise ValueError(
                f"decompose: the inputs hold no pixel_values (keys: {sorted(inputs.keys())}); pass the processor's "
                "output for the images, e.g. processor(images=image, return_tensors='pt')"
            )
        pixels = inputs["pixel_values"]
    else:
        if processor is None:
            raise ValueError(
                "decompose: inputs are neither pixel_values nor a processor's output; pass processor= to "
                "prepare images, or pass processor(images=..., return_tensors='pt')"
            )
        images = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
    if pixels.ndim != 4:
        raise ValueError(f"decompose: pixel_values must be [images, channels, H, W], got shape {tuple(pixels.shape)}")
    return pixels


def _text_embeddings(model: Any, processor: Any, texts: list[str]) -> Any:
    import torch

    from mmviz._hf.tokens import tokenizer_of

    tokenizer = tokenizer_of(processor)
    if tokenizer is None or not hasattr(model, "get_text_features"):
        raise ValueError(
            "decompose: texts= needs a model with a text tower (CLIPModel, SiglipModel) and a processor "
            "holding its tokenizer"
        )
    padding: Any = True
    options: dict[str, Any] = {}
    if "siglip" in type(model).__name__.lower():  # SigLIP's text tower was trained on max-length padding
        padding = "max_length"
        options["max_length"] = int(model.config.text_config.max_position_embeddings)
    encoded = tokenizer(texts, padding=padding, return_tensors="pt", **options)
    with torch.no_grad():
        out = model.get_text_features(**{k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask")})
    return (out if isinstance(out, torch.Tensor) else out.pooler_output).detach().float()
