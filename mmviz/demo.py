"""``mmviz demo``: the three teaching models on a few shapes scenes, in one offline HTML report.

For each scene the report holds:

- the teaching CLIP's vision-tower attention (``mmviz.capture``), CLS row pinned;
- the teaching VLM answering a question (``mmviz.capture`` around ``generate``) linked, in one
  `mmviz.Dashboard`, to two attributions of its answer (integrated gradients and gradient-weighted
  attention relevance, ``mmviz.attribute``);
- the teaching diffusion model drawing the scene's caption (``mmviz.capture`` around the pipeline),
  with each word's cross-attention per denoising step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmviz.errors import MMVizError

_SCENES = 2
_SEED = 11
_DIFFUSION_STEPS = 20
_DIFFUSION_NOISE_SEED = 3
"""First noise seed of the drawings (scene i uses this + i): with it the teaching model draws both objects of
each demo caption in their colours (it misses about 2% of objects; seed 0 lost the first scene's blue star)."""


@dataclass
class _Models:
    clip: Any
    clip_processor: Any
    vlm: Any
    vlm_processor: Any
    pipe: Any


def teaching_weights_available() -> bool:
    """Whether the trained teaching CLIP, VLM and diffusion weights ship with this install."""
    from mmviz.teaching import WEIGHTS_DIR

    return (
        all((WEIGHTS_DIR / name / "config.json").is_file() for name in ("clip", "vlm"))
        and (WEIGHTS_DIR / "diffusion" / "unet" / "config.json").is_file()
    )


def _teaching_models() -> _Models:
    from mmviz import teaching

    clip, clip_processor = teaching.load_clip()
    vlm, vlm_processor = teaching.load_vlm()
    return _Models(clip, clip_processor, vlm, vlm_processor, teaching.load_diffusion())


def _random_models() -> _Models:
    """The teaching architectures with random weights (seeded)."""
    import torch
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, LlavaConfig, LlavaForConditionalGeneration

    from mmviz.teaching._common import clip_config_dict, image_processor, random_text_encoder
    from mmviz.teaching._pipeline import ShapesDiffusionPipeline
    from mmviz.teaching._tokenizer import build_tokenizer
    from mmviz.teaching._vlm import vlm_config_dict, vlm_processor
    from mmviz.teaching.train_diffusion import scheduler_config, unet_config

    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(**clip_config_dict())).eval()
    clip_processor = CLIPProcessor(image_processor=image_processor(), tokenizer=build_tokenizer("clip"))
    vlm = LlavaForConditionalGeneration(LlavaConfig(**vlm_config_dict())).eval()
    unet: Any = UNet2DConditionModel(**unet_config())
    pipe: Any = ShapesDiffusionPipeline(
        unet=unet.eval(),
        text_encoder=random_text_encoder(),
        tokenizer=build_tokenizer("clip"),
        scheduler=DDIMScheduler(**scheduler_config()),
    )
    pipe.set_progress_bar_config(disable=True)
    return _Models(clip, clip_processor, vlm, vlm_processor(build_tokenizer("vlm")), pipe)


def run_demo(out: str | Path = "mmviz-demo.html", models: str = "auto", progress: bool = True) -> Path:
    """Captures attention, attributions and cross-attention of the teaching models; writes an HTML report.

    Args:
        out: the report to write (one self-contained file that opens offline).
        models: ``"teaching"`` (trained weights shipped with mmviz), ``"random"`` (same architectures,
            random weights: the maps show no learned structure) or ``"auto"`` (teaching when shipped).
        progress: print one line per step.

    Returns:
        The path of the report.

    Raises:
        ValueError: ``models`` is not one of the three names.
        MMVizError: ``models="teaching"`` but the weights are not installed.
    """
    import torch

    if models not in ("auto", "teaching", "random"):
        raise ValueError(f"models must be 'auto', 'teaching' or 'random', not {models!r}")
    trained = teaching_weights_available() if models == "auto" else models == "teaching"
    if trained and not teaching_weights_available():
        raise MMVizError("the teaching weights are not installed; run `mmviz demo --models random` instead")
    # the models are tiny: a second thread buys nothing, and where another process holds a core, OpenMP
    # threads waiting on each other made this run 20x slower (77 s instead of 4 s on two cores)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(out, trained, progress)
    finally:
        torch.set_num_threads(threads)


