"""Activation patching (causal tracing): which layers, positions and image patches carry an answer.

``mmviz.patch(model, clean, corrupt, metric=...)`` runs a clean and a corrupted input, then reruns the
corrupted one with one activation at a time restored to its clean value, and measures how much of the
clean metric comes back. Sites are the residual stream entering each block, the attention and MLP outputs
and single attention heads; columns are positions of the sequence (text tokens and image tokens) or groups
of them (image regions). ``method="exact"`` batches the patched runs (one cell of the grid per batch row);
``method="attribution"`` estimates every cell from one gradient. The result is a ``PatchingTrace``
(numpy only). Every run leaves the model as it found it (hooks removed, train/eval mode and
``requires_grad`` flags restored), also when it raises or is interrupted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["METHODS", "patch"]

METHODS = ("exact", "attribution")
"""The methods ``patch`` accepts."""


def patch(
    model: Any,
    clean: Any,
    corrupt: Any,
    *,
    metric: Any,
    sites: str | Sequence[str] = "residual",
    layers: Sequence[int] | None = None,
    positions: Any = None,
    region: tuple[int, int] | None = None,
    method: str = "exact",
    processor: Any = None,
    corrupt_positions: Any = None,
    noise_scale: float = 3.0,
    seed: int = 0,
    position: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> Any:
    """Restores clean activations into a corrupted run, one (site, layer, position) at a time.

    Example::

        clean = processor(images=image, text="<image> what colour is the circle ?", return_tensors="pt")
        res = mmviz.patch(vlm, clean, "mask", metric=" red", processor=processor, region=(2, 2))
        res.effects            # [sites, layers, columns], 0 = corrupted, 1 = clean
        res.patch_map("residual", layer=1)   # [rows, cols] on the image's patch grid
        res.save("patching.mmviz")

    Args:
        model: a transformers model whose blocks sit in one ``ModuleList``: a causal LM (GPT-2, Llama, ...),
            an encoder (BERT, ...), a VLM (LLaVA, Qwen2-VL, PaliGemma: its language model is patched) or a
            vision model (ViT).
        clean: the processor's output for **one** example.
        corrupt: the corrupted input: a processor output of the same layout (same keys and shapes, e.g. the
            same prompt with another subject, or another image); ``"noise"``: Gaussian noise added to the
            embeddings (the residual stream entering the first block, image features included) at
            ``corrupt_positions``, with a standard deviation of ``noise_scale`` times that of the clean
            embeddings there (causal tracing's corruption); ``"mask"``: the pixels of the image patches at
            ``corrupt_positions`` set to 0 in the processor's normalised space, i.e. the mean colour.
        metric: what is measured on each run: a token (string or id) whose log-probability at ``position``
            is read, a label name or class index for a classifier; a pair ``(a, b)``: the logit difference
            ``logit(a) − logit(b)``; or a callable ``f(outputs) -> [batch]`` tensor.
        sites: ``"residual"`` (the hidden state entering each block), ``"attention"`` (the attention
            module's output), ``"mlp"`` (the MLP's output), ``"head"`` (each attention head's output before
            the output projection, one site per head: ``"head.0"``, ...), or several of them.
        layers: block indices to patch (default: all; negative counts from the end).
        positions: the grid's columns: ``None`` (every position), a kind (``"image"``, ``"text"``), a list
            of positions (one column each) or a list of lists (positions restored together, one column each).
        region: ``(rows, cols)``: group the chosen image positions into blocks of that many patches.
        method: ``"exact"`` (one patched forward per cell, batched) or ``"attribution"`` (attribution
            patching: the gradient of the metric at the corrupted run times the difference of activations,
            two forwards and one backward for the whole grid; see the docs for when it misleads).
        processor: the processor or tokenizer (token texts, metric tokens, image layout).
        corrupt_positions: the positions ``"noise"`` and ``"mask"`` corrupt: a kind or a list of positions
            (default: the image tokens when there are any, else every text token).
        noise_scale: the noise's standard deviation in units of the clean embeddings' (causal tracing uses 3).
        seed: seed of the noise (drawn once: every run sees the same corruption).
        position: the position whose logits the metric reads (default: the last real token).
        batch_size: patched runs per forward pass; bounds memory.
        progress: ``tqdm.auto`` progress bar over the batches of long sweeps.

    Returns:
        A ``PatchingTrace``.

    Raises:
        ValueError: a batch of several examples, inputs of different layouts, an unknown site or method, a
            metric token that is not one token, positions outside the input.
    """
    from mmviz._hf.run import prepared
    from mmviz._hf.tokens import tokenizer_of
    from mmviz.data import PatchingTrace
    from mmviz.data.patching import normalise_effects
    from mmviz.patching._inputs import Metric, Runs, as_dict, columns, corrupt_pixels, select_positions
    from mmviz.patching._sites import SITE_KINDS, find_stack
    from mmviz.patching._sweep import Grid, Sweep

    if method not in METHODS:
        raise ValueError(f"unknown patching method {method!r}; use one of {', '.join(METHODS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    site_kinds = [sites] if isinstance(sites, str) else list(sites)
    for kind in site_kinds:
        if kind not in SITE_KINDS:
            raise ValueError(f"unknown site {kind!r}; use one of {', '.join(SITE_KINDS)}")
    clean_inputs = as_dict(clean, "clean")
    stack = find_stack(model)
    layer_list = _layers(layers, len(stack))
    tokenizer = tokenizer_of(processor)
    device = _device(model)

    with prepared(model):
        tokens = _table(model, processor, Runs(clean_inputs, clean_inputs, device).clean)
        noise = None
        if isinstance(corrupt, str):
            if corrupt not in ("noise", "mask"):
                raise ValueError(f"corrupt={corrupt!r}: give a corrupted input, 'noise' or 'mask'")
            default = "image" if (tokens.kind == "image").any() else "text"
            chosen = select_positions(
                tokens, default if corrupt_positions is None else corrupt_positions, "corrupt_positions"
            )
            if corrupt == "mask":
                corrupt_inputs = corrupt_pixels(clean_inputs, tokens, chosen)
                corruption = f"mask: {len(chosen)} image patch(es) set to the mean colour"
            else:
                corrupt_inputs = clean_inputs
                noise = (chosen, float(noise_scale), int(seed))
                corruption = f"noise: {noise_scale:g}× the embeddings' std on {len(chosen)} position(s)"
        else:
            corrupt_inputs = as_dict(corrupt, "corrupt")
            corruption = "input"
        runs = Runs(clean_inputs, corrupt_inputs, device)
        grid_sites = _site_rows(site_kinds, stack.heads)
        grid = Grid(grid_sites, tuple(layer_list), tuple(columns(tokens, positions, region)))
        sweep = Sweep(model, stack, grid, runs, Metric(metric, model, tokenizer, runs.clean, position), noise)
        clean_value = sweep.record_clean()
        if sweep.seq != len(tokens):
            raise ValueError(
                f"mmviz.patch: the patched stack {stack.name} holds {sweep.seq} positions but the input's token "
                f"table has {len(tokens)}; this model's layout is not supported yet"
            )
        if method == "exact":
            corrupt_value = sweep.corrupt_metric()
            patched = sweep.exact(batch_size, progress)
        else:
            corrupt_value, patched = sweep.attribution()
    info = {
        "model": type(model).__name__,
        "model_type": getattr(getattr(model, "config", None), "model_type", ""),
        "stack": stack.name,
        "batch_size": batch_size,
    }
    if noise is not None and sweep.noise is not None:
        info.update(noise_scale=float(noise_scale), noise_std=sweep.noise.std, seed=int(seed))
    return PatchingTrace(
        effects=normalise_effects(patched, clean_value, corrupt_value),
        patched=patched,
        sites=tuple(s.name for s in grid_sites),
        layers=np.asarray(layer_list),
        groups=grid.columns,
        tokens=tokens,
        clean_metric=clean_value,
        corrupt_metric=corrupt_value,
        metric=sweep.metric.description,
        method=method,
        corruption=corruption,
        info=info,
    )


def _layers(layers: Sequence[int] | None, n: int) -> list[int]:
    if layers is None:
        return list(range(n))
    out = []
    for layer in layers:
        if not -n <= int(layer) < n:
            raise ValueError(f"layer {layer} is out of range: the model has {n} blocks")
        out.append(int(layer) % n)
    return list(dict.fromkeys(out))


def _site_rows(kinds: list[str], heads: int | None) -> tuple[Any, ...]:
    from mmviz.patching._sweep import Site

    out: list[Site] = []
    for kind in dict.fromkeys(kinds):
        if kind != "head":
            out.append(Site(kind, kind))
            continue
        if not heads:
            raise ValueError("cannot patch single heads: the number of attention heads of this model is unknown")
        out.extend(Site(f"head.{h}", "head", h) for h in range(heads))
    return tuple(out)


def _device(model: Any) -> Any:
    import torch

    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _table(model: Any, processor: Any, inputs: dict[str, Any]) -> Any:
    """The token table of the patched sequence.

    Text alone is read from the ids; with images, from ``mmviz.capture`` (first layer only, one forward).
    """
    import torch

    from mmviz._hf.tokens import position_table, text_table, tokenizer_of
    from mmviz.capture import has_images, token_tables

    ids = inputs.get("input_ids")
    # image tokens: their (image, row, col) come from capture's layout of this model family
    needed = not isinstance(ids, torch.Tensor) or has_images(inputs)
    with torch.no_grad(), token_tables(model, processor, enabled=needed) as run:
        if needed:
            model(**inputs)
    tables = run.tables
    if "text" in tables:
        return tables["text"][0]
    if isinstance(ids, torch.Tensor):
        mask = inputs.get("attention_mask")
        return text_table(ids[0].cpu(), None if mask is None else mask[0].cpu(), tokenizer_of(processor))
    patches = [v[0] for k, v in tables.items() if k.endswith(".patches")]
    return patches[0] if patches else position_table(0)
