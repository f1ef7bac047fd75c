"""Faithfulness of the teaching models: the pointing game on held-out scenes.

The pointing game asks whether a map's peak falls inside the object it should
point at. Each map is upsampled bilinearly to the image size (32x32) and its
maximum pixel is looked up in the object's exact mask. The random baseline is
the mask's area fraction (the chance that a uniformly random pixel hits it).

- CLIP: maps of the similarity between a two-object scene and the phrase of one
  of its objects ("a red circle"); the named object is that object. Two maps: the
  gradient-weighted attention relevance of the vision tower (`_maps.clip_relevance`,
  Chefer et al.) and Integrated Gradients of that similarity over the image patches
  (`_maps.clip_integrated_gradients`, blank-image baseline, 32 steps). The
  text-free last-layer CLS->patch attention is reported too (target: either object).
- VLM: maps of the answer (the true answer's logit at the answer-predicting
  position, the last prompt token) over the 64 image tokens; the named object is
  the one the question is about ("what colour is the square ?"). Integrated
  Gradients over the image tokens the LM reads (`_maps.vlm_integrated_gradients`,
  blank-image baseline, 32 steps); gradient-weighted attention relevance of the LM
  (`_maps.vlm_relevance`), also continued through the vision tower's own relevance
  to the input patches (``through_tower=True``); and plain attention of the answer
  position, head mean, per LM layer and averaged over layers.
- Diffusion: DAAM-style cross-attention map of each shape word (head mean, summed
  over all 8x8 cross-attention layers and all denoising steps) while the pipeline
  generates an image from a held-out two-object caption; the object's mask is
  found by colour segmentation of the generated image (pixels whose nearest palette
  colour is the object's colour). An object that was not drawn counts as a miss.

Run ``python -m mmviz.teaching.evaluate`` for the full figures (a few minutes on
one CPU thread); the tests run the same functions on fewer scenes.

These maps come from the kit's own hooks (``_maps``). The maps a user draws with the public API
(``mmviz.attribute`` / ``mmviz.capture``), judged by ``mmviz.evaluate`` with both chance levels and the
model-randomisation sanity check, are measured by ``mmviz.teaching.faithfulness``.

Measured for the shipped weights (`MEASURED`), pointing game vs random baseline
(CLIP: 400 maps, VLM: 800 maps, diffusion: 128 / 64 maps):

| model | map | hit | baseline |
|---|---|---|---|
| CLIP | object-phrase relevance (`clip_relevance`) | 90.0% | 7.1% |
| CLIP | object-phrase Integrated Gradients (`clip_integrated_gradients`) | 72.5% | 7.1% |
| CLIP | last-layer CLS attention, either object | 99.0% | 14.2% |
| VLM | answer Integrated Gradients over image tokens (`vlm_integrated_gradients`) | 90.4% | 7.3% |
| VLM | answer relevance (`vlm_relevance`) | 53.5% | 7.3% |
| VLM | answer relevance through the vision tower (`through_tower=True`) | 53.6% | 7.3% |
| VLM | answer attention, layer mean (layers 1/2/3: 49/30/40%) | 45.6% | 7.3% |
| diffusion | shape-word cross-attention, two-object captions | 93.8% | 9.0% |
| diffusion | same, one-object captions | 96.9% | 9.9% |

CLIP's colour-swap and relation-swap accuracies are both 100%; the
VLM answers 99.9% of two-object questions (it first learned to name an attribute
present in the scene, at chance between the two objects, and learned to bind it to
the named object only after about 4000 steps). Its attention maps got *less*
object-specific as it learned binding: at step 5500 (75% accuracy) answer relevance
scored 72.0% and attention 47.0%; at step 7500 (99.9%) 53.5% and 45.6%, so the
answer position does not read the named object's image tokens directly through
attention. Continuing the LM relevance through the vision tower changes almost
nothing (53.6%): the tower's relevance matrix is close to the identity. Integrated
Gradients, which follows the whole computation (attention *and* values, MLPs), finds
the named object: 90.4%.

Both Integrated Gradients maps use a blank image (the background colour) as the
baseline, so a CLIP patch of pure background gets exactly zero attribution (for the
VLM, background image tokens differ from the blank image's only through the vision
tower's mixing). The area baseline is therefore an easy bar for them; the informative
part is *which* object and *where* on it. CLIP's (16x16 patches of 2 px) Integrated
Gradients misses are mostly next to the named object (68 of 110 within 1 px: the
largest signed patch sums sit on its edge patches; 4 on the other object); of the
relevance misses, 12 of 40 are within 1 px and 18 on the other object, which the
phrase's similarity also reads now that the model has learned relations. With 4 px
patches (the earlier weights) it was the other way round: relevance 77.3% (90 of its
91 misses within 3 px: peaks on edge patches), Integrated Gradients 89.3%; see
`mmviz.teaching.train_clip`. Of the VLM's 77 Integrated Gradients misses, 68 peak on
the *other* object (the answer also depends on it) and 9 near or off the objects.
The diffusion figures count objects that were not drawn in their colour as misses
(2.3% of two-object, 1.6% of one-object captions' objects); 96% of the drawn objects
are hit. A colour mask may hold more than the named object (14% of the drawn
two-object colours form two or more blobs of 8+ px: a second object of that colour,
or a fragment); counting every such map as a miss, the two-object figure is 81.3%.
The images are sampled with the pipeline's default guidance weight
(`_pipeline.GUIDANCE_SCALE` = 1.5, 25 DDIM steps), chosen with the checkpoint on
validation captions (seed 70000) before this held-out run: the earlier weight of 3
over-steered this small model into noisy, off-palette drawings (the previous
weights, step 11155, scored 75.0% / 79.7% with it, 88% of the objects drawn). With
the frozen CLIP text tower as its text encoder (the first weights) the model scored
58.6% / 67.2%, because that tower's state at "triangle" is almost its ``<bos>``
state, so the "triangle" maps peaked on the background; the shipped model trains
its own text encoder (see `mmviz.teaching.train_diffusion`).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from mmviz.teaching.shapes import Scene, make_scenes, segment_colour

MEASURED: dict[str, dict[str, Any]] = {
    "clip": {
        "map": "relevance_hit",
        "relevance_hit": 0.9,
        "relevance_baseline": 0.0709,
        "ig_hit": 0.725,
        "cls_attention_hit": 0.99,
        "cls_attention_baseline": 0.1417,
        "colour_swap": 1.0,
        "relation_swap": 1.0,
        "test_floor": 0.8,
        "test_ig_steps": 8,
        "ig_floor": 0.6,
    },
    "vlm": {
        "map": "ig_hit",
        "ig_hit": 0.9038,
        "relevance_hit": 0.535,
        "tower_relevance_hit": 0.5362,
        "attention_hit": 0.4562,
        "attention_hit_per_layer": [0.4888, 0.3037, 0.4],
        "baseline": 0.0728,
        "accuracy": 0.9988,
        "test_floor": 0.75,
        "test_ig_steps": 8,
        "relevance_floor": 0.4,
        "accuracy_floor": 0.95,
    },
    "diffusion": {
        "map": "hit",
        "hit": 0.9375,
        "baseline": 0.0902,
        "drawn": 0.9766,
        "hit_one_object": 0.9688,
        "baseline_one_object": 0.0989,
        "drawn_one_object": 0.9844,
        "guidance_scale": 1.5,
        "test_floor": 0.8,
    },
}
"""Figures of ``python -m mmviz.teaching.evaluate`` for the shipped weights (one CPU
thread; 200 held-out scenes for CLIP and the VLM, 64 captions for diffusion), and
the floors the fast tests assert on their smaller samples (``map``: the figure whose
``test_floor`` they check, with ``test_ig_steps`` Integrated Gradients steps instead of
32; on those samples: CLIP relevance 89.2% of 120 maps (Integrated Gradients 77.5%),
VLM 85% of 100 maps, diffusion 100% of 24 maps). CLIP's relevance, the VLM's
Integrated Gradients and the diffusion cross-attention reach the 80% target of the
teaching-kit issue; the VLM's attention-based maps do not: see the module docstring."""

