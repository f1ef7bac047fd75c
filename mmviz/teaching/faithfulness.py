"""The teaching models' maps judged by ``mmviz.evaluate``, through the public API only.

Every map here comes from a public call — ``mmviz.attribute`` or ``mmviz.capture`` — on the processor's
own inputs, and is scored by ``mmviz.evaluate`` against the exact object masks of the shapes world:

* **CLIP** (two-object scenes; target: the similarity of the image and the phrase of one object, "a red
  circle"): relevance; integrated gradients over the pixels from a blank scene (the background colour);
  integrated gradients from zero embeddings and pixels; saliency over the pixels; the last layer's CLS
  attention (a text-free map, so its target object is "either object");
* **VLM** (two-object scenes; target: the answer to a question about one object): integrated gradients over
  the pixels from a blank scene (the demo's call); relevance; the answer position's attention, last layer;
* **diffusion** (``run_diffusion``): each shape word's cross-attention map (``trace.heatmap(word)``) against
  the colour-segmented object of the generated image.

For each map: pointing game with both baselines (the named object's area; "some object": the chance that a
peak on some object is on the named one), pointing on any object, relevance mass, IoU, deletion and
insertion against random orders over the image patches (removed patches become the blank scene's, for every
map: in this world the background is what "absent" looks like; the processor's zero, a mid-grey patch, reads as
a grey object), and the cascading model-randomisation check on the first
``sanity`` scenes (its pass rate and mean rank correlation).

Run ``python -m mmviz.teaching.faithfulness --n 20`` (one CPU thread; a few minutes per model) for the table
in ``docs/faithfulness.md``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from mmviz.teaching.shapes import BACKGROUND, make_scenes, segment_colour

__all__ = ["clip_maps", "run_clip", "run_diffusion", "run_vlm", "summarise", "vlm_maps"]

CLIP_SEED = 40_000
VLM_SEED = 50_000
DIFFUSION_SEED = 60_000
MASK_CHECKS = ("pointing", "mass", "iou")
CURVE_CHECKS = ("deletion", "insertion")

MapFn = Callable[[Any, Any, Any], tuple[Any, dict[str, Any]]]
"""``(model, processor, inputs) → (map for mmviz.evaluate, extra evaluate options)``."""


def _blank(processor: Any, image: np.ndarray, **text: Any) -> Any:
    """Pixel values of a blank scene (background colour only), as the processor makes them."""
    return processor(images=np.full_like(image, BACKGROUND), return_tensors="pt", **text)["pixel_values"]


def _attribution(target: str, **options: Any) -> MapFn:
    """A map drawn by ``mmviz.attribute(..., target=target, **options)``."""

    def draw(model: Any, processor: Any, inputs: Any) -> tuple[Any, dict[str, Any]]:
        import mmviz

        attr = mmviz.attribute(model, inputs, processor=processor, target=target, progress=False, **options)
        baseline = options.get("baseline")
        return attr, ({"baseline": baseline} if baseline is not None else {})  # a tensor is not recorded

    return draw


def _attention(target: str, choice: dict[str, Any]) -> MapFn:
    """A map read from ``mmviz.capture``'s attention (``choice``: module, layer, query), judged for ``target``."""

    def draw(model: Any, processor: Any, inputs: Any) -> tuple[Any, dict[str, Any]]:
        import torch

        import mmviz

        with torch.no_grad(), mmviz.capture(model, processor=processor) as cap:
            model(**inputs)
        return (cap.attention, choice), {"target": target}

    return draw


def clip_maps(target: str, image: np.ndarray, processor: Any, steps: int = 32) -> dict[str, MapFn]:
    """The CLIP maps compared, each a public call."""
    blank = {"image": _blank(processor, image)}
    return {
        "relevance": _attribution(target, method="relevance"),
        "integrated gradients, pixels, blank scene": _attribution(
            target, method="integrated_gradients", sources=["image"], baseline=blank, steps=steps
        ),
        "integrated gradients, zero baseline": _attribution(target, method="integrated_gradients", steps=steps),
        "saliency, pixels": _attribution(target, method="saliency", sources=["image"]),
        "CLS attention, last layer": _attention(target, {"module": "vision_model", "layer": -1, "query": 0}),
    }


def vlm_maps(answer: str, image: np.ndarray, question: str, processor: Any, steps: int = 32) -> dict[str, MapFn]:
    """The VLM maps compared, each a public call."""
    from mmviz.teaching._vlm import prompt

    blank = {"image": _blank(processor, image, text=prompt(question))}
    return {
        "integrated gradients, pixels, blank scene": _attribution(
            answer, method="integrated_gradients", sources=["image"], baseline=blank, steps=steps
        ),
        "relevance": _attribution(answer, method="relevance"),
        "answer attention, last layer": _attention(answer, {"layer": -1, "query": -1}),
    }


def _judge(
    draw: MapFn,
    model: Any,
    processor: Any,
    inputs: Any,
    mask: np.ndarray,
    objects: np.ndarray,
    removed: Any,
    sanity: bool,
) -> dict[str, float]:
    import mmviz

    the_map, options = draw(model, processor, inputs)
    options.setdefault("baseline", {"image": removed})  # removal: the blank scene, whatever the map's own baseline
    checks = MASK_CHECKS + CURVE_CHECKS + (("model_randomization",) if sanity else ())
    rep = mmviz.evaluate(
        the_map, model, inputs, processor=processor, masks=mask, objects=objects, checks=checks, units="image",
        progress=False, **options,
    )  # fmt: skip
    row = {c: rep[c] for c in rep.checks}
    row["area"] = rep.baseline("pointing", "area")
    row["objects"] = rep.baseline("pointing", "objects")
    if sanity:
        row["sanity_passed"] = float(rep.passed("model_randomization"))
    return row


