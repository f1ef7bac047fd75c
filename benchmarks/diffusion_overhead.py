"""Cost of recording diffusion cross-attention: uncaptured vs mmviz.capture vs store-everything.

One run, 20 DDIM steps with classifier-free guidance, through a StableDiffusionPipeline whose UNet has
the SD 1.x shape (4 levels, 2 layers per block, 16 cross-attention layers, 8 heads, 77 CLIP tokens of
width 768) with random weights, half SD's channels (160, 320, 640, 640) and a 16×16 latent (128×128
image, a tiny VAE with 8× downsampling) so that it runs on a laptop CPU (``--channels``/``--latent``
change that). Narrow UNets overstate the relative cost of cross-attention, whose share grows with
tokens / channels. Variants, interleaved and repeated:

- ``uncaptured``: the pipeline as is;
- ``mmviz.capture``: ``with mmviz.capture(pipe)`` (head mean, prompt tokens, per step and layer);
- ``mmviz.capture(tokens="all")``: also keeps the 77-token padding;
- ``store everything``: a prompt-to-prompt-style ``AttentionStore`` that keeps every head's map of every
  layer and step (``[batch·heads, h·w, 77]`` probabilities, as ``attn.get_attention_scores`` returns them).

Prints CPU and wall time (medians of the repeats; on a shared machine CPU time is the robust one), their
ratio to uncaptured, the peak resident memory of one call above the level before it (each variant in a
fresh process, after a one-step warm-up), the bytes of maps kept and the largest pixel difference to the
uncaptured image; then the kept bytes for UNets with 4, 8 and 16 heads (2 steps), which do not change with
heads for mmviz.

Run: ``python benchmarks/diffusion_overhead.py [--repeats 3] [--steps 20] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import warnings
from typing import Any

import numpy as np
import torch

import mmviz

PROMPT = "a photograph of an astronaut riding a horse on the moon"
WORDS = sorted(set(PROMPT.split()) | {"red", "circle", "blue", "square", "left", "of"})


def tokenizer() -> Any:
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<bos>", *WORDS, "<eos>"])}
    tk = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<eos>", unk_token="<unk>",
        model_max_length=77,
    )  # fmt: skip


def build(heads: int = 8, channels: tuple[int, ...] = (160, 320, 640, 640), latent: int = 16) -> Any:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=latent,
        block_out_channels=channels,
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=heads,  # diffusers' UNet reads this as the number of heads (SD 1.x: 8)
        norm_num_groups=32,
    ).eval()
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=latent * 8,
    ).eval()
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=768,
            intermediate_size=1024,
            num_hidden_layers=1,
            num_attention_heads=8,
            max_position_embeddings=77,
            eos_token_id=tok.eos_token_id,
            bos_token_id=2,
            pad_token_id=tok.pad_token_id,
        )
    ).eval()
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=DDIMScheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


class AttentionStore:
    """Prompt-to-prompt's store: every ``attn2`` map of every head, layer and step, kept as computed."""

    def __init__(self) -> None:
        self.maps: list[torch.Tensor] = []

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)  # [batch·heads, h·w, tokens]
        self.maps.append(probs.detach().clone())
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        return attn.to_out[1](attn.to_out[0](out))

    @property
    def nbytes(self) -> int:
        return sum(m.numel() * m.element_size() for m in self.maps)


class PeakRSS:
    """Peak resident set size above the level at entry, sampled every millisecond."""

    def __enter__(self) -> PeakRSS:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self._rss()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.001)

    def __exit__(self, *exc: Any) -> None:
        self._stop = True
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def delta(self) -> int:
        return self.peak - self.start


def run(pipe: Any, variant: str, steps: int, memory: bool = False) -> dict[str, Any]:
    """One pipeline call: wall and CPU seconds, peak memory above the start (when sampled), bytes kept."""
    args = {"num_inference_steps": steps, "output_type": "np", "generator": torch.Generator().manual_seed(0)}
    kept = 0
    sampler = PeakRSS() if memory else None
    if sampler is not None:
        sampler.__enter__()
    wall, cpu = time.perf_counter(), time.process_time()
    if variant == "uncaptured":
        image = pipe(PROMPT, **args).images
    elif variant.startswith("mmviz"):
        options = {"tokens": "all"} if "all" in variant else {}
        with mmviz.capture(pipe, **options) as cap:
            image = pipe(PROMPT, **args).images
        kept = cap.cross_attention.nbytes
    else:
        store = AttentionStore()
        originals = pipe.unet.attn_processors
        pipe.unet.set_attn_processor({k: store if k.endswith("attn2.processor") else v for k, v in originals.items()})
        try:
            image = pipe(PROMPT, **args).images
        finally:
            pipe.unet.set_attn_processor(originals)
        kept = store.nbytes
        del store
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if sampler is not None:
        sampler.__exit__()
    return {"wall": wall, "cpu": cpu, "peak": sampler.delta if sampler else 0, "kept": kept, "image": image}


VARIANTS = ["uncaptured", "mmviz.capture", 'mmviz.capture(tokens="all")', "store everything"]