CLIP_SEED = 40_000
VLM_SEED = 50_000
DIFFUSION_SEED = 60_000


def _hit(maps: Any, masks: list[np.ndarray]) -> list[bool]:
    from mmviz.teaching._maps import peak_pixel

    size = masks[0].shape[0]
    peaks = peak_pixel(maps, size).tolist()
    return [bool(m[r, c]) for (r, c), m in zip(peaks, masks)]


def clip_pointing(
    model: Any, n: int = 200, seed: int = CLIP_SEED, batch: int = 50, ig_steps: int = 32
) -> dict[str, float]:
    """Pointing game for the teaching CLIP.

    Args:
        model: a `CLIPModel` (from `mmviz.teaching.load_clip`).
        n: held-out two-object scenes (each scored for both objects).
        seed: scene seed.
        batch: scenes per forward pass.
        ig_steps: Riemann steps of the Integrated Gradients map.

    Returns:
        ``relevance_hit`` / ``relevance_baseline`` (object word relevance vs object
        area), ``ig_hit`` (Integrated Gradients of the same similarity over the
        patches, `_maps.clip_integrated_gradients`; same baseline),
        ``cls_attention_hit`` / ``cls_attention_baseline`` (peak on either object vs
        both objects' area), ``colour_swap`` / ``relation_swap`` (true
        caption scored above the hard negative).
    """
    import torch

    from mmviz.teaching._common import pixels
    from mmviz.teaching._maps import clip_cls_attention, clip_integrated_gradients, clip_relevance
    from mmviz.teaching._tokenizer import build_tokenizer
    from mmviz.teaching.train_clip import colour_swap, relation_swap

    tok = build_tokenizer("clip")
    scenes = make_scenes(n, seed=seed, n_objects=2)
    rel_hits: list[bool] = []
    rel_base: list[float] = []
    ig_hits: list[bool] = []
    cls_hits: list[bool] = []
    cls_base: list[float] = []
    swaps = {"colour_swap": [], "relation_swap": []}  # type: dict[str, list[bool]]
    for start in range(0, n, batch):
        chunk = scenes[start : start + batch]
        px = pixels([s.image for s in chunk])
        for k in range(2):
            ids = tok([s.objects[k].phrase for s in chunk], padding=True, return_tensors="pt")["input_ids"]
            maps = clip_relevance(model, px, ids)
            masks = [s.objects[k].mask for s in chunk]
            rel_hits += _hit(maps, masks)
            ig_hits += _hit(clip_integrated_gradients(model, px, ids, steps=ig_steps), masks)
            rel_base += [float(m.mean()) for m in masks]
        union = [s.objects[0].mask | s.objects[1].mask for s in chunk]
        cls_hits += _hit(clip_cls_attention(model, px), union)
        cls_base += [float(m.mean()) for m in union]
        with torch.no_grad():
            img = torch.nn.functional.normalize(_features(model.get_image_features(pixel_values=px)), dim=-1)
            scores = {}
            for name, texts in (
                ("true", [s.caption for s in chunk]),
                ("colour_swap", [colour_swap(s) for s in chunk]),
                ("relation_swap", [relation_swap(s) for s in chunk]),
            ):
                enc = tok(texts, padding=True, return_tensors="pt")
                txt = torch.nn.functional.normalize(_features(model.get_text_features(**enc)), dim=-1)
                scores[name] = (img * txt).sum(-1)
        for name in swaps:
            swaps[name] += (scores["true"] > scores[name]).tolist()
    return {
        "relevance_hit": float(np.mean(rel_hits)),
        "relevance_baseline": float(np.mean(rel_base)),
        "ig_hit": float(np.mean(ig_hits)),
        "cls_attention_hit": float(np.mean(cls_hits)),
        "cls_attention_baseline": float(np.mean(cls_base)),
        "colour_swap": float(np.mean(swaps["colour_swap"])),
        "relation_swap": float(np.mean(swaps["relation_swap"])),
        "n_maps": len(rel_hits),
    }


