"""Sparse-autoencoder features of a model's residual stream: ``mmviz.load_sae`` and ``mmviz.features``.

``sae = mmviz.load_sae(path)`` reads an SAE (SAELens or dictionary-learning layouts, safetensors or ``.npz``);
``mmviz.features(model, inputs, sae, site="language_model.layers.3")`` runs the model, encodes the residual
stream after that block at every position (text and image tokens alike) and returns a ``FeatureTrace``.
Sites are the dotted paths of the model's transformer blocks (``mmviz.steering.sites(model)`` lists them);
the site is the block's output. See ``docs/features.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mmviz._hf.run import progress_bar
from mmviz.capture import has_images, token_tables
from mmviz.data.features import FeatureTrace
from mmviz.features._load import MAX_SAE_BYTES, load_sae, sae_from_arrays
from mmviz.features._run import Accumulator, on_device, stop_after, table_of_row
from mmviz.features._sae import ACTIVATIONS, SAE

__all__ = ["ACTIVATIONS", "MAX_SAE_BYTES", "SAE", "features", "load_sae", "sae_from_arrays"]


def features(
    model: Any,
    inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    sae: SAE,
    processor: Any = None,
    *,
    site: str,
    k: int = 16,
    features: Sequence[int] | None = None,
    progress: bool = True,
) -> FeatureTrace:
    """Encodes the residual stream after one block with a sparse autoencoder, at every position.

    Example::

        sae = mmviz.load_sae("saes/llava-layer3")
        ft = mmviz.features(llava, inputs, sae, processor, site="language_model.layers.3", features=[812])
        ft.top(5)                    # [(feature, activation), ...] at position 5
        ft.activations(812)          # [positions]; ft.image_map(812) → [rows, cols] over the image patches
        ft.show(feature=812)         # FeatureView

    Args:
        model: a transformers model (decoder LM, VLM, vision tower...).
        inputs: the model's keyword inputs (a processor's or tokenizer's output), or a list of them: every
            batch row of every entry becomes one item of the trace, its positions after the previous ones.
        sae: the autoencoder (``mmviz.load_sae``); its ``d_in`` must equal the site's width.
        processor: the processor or tokenizer, for token texts and images.
        site: a block's dotted path, or a unique tail of it (``"language_model.layers.3"``, ``"h.5"``); the
            residual stream after that block is encoded.
        k: features kept per position.
        features: features whose activation is kept at every position (exact ``activations(f)``).
        progress: a ``tqdm.auto`` progress bar over a list of inputs.

    Returns:
        A ``FeatureTrace``.

    Raises:
        ValueError: unknown site (the message lists the valid ones); the SAE's ``d_in`` differs from the
            site's width; ``k`` or ``features`` out of range.
    """
    import torch

    from mmviz._hf.residual import record_residual
    from mmviz._hf.sites import find_site

    if not isinstance(sae, SAE):
        raise TypeError(f"sae must be an mmviz SAE (mmviz.load_sae(path)), got {type(sae).__name__}")
    if not isinstance(k, (int, np.integer)) or not 0 < k <= sae.d_sae:
        raise ValueError(f"k must be an int in 1 … d_sae ({sae.d_sae}), got {k!r}")
    named = np.asarray(sorted({int(f) for f in features or ()}), dtype=np.int64)
    if named.size and (named.min() < 0 or named.max() >= sae.d_sae):
        raise ValueError(f"features must lie in 0 … {sae.d_sae - 1} (the SAE's features), got {named.tolist()}")
    batches = [inputs] if isinstance(inputs, Mapping) else list(inputs)
    if not batches or not all(isinstance(b, Mapping) for b in batches):
        raise TypeError("inputs must be the model's keyword inputs (a dict) or a non-empty list of them")
    where = find_site(model, site)
    acc = Accumulator(sae, int(k), named)
    for batch in progress_bar(batches, len(batches), progress and len(batches) > 1, "features"):
        batch = on_device(batch, model)
        with (
            torch.no_grad(),
            record_residual(where.blocks, [where.state]) as seen,
            token_tables(model, processor, enabled=has_images(batch)) as run,
            stop_after(where.blocks[where.index]) as stopped,
        ):
            stopped.run(model, batch)
        if not seen[where.state]:
            raise ValueError(f"site {where.name!r} did not run during the model's forward: pick another site")
        hidden = seen[where.state][0]
        sae.check_width(hidden.shape[-1], f"site {where.name!r}")
        for row in range(hidden.shape[0]):
            acc.add(hidden[row], table_of_row(run.of_site(where.name), row, hidden.shape[1], batch, processor))
    return acc.trace(where.name)
