"""The teaching models' maps judged by ``mmviz.evaluate``, through the public API only.

Every figure of ``docs/teaching.md`` and of the teaching table in ``docs/faithfulness.md`` comes from this
module: each map is a public call — ``mmviz.attribute`` or ``mmviz.capture`` — on the processor's own
inputs, scored by ``mmviz.evaluate`` against the exact object masks of the shapes world.

* **CLIP** (two-object scenes; target: the similarity of the image and the phrase of one object, "a red
  circle"): relevance (the default); integrated gradients over the pixels from a blank scene (the background
  colour); integrated gradients with ``mmviz.attribute``'s plain defaults otherwise (zero caption embeddings
  and zero pixels); saliency over the pixels; the last layer's CLS attention (a text-free map, so its target
  object is "either object").
* **VLM** (two-object scenes; each scene asked all four questions; target: the answer's logit): integrated
  gradients over the image tokens the language model reads (``sources=["image_embeddings"]``) from a blank
  scene's, and from zero vectors (``mmviz.attribute``'s default for a VLM); over the pixels from the blank
  scene; over the prompt and the pixels from zeros (the former default); relevance; the answer position's
  attention, last layer and layer mean. Also the answers' accuracy.
* **text** (the VLM's question, ``sources=["text"]``, ``units="text"``): the answer's maps over the question's
  tokens, against the two words that decide it (what is asked, "colour"; and of which object, "square"):
  integrated gradients from pad-token embeddings (the language-model default) and from zeros, relevance,
  saliency, the answer position's attention.
* **diffusion** (``run_diffusion``): each shape word's cross-attention map (``trace.heatmap(word)``) against
  the colour-segmented object of the generated image; an object the model did not draw in its colour counts
  as a miss.

For each map: the pointing game with both baselines (the named object's area; "some object": the chance that
a peak on some object is on the named one), pointing on any object, relevance mass and IoU on every map;
deletion and insertion against random orders over the image patches (removed patches become the blank
scene's, for every map: in this world the background is what "absent" looks like; removed words become the pad
token's embedding) on the first ``curves`` scenes; the cascading model-randomisation check on the first
``sanity`` scenes (its pass rate and mean rank correlation). ``summarise`` gives each mean with its count and
the half-width of its 95% interval.

Run ``python -m mmviz.teaching.faithfulness`` (one CPU thread; ``--help`` for the sample sizes) for the
figures; ``PUBLISHED`` records them for the shipped weights, and the fast tests assert floors under them.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from mmviz.teaching.shapes import BACKGROUND, Scene, make_scenes, segment_colour

__all__ = [
    "PUBLISHED",
    "clip_maps",
    "markdown",
    "run_clip",
    "run_diffusion",
    "run_text",
    "run_vlm",
    "summarise",
    "text_maps",
    "vlm_maps",
]

CLIP_SEED = 40_000
VLM_SEED = 50_000
DIFFUSION_SEED = 60_000
MASK_CHECKS = ("pointing", "mass", "iou")
CURVE_CHECKS = ("deletion", "insertion")

MapFn = Callable[[Any, Any, Any], tuple[Any, dict[str, Any]]]
"""``(model, processor, inputs) → (map for mmviz.evaluate, extra evaluate options)``."""

PUBLISHED: dict[str, dict[str, dict[str, float]]] = {
    "clip": {
        "relevance (the default)": {"pointing": 0.91, "floor": 0.8, "sane": 1},
        "integrated gradients, pixels, blank scene": {"pointing": 0.725, "floor": 0.6, "sane": 0},
        "integrated gradients, caption and pixels, zero baseline (the former default)": {"pointing": 0.0, "sane": 1},
        "saliency, pixels": {"pointing": 0.37, "sane": 1},
        "CLS attention, last layer": {"pointing": 0.99, "floor": 0.65, "sane": 1},
    },
    "vlm": {
        "integrated gradients, image tokens, blank scene": {"pointing": 0.91, "floor": 0.7},
        "integrated gradients, pixels, blank scene": {"pointing": 0.75, "floor": 0.6, "sane": 0},
        "integrated gradients, image tokens, zero baseline (the default)": {"pointing": 0.615, "floor": 0.3},
        "integrated gradients, prompt and pixels, zero baseline (the former default)": {"pointing": 0.025, "sane": 1},
        "relevance": {"pointing": 0.512, "floor": 0.3},
        "answer attention, layer mean": {"pointing": 0.4525, "sane": 1},
    },
    "text": {
        "integrated gradients, pad baseline (the text-LM default)": {"pointing": 0.98, "floor": 0.85, "sane": 1},
        "saliency": {"pointing": 0.96, "floor": 0.75},
    },
    "diffusion": {
        "shape-word cross-attention": {"pointing": 0.875, "floor": 0.75},
        "shape-word cross-attention, one-object captions": {"pointing": 0.969, "floor": 0.8},
    },
}
"""Pointing figures of ``python -m mmviz.teaching.faithfulness`` for the shipped weights (see ``docs/teaching.md``
for the sample sizes), by model and map, with the floors ``tests/teaching/test_faithfulness.py`` asserts on its
small samples (``floor``, with 8 integrated-gradients steps instead of 32) and, where every scene of the published
sanity check agreed, the verdict (``sane``: 1 passed, 0 failed)."""


def _blank(processor: Any, image: np.ndarray, **text: Any) -> Any:
    """Pixel values of a blank scene (background colour only), as the processor makes them."""
    return processor(images=np.full_like(image, BACKGROUND), return_tensors="pt", **text)["pixel_values"]


def _attribution(target: Any, **options: Any) -> MapFn:
    """A map drawn by ``mmviz.attribute(..., target=target, **options)``."""

    def draw(model: Any, processor: Any, inputs: Any) -> tuple[Any, dict[str, Any]]:
        import mmviz

        attr = mmviz.attribute(model, inputs, processor=processor, target=target, progress=False, **options)
        return attr, {}

    return draw


def _attention(target: Any, choice: dict[str, Any]) -> MapFn:
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
        "relevance (the default)": _attribution(target),
        "integrated gradients, pixels, blank scene": _attribution(
            target, method="integrated_gradients", sources=["image"], baseline=blank, steps=steps
        ),
        "integrated gradients, caption and pixels, zero baseline (the former default)": _attribution(
            target, method="integrated_gradients", steps=steps
        ),
        "saliency, pixels": _attribution(target, method="saliency", sources=["image"]),
        "CLS attention, last layer": _attention(target, {"module": "vision_model", "layer": -1, "query": 0}),
    }


def vlm_maps(answer: int, image: np.ndarray, question: str, processor: Any, steps: int = 32) -> dict[str, MapFn]:
    """The VLM maps compared, each a public call (``answer``: the answer's token id; its logit is the target)."""
    from mmviz.teaching._vlm import prompt

    blank = {"image": _blank(processor, image, text=prompt(question))}
    ig = {"method": "integrated_gradients", "steps": steps}
    return {
        "integrated gradients, image tokens, blank scene": _attribution(
            answer, sources=["image_embeddings"], baseline=blank, **ig
        ),
        "integrated gradients, pixels, blank scene": _attribution(answer, sources=["image"], baseline=blank, **ig),
        "integrated gradients, image tokens, zero baseline (the default)": _attribution(answer, steps=steps),
        "integrated gradients, prompt and pixels, zero baseline (the former default)": _attribution(
            answer, baseline="zeros", **ig
        ),
        "relevance": _attribution(answer, method="relevance"),
        "answer attention, last layer": _attention(answer, {"layer": -1, "query": -1}),
        "answer attention, layer mean": _attention(answer, {"layer": "mean", "query": -1}),
    }


def text_maps(answer: int, steps: int = 32) -> dict[str, MapFn]:
    """The maps of the VLM's answer over its question's tokens, each a public call."""
    ig = {"method": "integrated_gradients", "steps": steps, "sources": ["text"]}
    return {
        "integrated gradients, zero baseline": _attribution(answer, baseline="zeros", **ig),
        "integrated gradients, pad baseline (the text-LM default)": _attribution(answer, **ig),
        "relevance": _attribution(answer, method="relevance"),
        "saliency": _attribution(answer, method="saliency", sources=["text"]),
        "answer attention, last layer": _attention(answer, {"layer": -1, "query": -1}),
    }


def _judge(
    draw: MapFn,
    model: Any,
    processor: Any,
    inputs: Any,
    masks: Any,
    objects: Any,
    *,
    removed: Any,
    units: str,
    curves: bool,
    sanity: bool,
) -> dict[str, float]:
    """One map drawn and judged: its scores and baselines as a flat row.

    ``removed``: what a removed unit becomes in deletion and insertion, the same for every map (the blank scene's
    pixels ``{"image": pixel_values}``, or ``"pad"`` for words). It is also the baseline ``mmviz.evaluate`` hands
    to a recomputed attribution whose own baseline was a tensor (not recorded): the blank scene, the same.
    """
    import mmviz

    the_map, options = draw(model, processor, inputs)
    options["baseline"] = removed
    checks = MASK_CHECKS + (CURVE_CHECKS if curves else ()) + (("model_randomization",) if sanity else ())
    rep = mmviz.evaluate(
        the_map, model, inputs, processor=processor, masks=masks, objects=objects, checks=checks, units=units,
        progress=False, **options,
    )  # fmt: skip
    row = {c: rep[c] for c in rep.checks}
    row["area"] = rep.baseline("pointing", "area")
    if objects is not None:
        row["objects"] = rep.baseline("pointing", "objects")
    if sanity:
        row["sanity_passed"] = float(rep.passed("model_randomization"))
    return row


def summarise(rows: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Means over maps of every score (``nan`` entries, e.g. flat curves, left out).

    Returns:
        ``{map: {score: mean, "n_<score>": count, "ci_<score>": half-width of the mean's 95% interval}}``.
    """
    out: dict[str, dict[str, float]] = {}
    for name, entries in rows.items():
        keys = sorted({k for e in entries for k in e})
        out[name] = {}
        for k in keys:
            values = np.array([e[k] for e in entries if k in e], dtype=np.float64)
            finite = values[np.isfinite(values)]
            out[name][k] = round(float(finite.mean()), 4) if finite.size else float("nan")
            out[name][f"n_{k}"] = int(finite.size)
            spread = 1.96 * finite.std(ddof=1) / np.sqrt(finite.size) if finite.size > 1 else float("nan")
            out[name][f"ci_{k}"] = round(float(spread), 4)
    return out


def run_clip(
    model: Any, processor: Any, n: int = 20, seed: int = CLIP_SEED, sanity: int = 5, curves: int = 5, steps: int = 32
) -> dict[str, Any]:
    """CLIP's maps on ``n`` held-out two-object scenes (each object named once: ``2n`` maps per method)."""
    rows: dict[str, list[dict[str, float]]] = {}
    for i, scene in enumerate(make_scenes(n, seed=seed, n_objects=2)):
        union = scene.objects[0].mask | scene.objects[1].mask
        blank = _blank(processor, scene.image)
        for k, obj in enumerate(scene.objects):
            inputs = processor(images=scene.image, text=[obj.phrase], return_tensors="pt", padding=True)
            for name, draw in clip_maps(obj.phrase, scene.image, processor, steps).items():
                mask = union if name.startswith("CLS") else obj.mask
                row = _judge(
                    draw, model, processor, inputs, mask, union, removed={"image": blank}, units="image",
                    curves=i < curves, sanity=i < sanity and k == 0,
                )  # fmt: skip
                rows.setdefault(name, []).append(row)
    return summarise(rows)


def _vlm_inputs(processor: Any, scene: Scene, question: str) -> Any:
    from mmviz.teaching._vlm import prompt

    return processor(text=prompt(question), images=scene.image, return_tensors="pt")


def _answer_id(processor: Any, answer: str) -> int:
    return int(processor.tokenizer.convert_tokens_to_ids(answer))


def run_vlm(
    model: Any, processor: Any, n: int = 20, seed: int = VLM_SEED, sanity: int = 5, curves: int = 5, steps: int = 32
) -> dict[str, Any]:
    """The VLM's maps on ``n`` held-out two-object scenes, each asked its four questions (``4n`` maps per method).

    Also ``"accuracy"``: the fraction of questions whose answer is the model's top next token.
    """
    from mmviz.teaching._vlm import prompt

    rows: dict[str, list[dict[str, float]]] = {}
    correct: list[bool] = []
    for i, scene in enumerate(make_scenes(n, seed=seed, n_objects=2)):
        union = scene.objects[0].mask | scene.objects[1].mask
        for q, (question, answer, index) in enumerate(scene.qa):
            inputs = _vlm_inputs(processor, scene, question)
            answer_id = _answer_id(processor, answer)
            correct.append(_top_token(model, inputs) == answer_id)
            blank = _blank(processor, scene.image, text=prompt(question))
            for name, draw in vlm_maps(answer_id, scene.image, question, processor, steps).items():
                row = _judge(
                    draw, model, processor, inputs, scene.objects[index].mask, union, removed={"image": blank},
                    units="image",
                    curves=i < curves and q == 0, sanity=i < sanity and q == 0,
                )  # fmt: skip
                rows.setdefault(name, []).append(row)
    out: dict[str, Any] = summarise(rows)
    out["accuracy"] = {"accuracy": round(float(np.mean(correct)), 4), "n_accuracy": len(correct)}
    return out


def _top_token(model: Any, inputs: Any) -> int:
    import torch

    with torch.no_grad():
        return int(model(**inputs).logits[0, -1].argmax())


def question_positions(processor: Any, inputs: Any, question: str) -> set[int]:
    """Positions of the two words that decide the answer: what is asked ("colour") and of which object."""
    words = question.split()
    wanted = {processor.tokenizer.convert_tokens_to_ids(w) for w in (words[1], words[-2])}
    ids = inputs["input_ids"][0].tolist()
    return {p for p, t in enumerate(ids) if t in wanted}


def run_text(
    model: Any, processor: Any, n: int = 20, seed: int = VLM_SEED, sanity: int = 5, curves: int = 5, steps: int = 32
) -> dict[str, Any]:
    """The VLM's answer explained over its question's tokens (``4n`` maps per method, ``units="text"``)."""
    rows: dict[str, list[dict[str, float]]] = {}
    for i, scene in enumerate(make_scenes(n, seed=seed, n_objects=2)):
        for q, (question, answer, _) in enumerate(scene.qa):
            inputs = _vlm_inputs(processor, scene, question)
            answer_id = _answer_id(processor, answer)
            positions = question_positions(processor, inputs, question)
            for name, draw in text_maps(answer_id, steps).items():
                row = _judge(
                    draw, model, processor, inputs, positions, None, removed="pad", units="text",
                    curves=i < curves and q == 0, sanity=i < sanity and q == 0,
                )  # fmt: skip
                rows.setdefault(name, []).append(row)
    return summarise(rows)


def run_diffusion(
    pipe: Any, n: int = 8, seed: int = DIFFUSION_SEED, steps: int = 25, n_objects: int = 2
) -> dict[str, Any]:
    """Shape-word cross-attention in images generated from ``n`` held-out captions (``n_objects`` each)."""
    import torch

    import mmviz
    from mmviz.teaching._pipeline import to_uint8

    rows: list[dict[str, float]] = []
    for i, scene in enumerate(make_scenes(n, seed=seed, n_objects=n_objects)):
        with mmviz.capture(pipe) as cap:
            out = pipe(
                scene.caption,
                num_inference_steps=steps,
                generator=torch.Generator().manual_seed(seed + i),
                output_type="np",
            )
        image = to_uint8(out.images)[0]
        masks = [segment_colour(image, o.colour) for o in scene.objects]
        union = np.logical_or.reduce(masks)
        for obj, mask in zip(scene.objects, masks):
            if mask.sum() < 8:
                rows.append({"pointing": 0.0, "drawn": 0.0})
                continue
            objects = union if n_objects > 1 else None
            rep = mmviz.evaluate((cap.cross_attention, obj.shape), masks=mask, objects=objects, checks=MASK_CHECKS)
            row = {c: rep[c] for c in rep.checks}
            row.update(area=rep.baseline("pointing", "area"), drawn=1.0)
            if objects is not None:
                row["objects"] = rep.baseline("pointing", "objects")
            rows.append(row)
    label = "shape-word cross-attention" + ("" if n_objects > 1 else ", one-object captions")
    return summarise({label: rows})


def markdown(model: str, figures: dict[str, dict[str, float]]) -> list[str]:
    """Rows of the docs' table for one model's ``summarise`` output (``docs/faithfulness.md``).

    Columns: model, map, maps, pointing ± 95% half-width, area, some object, on any object, mass, IoU, deletion
    and insertion (maps with a verdict), model randomisation (passes / scenes, mean rank correlation).
    """

    def pct(row: dict[str, float], key: str) -> str:
        value = row.get(key, float("nan"))
        return "–" if value != value else f"{100 * value:.0f}%"

    def num(row: dict[str, float], key: str) -> str:
        value = row.get(key, float("nan"))
        return "–" if value != value else f"{value:.2f}"

    lines = []
    for name, row in figures.items():
        if "pointing" not in row:
            continue
        spread = row.get("ci_pointing", float("nan"))
        pointing = f"**{pct(row, 'pointing')}**" + ("" if spread != spread else f" ±{100 * spread:.0f}")
        curves = {k: f"{num(row, k)} ({row.get(f'n_{k}', 0)})" if f"n_{k}" in row else "–" for k in CURVE_CHECKS}
        sanity = "–"
        if "sanity_passed" in row:
            passed = round(row["sanity_passed"] * row["n_sanity_passed"])
            verdict = "pass" if passed * 2 > row["n_sanity_passed"] else "**fail**"
            sanity = f"{verdict} ({passed}/{row['n_sanity_passed']}, ρ {row['model_randomization']:.2f})"
        cells = [model, name, str(row["n_pointing"]), pointing, pct(row, "area"), pct(row, "objects")]
        cells += [pct(row, "pointing_objects"), num(row, "mass"), num(row, "iou"), curves["deletion"]]
        cells += [curves["insertion"], sanity]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    """Prints each model's figures as JSON (one line per model and sample)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vlm,clip,text,diffusion", help="run in this order")
    parser.add_argument("--n", type=int, default=100, help="scenes for CLIP and the VLM")
    parser.add_argument("--n-text", type=int, default=50, help="scenes for the text maps")
    parser.add_argument("--n-diffusion", type=int, default=64, help="captions per diffusion sample")
    parser.add_argument("--sanity", type=int, default=10, help="scenes with the model-randomisation check")
    parser.add_argument("--curves", type=int, default=8, help="scenes with deletion and insertion curves")
    parser.add_argument("--steps", type=int, default=32, help="integrated gradients' steps")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    import mmviz.teaching as teaching

    torch.set_num_threads(args.threads)
    sizes = {"n": args.n, "sanity": args.sanity, "curves": args.curves, "steps": args.steps}
    runs: dict[str, Callable[[], Any]] = {
        "clip": lambda: run_clip(*teaching.load_clip(), **sizes),
        "vlm": lambda: run_vlm(*teaching.load_vlm(), **sizes),
        "text": lambda: run_text(*teaching.load_vlm(), **{**sizes, "n": args.n_text}),
        "diffusion": lambda: {
            k: run_diffusion(teaching.load_diffusion(), n=args.n_diffusion, n_objects=k) for k in (2, 1)
        },
    }
    for name in args.models.split(","):
        run = runs[name]
        start = time.perf_counter()
        result = run()
        print(json.dumps({name: result, "seconds": round(time.perf_counter() - start)}), flush=True)


if __name__ == "__main__":
    main()