def summarise(rows: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Means over scenes of every score (``nan`` entries, e.g. flat curves, left out), with counts."""
    out: dict[str, dict[str, float]] = {}
    for name, entries in rows.items():
        keys = sorted({k for e in entries for k in e})
        out[name] = {}
        for k in keys:
            values = np.array([e[k] for e in entries if k in e], dtype=np.float64)
            finite = values[np.isfinite(values)]
            out[name][k] = round(float(finite.mean()), 4) if finite.size else float("nan")
            out[name][f"n_{k}"] = int(finite.size)
    return out


def run_clip(model: Any, processor: Any, n: int = 20, seed: int = CLIP_SEED, sanity: int = 5) -> dict[str, Any]:
    """CLIP's maps on ``n`` held-out two-object scenes (each object named once)."""
    rows: dict[str, list[dict[str, float]]] = {}
    for i, scene in enumerate(make_scenes(n, seed=seed, n_objects=2)):
        union = scene.objects[0].mask | scene.objects[1].mask
        for k, obj in enumerate(scene.objects):
            inputs = processor(images=scene.image, text=[obj.phrase], return_tensors="pt", padding=True)
            blank = _blank(processor, scene.image)
            for name, draw in clip_maps(obj.phrase, scene.image, processor).items():
                mask = union if name.startswith("CLS") else obj.mask
                row = _judge(draw, model, processor, inputs, mask, union, blank, sanity=i < sanity and k == 0)
                rows.setdefault(name, []).append(row)
    return summarise(rows)


def run_vlm(model: Any, processor: Any, n: int = 20, seed: int = VLM_SEED, sanity: int = 5) -> dict[str, Any]:
    """The VLM's maps on ``n`` held-out two-object scenes (one question each, about a named object)."""
    from mmviz.teaching._vlm import prompt

    rows: dict[str, list[dict[str, float]]] = {}
    for i, scene in enumerate(make_scenes(n, seed=seed, n_objects=2)):
        question, answer, index = scene.qa[i % len(scene.qa)]
        union = scene.objects[0].mask | scene.objects[1].mask
        inputs = processor(text=prompt(question), images=scene.image, return_tensors="pt")
        blank = _blank(processor, scene.image, text=prompt(question))
        mask = scene.objects[index].mask
        for name, draw in vlm_maps(answer, scene.image, question, processor).items():
            row = _judge(draw, model, processor, inputs, mask, union, blank, sanity=i < sanity)
            rows.setdefault(name, []).append(row)
    return summarise(rows)


def run_diffusion(pipe: Any, n: int = 8, seed: int = DIFFUSION_SEED, steps: int = 25) -> dict[str, Any]:
    """Shape-word cross-attention in images generated from ``n`` held-out two-object captions.

    An object the model did not draw in its colour (fewer than 8 pixels) counts as a miss (pointing 0), as in
    ``mmviz.teaching.evaluate``.
    """
    import torch

    import mmviz
    from mmviz.teaching._pipeline import to_uint8

    rows: list[dict[str, float]] = []
    for i, scene in enumerate(make_scenes(n, seed=seed, n_objects=2)):
        with mmviz.capture(pipe) as cap:
            out = pipe(
                scene.caption,
                num_inference_steps=steps,
                generator=torch.Generator().manual_seed(seed + i),
                output_type="np",
            )
        image = to_uint8(out.images)[0]
        masks = [segment_colour(image, o.colour) for o in scene.objects]
        union = masks[0] | masks[1]
        for obj, mask in zip(scene.objects, masks):
            if mask.sum() < 8:
                rows.append({"pointing": 0.0, "drawn": 0.0})
                continue
            rep = mmviz.evaluate((cap.cross_attention, obj.shape), masks=mask, objects=union, checks=MASK_CHECKS)
            row = {c: rep[c] for c in rep.checks}
            row.update(area=rep.baseline("pointing", "area"), objects=rep.baseline("pointing", "objects"), drawn=1.0)
            rows.append(row)
    return summarise({"shape-word cross-attention": rows})


def main() -> None:
    """Prints each model's figures as JSON (one line per model)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="clip,vlm,diffusion")
    parser.add_argument("--n", type=int, default=20, help="scenes for CLIP and the VLM")
    parser.add_argument("--n-diffusion", type=int, default=8)
    parser.add_argument("--sanity", type=int, default=5, help="scenes with the model-randomisation check")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    import mmviz.teaching as teaching

    torch.set_num_threads(args.threads)
    if "clip" in args.models:
        clip, clip_processor = teaching.load_clip()
        print(json.dumps({"clip": run_clip(clip, clip_processor, n=args.n, sanity=args.sanity)}), flush=True)
    if "vlm" in args.models:
        vlm, vlm_processor = teaching.load_vlm()
        print(json.dumps({"vlm": run_vlm(vlm, vlm_processor, n=args.n, sanity=args.sanity)}), flush=True)
    if "diffusion" in args.models:
        print(json.dumps({"diffusion": run_diffusion(teaching.load_diffusion(), n=args.n_diffusion)}), flush=True)


if __name__ == "__main__":
    main()