def _run(out: str | Path, trained: bool, progress: bool) -> Path:
    """Loads the models, captures and explains every scene, writes the report."""
    import numpy as np
    import torch

    import mmviz
    from mmviz.teaching import make_scenes
    from mmviz.teaching._vlm import prompt

    started = time.perf_counter()

    def say(message: str) -> None:
        if progress:
            print(f"[{time.perf_counter() - started:5.1f}s] {message}", flush=True)

    say(f"loading the {'teaching' if trained else 'random'} models")
    m = _teaching_models() if trained else _random_models()
    scenes = make_scenes(_SCENES, seed=_SEED, n_objects=2)
    views: list[Any] = []
    headings: list[str] = []
    captions: list[str] = []
    for i, scene in enumerate(scenes):
        step = f"scene {i + 1}/{len(scenes)}"
        say(f"{step}: CLIP on “{scene.caption}”")
        inputs = m.clip_processor(text=[scene.caption], images=[scene.image], return_tensors="pt", padding=True)
        with torch.no_grad(), mmviz.capture(m.clip, processor=m.clip_processor) as cap:
            m.clip(**inputs)
        views.append(cap.attention.show(module="vision_model", token=0))
        headings.append(f"Scene {i + 1} · CLIP vision tower · “{scene.caption}”")
        captions.append(
            "Attention. The [CLS] token is pinned: its row is what the image embedding gathers, painted over the "
            "patches. Hover a patch to see where it looks; pick another layer or head in the grid on the right."
        )

        question, answer, _ = scene.qa[0]
        say(f"{step}: VLM answers “{question}”")
        inputs = m.vlm_processor(text=prompt(question), images=scene.image, return_tensors="pt")
        with torch.no_grad(), mmviz.capture(m.vlm, processor=m.vlm_processor) as cap:
            generated = m.vlm.generate(**inputs, max_new_tokens=2, do_sample=False)
        new = generated[0, inputs["input_ids"].shape[1] :]
        reply = m.vlm_processor.tokenizer.decode(new, skip_special_tokens=True).strip()
        trace = cap.attention
        answer_at = np.flatnonzero(trace.tokens().generated)
        pinned = int(answer_at[0]) if answer_at.size else len(trace.tokens()) - 1
        explained = reply or answer
        say(f"{step}: attributions of the answer “{explained}”")
        # the default for VLMs: integrated gradients over the image tokens the language model reads, from zero
        # vectors (it passes the model-randomisation sanity check; the blank-scene map over pixels does not)
        ig = mmviz.attribute(
            m.vlm, inputs, processor=m.vlm_processor, method="integrated_gradients", target=explained,
            sources=["image_embeddings"], steps=64, batch_size=16, progress=False,
        )  # fmt: skip
        relevance = mmviz.attribute(
            m.vlm, inputs, processor=m.vlm_processor, method="relevance", target=explained, progress=False
        )
        # one pane each, so both show at once (same positions: a selector in one pane would also do)
        views.append(mmviz.Dashboard(trace.show(token=pinned), [ig], [relevance], title="attention ↔ attribution"))
        headings.append(f"Scene {i + 1} · VLM · “{question}” → {reply or '—'} (expected: {answer})")
        captions.append(
            "Attention (top) and two attributions (below), linked: hover a token or a patch in any pane and the "
            "others follow. The answer token is pinned: its attention over the image patches is painted on the "
            "image. The attributions explain the answer's log-probability: integrated gradients over the image "
            "tokens the language model reads, from zero vectors (signed, blue–red; mmviz's default for VLMs, which "
            "passes the model-randomisation sanity check), and gradient-weighted attention relevance "
            "(Chefer et al.), each in its own pane."
        )

        say(f"{step}: diffusion draws “{scene.caption}” ({_DIFFUSION_STEPS} steps)")
        with mmviz.capture(m.pipe) as cap:
            m.pipe(
                scene.caption,
                num_inference_steps=_DIFFUSION_STEPS,
                generator=torch.Generator().manual_seed(_DIFFUSION_NOISE_SEED + i),
            )
        shape = scene.objects[0].shape
        views.append(cap.cross_attention.show(word=shape))
        headings.append(f"Scene {i + 1} · diffusion · “{scene.caption}”")
        captions.append(
            f"Cross-attention. The word “{shape}” is selected: its map over the generated image, summed over "
            "every denoising step (DAAM). Drag the step slider or press play to watch the map settle; click "
            "another word to follow it."
        )
    say(f"writing {out}")
    path = Path(out)
    mmviz.save_html(
        views,
        path,
        title="mmviz demo: attention, attributions and cross-attention of three tiny models",
        notes=(
            "Tiny models trained on a procedural shapes world (mmviz.teaching): a CLIP, a LLaVA-style VLM and a "
            "text-to-image diffusion model, captured with mmviz.capture and explained with mmviz.attribute. "
            "Panes are linked: hover a token or a patch and the others follow. Works offline."
            if trained
            else "Random weights (mmviz demo --models random): the panes work, the patterns mean nothing."
        ),
        headings=headings,
        captions=captions,
    )
    say("done")
    return path
