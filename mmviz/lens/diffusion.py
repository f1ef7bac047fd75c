"""The Diffusion Lens (Toker et al., 2024): what a text-to-image pipeline draws from each text-encoder layer.

For each layer ``l`` the pipeline runs once, from the same initial noise, while the text encoder's last block
hands on hidden state ``l`` instead of its own output: the encoder's final norm and pooling then read state
``l``, and the denoiser is conditioned on it (as ``clip_skip`` does for one layer). Every text-encoder call
of the run is changed, the unconditional prompt of classifier-free guidance included. The last layer's image
is the pipeline's own.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mmviz._hf.residual import edit_residual, evaluating, find_blocks, record_residual
from mmviz.data.lens import DiffusionLensTrace
from mmviz.lens.logit import resolve_layers

__all__ = ["MAX_STEPS", "diffusion_lens"]

MAX_STEPS = 400
"""Denoising steps (layers × steps per image) a Diffusion Lens may run unless ``max_steps`` says more."""


def _uint8(image: Any) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    return array[..., :3]


def diffusion_lens(
    pipe: Any,
    prompt: str,
    *,
    layers: Sequence[int] | None,
    options: dict[str, Any],
    max_steps: int | None,
) -> DiffusionLensTrace:
    """``mmviz.logit_lens`` for a diffusers pipeline with one text encoder (see there)."""
    if not isinstance(prompt, str):
        raise TypeError(f"the Diffusion Lens draws one prompt (a string), not {type(prompt).__name__}")
    encoder = getattr(pipe, "text_encoder", None)
    if not isinstance(encoder, torch.nn.Module) or getattr(pipe, "text_encoder_2", None) is not None:
        raise ValueError(
            f"the Diffusion Lens needs a pipeline with one text encoder (Stable Diffusion 1.x/2.x, PixArt, the "
            f"teaching pipeline); {type(pipe).__name__} has "
            + ("several" if getattr(pipe, "text_encoder_2", None) is not None else "none")
        )
    options = dict(options)
    seed = int(options.pop("seed", 0))
    if "num_inference_steps" not in options:
        default = inspect.signature(pipe.__call__).parameters.get("num_inference_steps")
        options["num_inference_steps"] = default.default if default is not None and default.default else 50
    steps = int(options["num_inference_steps"])
    _, blocks = find_blocks(encoder)
    last = len(blocks)
    states = resolve_layers(layers, last + 1)
    budget = MAX_STEPS if max_steps is None else int(max_steps)
    if len(states) * steps > budget:
        raise ValueError(
            f"the Diffusion Lens would run {len(states)} images × {steps} steps = {len(states) * steps} denoising "
            f"steps, over max_steps={budget}: pass fewer layers=[...], fewer steps "
            "(generate={'num_inference_steps': ...}) or a larger max_steps="
        )
    device = getattr(pipe, "device", torch.device("cpu"))
    images = []
    with evaluating(encoder):
        for state in states:
            generator = torch.Generator(device="cpu").manual_seed(seed)
            with record_residual(blocks, [state]) as seen:

                def recorded(hidden: torch.Tensor, state: int = state) -> torch.Tensor:
                    return seen[state][-1]  # this call's state, recorded before the last block ran

                # the last state itself needs no edit (and is recorded only after edits of its block run)
                edit = contextlib.nullcontext() if state == last else edit_residual(blocks, last, recorded)
                with edit:
                    out = pipe(prompt, generator=generator, output_type="np", **options)
            images.append(_uint8(out.images[0]))
    info = {"pipeline": type(pipe).__name__, "steps": steps, "seed": seed, "device": str(device)}
    return DiffusionLensTrace(np.stack(images), tuple(states), prompt, _prompt_table(pipe, prompt), info)


def _prompt_table(pipe: Any, prompt: str) -> Any:
    from mmviz._hf.tokens import text_table

    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is None:
        from mmviz._hf.tokens import position_table

        return position_table(0)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"][0]
    return text_table(ids, None, tokenizer)