def denoiser_alone(pipe: Any, repeats: int, calls: int = 10) -> tuple[list[float], list[float]]:
    """CPU seconds of ``calls`` UNet calls, uncaptured and captured, interleaved ``repeats`` times."""
    unet = pipe.unet
    sample = torch.randn(
        2, 4, unet.config.sample_size, unet.config.sample_size, generator=torch.Generator().manual_seed(0)
    )
    sample[1] = sample[0]  # [uncond; cond] share the latents, as in the pipeline
    ids = pipe.tokenizer([PROMPT, ""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        context = pipe.text_encoder(ids).last_hidden_state

    def loop() -> None:
        for i in range(calls):
            unet(sample, 999 - i, encoder_hidden_states=context)

    plain: list[float] = []
    captured: list[float] = []
    with torch.no_grad():
        loop()
        for _ in range(repeats):
            start = time.process_time()
            loop()
            plain.append(time.process_time() - start)
            start = time.process_time()
            with mmviz.capture(unet):
                loop()
            captured.append(time.process_time() - start)
    return plain, captured


def memory_child(variant: str, steps: int, channels: tuple[int, ...], latent: int) -> None:
    """In a fresh process: build, warm up, then one sampled run; prints peak memory above the level before it."""
    pipe = build(channels=channels, latent=latent)
    run(pipe, variant, 1)  # warm-up: one-time imports and initialisation are not the call's memory
    gc.collect()
    result = run(pipe, variant, steps, memory=True)
    print(json.dumps({"peak": result["peak"], "kept": result["kept"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--channels", default="160,320,640,640", help="UNet block channels (SD 1.x: 320,640,1280,1280)")
    parser.add_argument("--latent", type=int, default=16, help="latent side (SD 1.x at 512 px: 64)")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    warnings.filterwarnings("ignore")
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    channels = tuple(int(c) for c in opts.channels.split(","))
    if opts.memory_child:
        memory_child(opts.memory_child, opts.steps, channels, opts.latent)
        return

    pipe = build(channels=channels, latent=opts.latent)
    run(pipe, "uncaptured", 2)  # warm-up
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for _ in range(opts.repeats):
        for variant in VARIANTS:
            results[variant].append(run(pipe, variant, opts.steps))
    peaks = {}
    for variant in VARIANTS:
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", variant, "--steps", str(opts.steps),
             "--threads", str(opts.threads), "--channels", opts.channels, "--latent", str(opts.latent)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        peaks[variant] = json.loads(out.stdout.strip().splitlines()[-1])["peak"]

    n_layers = sum(k.endswith("attn2.processor") for k in pipe.unet.attn_processors)
    print(
        f"SD-1.x-shaped UNet (channels {opts.channels.replace(',', '/')}, {n_layers} cross-attention layers, 8 heads, "
        f"77 tokens), {opts.latent}×{opts.latent} latent, {opts.steps} DDIM steps with CFG, {opts.repeats} repeats "
        f"interleaved, torch threads {opts.threads}, CPU ({os.cpu_count()} cores, shared: CPU seconds are the "
        "robust measure)"
    )
    base_cpu = statistics.median(r["cpu"] for r in results["uncaptured"])
    base_wall = statistics.median(r["wall"] for r in results["uncaptured"])
    header = (
        f"{'variant':<28} {'CPU s':>7} {'× uncapt.':>9} {'wall s':>7} {'× uncapt.':>9} {'peak MiB':>9} "
        f"{'kept MiB':>9} {'max |Δimage|':>12}"
    )
    print(header)
    print("-" * len(header))
    for variant in VARIANTS:
        cpu = statistics.median(r["cpu"] for r in results[variant])
        wall = statistics.median(r["wall"] for r in results[variant])
        kept = results[variant][-1]["kept"] / 2**20
        diff = float(np.abs(results[variant][-1]["image"] - results["uncaptured"][-1]["image"]).max())
        print(
            f"{variant:<28} {cpu:>7.2f} {cpu / base_cpu:>9.3f} {wall:>7.2f} {wall / base_wall:>9.3f} "
            f"{peaks[variant] / 2**20:>9.1f} {kept:>9.2f} {diff:>12.1e}"
        )
    print(
        "(CPU s, wall s: medians; peak MiB: resident memory above the level before the call, "
        "in a fresh warmed-up process)"
    )

    print("\nthe denoiser alone (UNet calls with a doubled CFG batch, no VAE or text encoder), CPU s of 10 calls:")
    plain, captured = denoiser_alone(pipe, opts.repeats + 2)
    print(
        f"  uncaptured min {min(plain):.3f} median {statistics.median(plain):.3f}; mmviz.capture min "
        f"{min(captured):.3f} median {statistics.median(captured):.3f}; ratio of minima "
        f"{min(captured) / min(plain):.3f}, of medians {statistics.median(captured) / statistics.median(plain):.3f}"
    )

    print("\nbytes of maps kept, 2 steps, by number of heads (UNet channels 32/64/128/128, same latent):")
    print(f"{'heads':>5} {'mmviz.capture':>14} {'store everything':>17}")
    for heads in (4, 8, 16):
        small = build(heads, channels=(32, 64, 128, 128), latent=opts.latent)
        ours = run(small, "mmviz.capture", 2)["kept"]
        theirs = run(small, "store everything", 2)["kept"]
        print(f"{heads:>5} {ours:>14,d} {theirs:>17,d}")


if __name__ == "__main__":
    main()
