"""``mmviz demo``: capture the teaching models on a few shapes scenes and write one offline HTML report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mmviz.errors import MMVizError

_SCENES = 2
_SEED = 11


def teaching_weights_available() -> bool:
    """Whether the trained teaching CLIP and VLM weights ship with this install."""
    from mmviz.teaching import WEIGHTS_DIR

    return all((WEIGHTS_DIR / name / "config.json").is_file() for name in ("clip", "vlm"))


def _models(trained: bool) -> tuple[Any, Any, Any, Any]:
    """``(clip, clip_processor, vlm, vlm_processor)``: trained teaching models or the same shapes, random."""
    from mmviz import teaching

    if trained:
        clip, clip_processor = teaching.load_clip()
        vlm, vlm_processor = teaching.load_vlm()
        return clip, clip_processor, vlm, vlm_processor
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, LlavaConfig, LlavaForConditionalGeneration

    from mmviz.teaching._common import clip_config_dict, image_processor
    from mmviz.teaching._tokenizer import build_tokenizer
    from mmviz.teaching._vlm import vlm_config_dict
    from mmviz.teaching._vlm import vlm_processor as build_vlm_processor

    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(**clip_config_dict())).eval()
    clip_processor = CLIPProcessor(image_processor=image_processor(), tokenizer=build_tokenizer("clip"))
    vlm = LlavaForConditionalGeneration(LlavaConfig(**vlm_config_dict())).eval()
    return clip, clip_processor, vlm, build_vlm_processor(build_tokenizer("vlm"))


def run_demo(out: str | Path = "mmviz-demo.html", models: str = "auto", progress: bool = True) -> Path:
    """Captures attention of a CLIP and a LLaVA-style VLM on shapes scenes and writes an HTML report.

    Args:
        out: the report to write (one self-contained file that opens offline).
        models: ``"teaching"`` (trained weights shipped with mmviz), ``"random"`` (same architectures,
            random weights: the maps show no learned structure) or ``"auto"`` (teaching when shipped).
        progress: print one line per step.

    Returns:
        The path of the report.
    """
    import numpy as np
    import torch

    import mmviz
    from mmviz.teaching import make_scenes
    from mmviz.teaching._vlm import prompt

    if models not in ("auto", "teaching", "random"):
        raise ValueError(f"models must be 'auto', 'teaching' or 'random', not {models!r}")
    trained = teaching_weights_available() if models == "auto" else models == "teaching"
    if trained and not teaching_weights_available():
        raise MMVizError("the teaching weights are not installed; run `mmviz demo --models random` instead")
    started = time.perf_counter()

    def say(message: str) -> None:
        if progress:
            print(f"[{time.perf_counter() - started:5.1f}s] {message}", flush=True)

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    say(f"loading the {'teaching' if trained else 'random'} models")
    clip, clip_processor, vlm, vlm_processor = _models(trained)
    scenes = make_scenes(_SCENES, seed=_SEED, n_objects=2)
    views: list[Any] = []
    headings: list[str] = []
    captions: list[str] = []
    for i, scene in enumerate(scenes):
        say(f"scene {i + 1}/{len(scenes)}: CLIP on “{scene.caption}”")
        inputs = clip_processor(text=[scene.caption], images=[scene.image], return_tensors="pt", padding=True)
        with torch.no_grad(), mmviz.capture(clip, processor=clip_processor) as cap:
            clip(**inputs)
        views.append(cap.attention.show(module="vision_model", token=0))
        headings.append(f"Scene {i + 1} · CLIP vision tower · “{scene.caption}”")
        captions.append(
            "The [CLS] token is pinned: its row is what the image embedding gathers, painted over the patches. "
            "Hover a patch to see where it looks; pick another layer or head in the grid on the right."
        )
        question, answer, _ = scene.qa[0]
        say(f"scene {i + 1}/{len(scenes)}: VLM answers “{question}”")
        inputs = vlm_processor(text=prompt(question), images=scene.image, return_tensors="pt")
        with torch.no_grad(), mmviz.capture(vlm, processor=vlm_processor) as cap:
            generated = vlm.generate(**inputs, max_new_tokens=2, do_sample=False)
        reply = vlm_processor.tokenizer.decode(generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        trace = cap.attention
        answer_at = np.flatnonzero(trace.tokens().generated)
        views.append(trace.show(token=int(answer_at[0]) if answer_at.size else len(trace.tokens()) - 1))
        headings.append(f"Scene {i + 1} · VLM · “{question}” → {reply.strip() or '—'} (expected: {answer})")
        captions.append(
            "The answer token is pinned: its attention over the image patches is painted on the image. Hover the "
            "question's words to compare; the vision tower is in the module menu."
        )
    say(f"writing {out}")
    path = Path(out)
    mmviz.save_html(
        views,
        path,
        title="mmviz demo: attention in a tiny CLIP and a tiny VLM",
        notes=(
            "Tiny models trained on a procedural shapes world (mmviz.teaching), captured with mmviz.capture. "
            "Every pane is linked: hover a token or a patch and the others follow. Works offline."
            if trained
            else "Random weights (mmviz demo --models random): the panes work, the patterns mean nothing."
        ),
        headings=headings,
        captions=captions,
    )
    say("done")
    return path