def _features(out: Any) -> Any:
    return out if hasattr(out, "dim") else out.pooler_output


def vlm_pointing(model: Any, n: int = 200, seed: int = VLM_SEED, batch: int = 50, ig_steps: int = 32) -> dict[str, Any]:
    """Pointing game and accuracy for the teaching VLM.

    Args:
        model: a `LlavaForConditionalGeneration` (from `mmviz.teaching.load_vlm`).
        n: held-out two-object scenes (each asked all four questions).
        seed: scene seed.
        batch: scenes per forward pass.
        ig_steps: Riemann steps of the Integrated Gradients map.

    Returns:
        ``attention_hit`` (layer-mean answer attention), ``attention_hit_per_layer``,
        ``relevance_hit`` (gradient-weighted attention relevance of the true answer's
        logit, `_maps.vlm_relevance`), ``tower_relevance_hit`` (the same continued
        through the vision tower to input patches), ``ig_hit`` (Integrated Gradients
        of the true answer's logit over the image tokens,
        `_maps.vlm_integrated_gradients`), ``baseline`` (named object's area),
        ``accuracy`` (first answer token).
    """
    import torch

    from mmviz.teaching._maps import vlm_answer_attention, vlm_integrated_gradients, vlm_relevance
    from mmviz.teaching._tokenizer import build_tokenizer, vocab
    from mmviz.teaching._vlm import make_batch

    tok = build_tokenizer("vlm")
    ids = vocab()
    scenes = make_scenes(n, seed=seed, n_objects=2)
    hits: list[bool] = []
    rel_hits: list[bool] = []
    tower_hits: list[bool] = []
    ig_hits: list[bool] = []
    per_layer: list[list[bool]] = []
    base: list[float] = []
    correct: list[bool] = []
    for start in range(0, n, batch):
        chunk = scenes[start : start + batch]
        for q in range(4):
            inputs = make_batch(chunk, [q] * len(chunk), tok, with_answer=False)
            maps, logits = vlm_answer_attention(model, inputs)
            masks = [s.objects[s.qa[q][2]].mask for s in chunk]
            hits += _hit(maps.mean(1), masks)
            per_layer.append([h for layer in range(maps.shape[1]) for h in _hit(maps[:, layer], masks)])
            base += [float(m.mean()) for m in masks]
            truth = torch.tensor([ids[s.qa[q][1]] for s in chunk])
            correct += (logits.argmax(-1) == truth).tolist()
            rel_hits += _hit(vlm_relevance(model, inputs, truth), masks)
            tower_hits += _hit(vlm_relevance(model, inputs, truth, through_tower=True), masks)
            ig_hits += _hit(vlm_integrated_gradients(model, inputs, truth, steps=ig_steps), masks)
    layers = len(per_layer[0]) // min(batch, n)
    by_layer = np.array([np.array(p).reshape(layers, -1).mean(1) for p in per_layer]).mean(0)
    return {
        "attention_hit": float(np.mean(hits)),
        "attention_hit_per_layer": [round(float(x), 4) for x in by_layer],
        "relevance_hit": float(np.mean(rel_hits)),
        "tower_relevance_hit": float(np.mean(tower_hits)),
        "ig_hit": float(np.mean(ig_hits)),
        "baseline": float(np.mean(base)),
        "accuracy": float(np.mean(correct)),
        "n_maps": len(hits),
    }


