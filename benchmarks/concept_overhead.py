"""Cost of concept maps (ConceptAttention): uncaptured vs mmviz.capture vs mmviz.capture(concepts=[...]).

One run per family, Flux- and SD3-shaped transformers with random weights, narrower than the real ones so
that they run on a laptop CPU (Flux: 4 double- and 8 single-stream blocks; SD3: 8 joint blocks; 8 heads
of 64, a 32×32 latent, 64 T5 tokens, tiny text encoders and VAE). Variants, interleaved and repeated:

- ``uncaptured``: the pipeline as is;
- ``capture``: ``with mmviz.capture(pipe)`` (word maps);
- ``capture + 4 concepts``: ``with mmviz.capture(pipe, concepts=[4 words])`` (word and concept maps; the
  concepts are encoded once per call and carried through every joint block).

Prints the median CPU seconds of each variant (on a shared machine CPU time is the robust measure), the
ratio to ``uncaptured`` and to ``capture``, and the largest pixel difference to the uncaptured image.

Run: ``python benchmarks/concept_overhead.py [--repeats 5] [--steps 8] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Any

import numpy as np
import torch

import mmviz
from tests.capture.test_diffusion import clip_text, clip_tokenizer, t5_tokenizer, vae

PROMPT = "a red circle left of a blue square"
CONCEPTS = ["circle", "square", "horse", "bike"]


def t5_text(tok: Any) -> Any:
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tok), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, pad_token_id=0)
    return T5EncoderModel(cfg).eval()


def build(family: str) -> Any:
    import diffusers as d

    torch.manual_seed(0)
    if family == "flux":
        tok, tok2 = clip_tokenizer(), t5_tokenizer(64)
        transformer = d.FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=4, num_single_layers=8, attention_head_dim=64,
            num_attention_heads=8, joint_attention_dim=64, pooled_projection_dim=32, axes_dims_rope=(16, 24, 24),
        ).eval()  # fmt: skip
        pipe = d.FluxPipeline(
            transformer=transformer, scheduler=d.FlowMatchEulerDiscreteScheduler(), vae=vae(shift=0.0),
            text_encoder=clip_text(tok), tokenizer=tok, text_encoder_2=t5_text(tok2), tokenizer_2=tok2,
        )  # fmt: skip
    else:
        tok, tok2, tok3 = clip_tokenizer(), clip_tokenizer(), t5_tokenizer(64)
        transformer = d.SD3Transformer2DModel(
            sample_size=32, patch_size=2, in_channels=4, num_layers=8, attention_head_dim=64, num_attention_heads=8,
            joint_attention_dim=64, caption_projection_dim=512, pooled_projection_dim=64, out_channels=4,
            pos_embed_max_size=32,
        ).eval()  # fmt: skip
        pipe = d.StableDiffusion3Pipeline(
            transformer=transformer, scheduler=d.FlowMatchEulerDiscreteScheduler(), vae=vae(shift=0.0),
            text_encoder=clip_text(tok, proj=True), tokenizer=tok, text_encoder_2=clip_text(tok2, proj=True, seed=1),
            tokenizer_2=tok2, text_encoder_3=t5_text(tok3), tokenizer_3=tok3,
        )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe: Any, family: str, variant: str, steps: int) -> tuple[float, np.ndarray]:
    args = {"num_inference_steps": steps, "height": 64, "width": 64, "output_type": "np", "max_sequence_length": 64}
    args["generator"] = torch.Generator().manual_seed(0)  # vae_scale_factor 2: a 32×32 latent
    start = time.process_time()
    if variant == "uncaptured":
        images = pipe(PROMPT, **args).images
    else:
        with mmviz.capture(pipe, concepts=CONCEPTS if "concepts" in variant else None):
            images = pipe(PROMPT, **args).images
    return time.process_time() - start, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    warnings.simplefilter("ignore")
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    variants = ["uncaptured", "capture", "capture + 4 concepts"]
    for family in ("flux", "sd3"):
        pipe = build(family)
        run(pipe, family, "capture + 4 concepts", 1)  # warm-up
        times: dict[str, list[float]] = {v: [] for v in variants}
        images: dict[str, np.ndarray] = {}
        for _ in range(opts.repeats):
            for variant in variants:  # interleaved
                seconds, images[variant] = run(pipe, family, variant, opts.steps)
                times[variant].append(seconds)
        base = statistics.median(times["uncaptured"])
        plain = statistics.median(times["capture"])
        print(f"\n{family}: {opts.steps} steps, {opts.repeats} interleaved repeats, {opts.threads} thread(s)")
        print(f"{'variant':<22} {'CPU s':>7} {'× uncaptured':>13} {'× capture':>10} {'max pixel diff':>15}")
        for variant in variants:
            t = statistics.median(times[variant])
            diff = float(np.abs(images[variant] - images["uncaptured"]).max())
            print(f"{variant:<22} {t:7.2f} {t / base:13.3f} {t / plain:10.3f} {diff:15.3g}")


if __name__ == "__main__":
    main()
