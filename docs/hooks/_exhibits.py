"""The views the docs show: built from the shipped teaching models, exported to offline HTML pages.

Everything runs on one CPU thread in a few seconds: the teaching CLIP, VLM and diffusion model are tiny
(``mmviz.teaching``), and one shapes scene feeds all of them. Each :class:`Exhibit` is one exported page
of the gallery plus the screenshots the guides use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SEED = 11
"""Seed of the shapes scene: "a green circle above a blue star"."""

SITE_FILES: dict[str, bytes] = {}
"""What the hook generated (site path → content), kept for the rebuilds of ``mkdocs serve``: mkdocs reloads
the hook module with the config on every rebuild, while this module stays imported for the whole process."""


@dataclass
class Shot:
    """One screenshot of an exhibit's page.

    Attributes:
        name: file name of the PNG (under ``screenshots/`` in the site).
        view: index of the view to capture (its host element), or ``None`` for the whole page.
        action: what to do on the page first (hover, click, scrub), or ``None``.
    """

    name: str
    view: int | None = 0
    action: Callable[[Any], None] | None = None


@dataclass
class Exhibit:
    """One exported page of the gallery.

    Attributes:
        name: file name of the page (under ``exports/`` in the site; ``docs/gallery.md`` links it).
        shots: screenshots taken of it.
    """

    name: str
    shots: list[Shot] = field(default_factory=list)


def _hover(selector: str, text: str | None = None, index: int = 0) -> Callable[[Any], None]:
    def act(page: Any) -> None:
        locator = page.locator(selector, has_text=text) if text else page.locator(selector)
        locator.nth(index).hover()

    return act


def _unpin_and_hover(pinned: int, word: str) -> Callable[[Any], None]:
    def act(page: Any) -> None:
        page.locator(f".mmviz-tok[data-pos='{pinned}']").first.click()
        page.locator(".mmviz-tok", has_text=word).first.hover()

    return act


def _scrub(step: int) -> Callable[[Any], None]:
    def act(page: Any) -> None:
        page.locator(".mmviz-xattn-step").fill(str(step))

    return act


def build(out: Path) -> list[Exhibit]:
    """Captures the teaching models on one scene and writes the gallery's pages into ``out``.

    Returns:
        The exhibits, in gallery order; their pages are ``out / exhibit.name``.
    """
    import numpy as np
    import torch

    import mmviz
    from mmviz import teaching
    from mmviz.teaching._vlm import prompt

    torch.set_num_threads(1)
    scene = teaching.make_scenes(1, seed=SEED, n_objects=2)[0]  # a green circle above a blue star
    question, answer, _ = scene.qa[0]  # what colour is the circle ? -> green (the model's reply is used below)
    exhibits: list[Exhibit] = []

    # -- a VLM answering a question: attention, attributions, dashboard ---------------------------------
    vlm, vlm_processor = teaching.load_vlm()
    inputs = vlm_processor(text=prompt(question), images=scene.image, return_tensors="pt")
    with torch.no_grad(), mmviz.capture(vlm, processor=vlm_processor) as cap:
        generated = vlm.generate(**inputs, max_new_tokens=2, do_sample=False)
    new_tokens = generated[0, inputs["input_ids"].shape[1] :]
    answer = vlm_processor.tokenizer.decode(new_tokens, skip_special_tokens=True).strip() or answer
    trace = cap.attention
    answer_at = int(np.flatnonzero(trace.tokens().generated)[0])
    vlm_view = trace.show(token=answer_at, title=f"Teaching VLM: “{question}” → {answer}")
    vlm_view.save(out / "attention-vlm.html", title="AttentionView: a tiny VLM answers a question")
    exhibits.append(
        Exhibit(
            "attention-vlm.html",
            [
                Shot("attention-view.png"),
                # unpin the answer (a click on a pinned token), then hover a word of the question
                Shot("attention-view-hover.png", action=_unpin_and_hover(answer_at, "circle")),
            ],
        )
    )

    target = " " + answer
    ig = mmviz.attribute(
        vlm,
        inputs,
        processor=vlm_processor,
        method="integrated_gradients",
        target=target,
        baseline="pad",
        steps=100,
        progress=False,
    )
    saliency = mmviz.attribute(vlm, inputs, processor=vlm_processor, method="saliency", target=target)
    occlusion = mmviz.attribute(vlm, inputs, processor=vlm_processor, method="occlusion", target=target, progress=False)
    attr_view = mmviz.widgets.AttributionView([ig, saliency, occlusion], title=f"Why “{answer}”?")
    attr_view.save(out / "attribution-vlm.html", title="AttributionView: three methods, one answer")
    exhibits.append(
        Exhibit(
            "attribution-vlm.html",
            [
                Shot("attribution-view.png"),
                Shot("attribution-view-hover.png", action=_hover(".mmviz-attr-tok", "circle")),
            ],
        )
    )

    board = mmviz.Dashboard(trace, ig, saliency, title=f"“{question}” → {answer}")
    board.save(out / "dashboard.html", title="Dashboard: attention and attributions, linked")
    exhibits.append(
        Exhibit(
            "dashboard.html",
            [Shot("dashboard.png", action=_hover(".mmviz-attr-tok", "circle"))],
        )
    )

    # -- activation patching: which layers and patches carry the answer --------------------------------------
    patching = mmviz.patch(vlm, inputs, "noise", metric=answer, processor=vlm_processor, progress=False)
    patch_view = patching.show(layer=0, title=f"Restoring the residual stream: where is “{answer}” carried?")
    patch_view.save(out / "patching.html", title="PatchingView: activation patching of a tiny VLM")
    exhibits.append(
        Exhibit(
            "patching.html",
            [Shot("patching-view.png"), Shot("patching-view-hover.png", action=_hover(".mmviz-patching-tok", "?"))],
        )
    )

    # -- CLIP's vision tower ------------------------------------------------------------------------------
    clip, clip_processor = teaching.load_clip()
    clip_inputs = clip_processor(text=[scene.caption], images=[scene.image], return_tensors="pt", padding=True)
    with torch.no_grad(), mmviz.capture(clip, processor=clip_processor) as cap:
        clip(**clip_inputs)
    clip_view = cap.attention.show(module="vision_model", token=0, title="Teaching CLIP, vision tower, [CLS] pinned")
    clip_view.save(out / "attention-clip.html", title="AttentionView: a CLIP vision tower")
    exhibits.append(
        Exhibit(
            "attention-clip.html",
            [Shot("attention-view-vision.png")],
        )
    )

    # -- CLIP's image embedding, decomposed ---------------------------------------------------------------
    scenes = [scene, *teaching.make_scenes(63, seed=0)]  # the scene detailed, 63 more for TextSpan
    words = ["red", "green", "blue", "yellow", "circle", "square", "triangle", "star", "above", "below", "left"]
    dec_inputs = clip_processor(images=[s.image for s in scenes], return_tensors="pt")
    dec = mmviz.decompose(clip, dec_inputs, clip_processor, texts=words)
    best = np.unravel_index(int(np.argmax(dec.scores("green"))), dec.heads.shape[:2])
    dec_view = dec.show(text="green", layer=int(best[0]), head=int(best[1]), title="Teaching CLIP: who writes “green”?")
    dec_view.save(out / "decomposition-clip.html", title="DecompositionView: a CLIP embedding by layer and head")
    exhibits.append(Exhibit("decomposition-clip.html", [Shot("decomposition-view.png")]))

    # -- diffusion cross-attention --------------------------------------------------------------------------
    pipe = teaching.load_diffusion()
    generator = torch.Generator().manual_seed(3)  # a clean draw: one circle, the star below it
    with mmviz.capture(pipe) as cap:
        pipe(scene.caption, num_inference_steps=25, generator=generator)
    xtrace = cap.cross_attention
    xview = xtrace.show(word="circle", title=f"Teaching diffusion model: “{scene.caption}”")
    xview.save(out / "cross-attention.html", title="CrossAttentionView: a tiny text-to-image model")
    exhibits.append(
        Exhibit(
            "cross-attention.html",
            [
                Shot("cross-attention-view.png"),
                Shot("cross-attention-view-step.png", action=_scrub(2)),
                Shot("cross-attention-view-hover.png", action=_hover(".mmviz-xattn-word", "star")),
            ],
        )
    )

    # -- one report with several views ------------------------------------------------------------------
    mmviz.save_html(
        [vlm_view, clip_view, xview],
        out / "report.html",
        title="A report: three views in one offline page",
        notes="Written with mmviz.save_html from the teaching models (mmviz.teaching). Every view is live.",
        headings=["VLM: language model", "CLIP: vision tower", "Diffusion: cross-attention"],
        captions=[
            "The answer is pinned: its attention over the image patches is painted on the image. Click it to "
            "unpin, then hover the question's words.",
            "[CLS] is pinned: its attention over the patches is what the image embedding gathers.",
            "Pick a word and scrub the denoising steps; the last position sums them all.",
        ],
    )
    exhibits.append(Exhibit("report.html", [Shot("report.png", view=None)]))
    return exhibits