def diffusion_pointing(
    pipe: Any,
    n: int = 64,
    seed: int = DIFFUSION_SEED,
    steps: int = 25,
    guidance_scale: float | None = None,
    batch: int = 32,
    n_objects: int = 2,
) -> dict[str, Any]:
    """Pointing game of shape-word cross-attention in generated images.

    Args:
        pipe: the teaching pipeline (from `mmviz.teaching.load_diffusion`).
        n: held-out captions (each scored for all its shape words).
        seed: caption and noise seed.
        steps: denoising steps.
        guidance_scale: classifier-free guidance (default: the pipeline's own, `_pipeline.GUIDANCE_SCALE` for
            the teaching pipeline).
        batch: prompts per pipeline call.
        n_objects: objects per caption (2: "a red circle left of a blue square"; 1: "a red circle").

    Returns:
        ``hit`` (peak inside the colour-segmented object), ``baseline`` (that mask's
        area; 0 for objects not drawn), ``drawn`` (fraction of objects whose colour
        covers at least 8 pixels), plus ``images`` (uint8, for inspection; not JSON).
    """
    import torch

    from mmviz.teaching._maps import install_recorder
    from mmviz.teaching._pipeline import to_uint8
    from mmviz.teaching.train_diffusion import shape_positions

    scenes = make_scenes(n, seed=seed, n_objects=n_objects)
    size = pipe.unet.config.sample_size
    saved = pipe.unet.attn_processors
    recorder = install_recorder(pipe.unet, (size, size))
    hits: list[bool] = []
    base: list[float] = []
    drawn: list[bool] = []
    images: list[np.ndarray] = []
    try:
        for start in range(0, n, batch):
            chunk = scenes[start : start + batch]
            recorder.reset()
            gen = torch.Generator().manual_seed(seed + start)
            out = pipe(
                [s.caption for s in chunk],
                num_inference_steps=steps,
                generator=gen,
                output_type="np",
                **({} if guidance_scale is None else {"guidance_scale": guidance_scale}),
            )
            imgs = to_uint8(out.images)
            images.extend(imgs)
            assert recorder.total is not None
            cond = recorder.total[-len(chunk) :]  # [uncond; cond] under guidance
            for b, s in enumerate(chunk):
                positions = shape_positions(s.caption, pipe.tokenizer)
                for k, pos in enumerate(positions):
                    mask = segment_colour(imgs[b], s.objects[k].colour)
                    ok = mask.sum() >= 8
                    drawn.append(bool(ok))
                    base.append(float(mask.mean()))
                    hits.append(bool(ok) and _hit(cond[b, pos][None], [mask])[0])
    finally:
        pipe.unet.set_attn_processor(saved)
    return {
        "hit": float(np.mean(hits)),
        "baseline": float(np.mean(base)),
        "drawn": float(np.mean(drawn)),
        "n_maps": len(hits),
        "images": np.stack(images),
    }


def scene_summary(scene: Scene) -> str:
    """One line describing a scene (for logs)."""
    return f"{scene.caption} | " + ", ".join(f"{q} -> {a}" for q, a, _ in scene.qa)


def main() -> None:
    """Print the pointing-game figures of every shipped model as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="clip,vlm,diffusion")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n", type=int, default=200, help="scenes for CLIP and the VLM")
    parser.add_argument("--n-diffusion", type=int, default=64)
    parser.add_argument("--save-images", default="", help="write generated images to this .npy")
    args = parser.parse_args()

    import torch

    import mmviz.teaching as teaching

    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {}
    if "clip" in args.models:
        model, _ = teaching.load_clip()
        results["clip"] = clip_pointing(model, n=args.n)
        print(json.dumps({"clip": results["clip"]}), flush=True)
    if "vlm" in args.models:
        vlm, _ = teaching.load_vlm()
        results["vlm"] = vlm_pointing(vlm, n=args.n)
        print(json.dumps({"vlm": results["vlm"]}), flush=True)
    if "diffusion" in args.models:
        pipe = teaching.load_diffusion()
        for k in (2, 1):
            res = diffusion_pointing(pipe, n=args.n_diffusion, n_objects=k)
            images = res.pop("images")
            if args.save_images:
                np.save(args.save_images.replace(".npy", f"_{k}.npy"), images)
            results[f"diffusion_{k}"] = res
            print(json.dumps({f"diffusion ({k} object{'s' if k > 1 else ''})": res}), flush=True)


if __name__ == "__main__":
    main()
