"""How many vision-language families get every image token laid out — and verified? Every image-text-to-text
family transformers ships, tiny, random, on CPU.

For each ``model_type`` in ``MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES`` the script builds a tiny model
and one prompt with one image:

* the families named in issue 15 (and the ones with hand-written layouts) come from the builders in
  ``tests/fixtures/tiny_vlms.py`` / ``tests/capture/conftest.py``: the real processor class with a tiny
  tokenizer and image processor;
* every other family is built generically: its default config shrunk as ``generality_sweep.py`` does,
  weights that initialise to zeros randomised, the image placeholder moved into the small vocabulary,
  square pixels at the tower's ``image_size``, and as many placeholders as ``get_image_features`` returns
  features.

It then captures one forward with ``mmviz.capture`` and checks the layout with
``mmviz.capture.layouts.verify.verify_layout``: the image tokens are the positions the pixels reach
(measured), *laid out* when the table gives them an image, row and column, *verified* when perturbing
each row and each column of pixels changes exactly the tokens the table puts there. The image side is
the language model's sequence, or the keys of the cross-attention or resampler that holds the patches
(Mllama, Kosmos-2). Statuses:

* ``verified``: every image token laid out and verified;
* ``partial``: image tokens reached, not all laid out or verified (the line says how many);
* ``queries``: the language model's image tokens are learned queries (Q-Former, resampler) and no
  stack holds laid-out patches;
* ``not-built``: the tiny model or inputs its forward accepts could not be made (the generic builder's
  limits; checked by running the forward without mmviz);
* ``error``: the capture or the check raised.

Run: ``python benchmarks/vlm_layout_sweep.py [--only gemma3,mllama | --named] [--timeout 60] [--json out.json]``.
One CPU thread.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from generality_sweep import Timeout, build, quiet, time_limit

import mmviz
from mmviz.capture.layouts.verify import verify_layout

NAMED = (
    "qwen2_5_vl", "qwen3_vl", "gemma3", "llava_next", "llava_onevision", "idefics3", "smolvlm", "internvl",
    "mistral3", "aya_vision", "mllama", "blip", "git", "florence2", "kosmos-2",
)  # fmt: skip
"""The families issue 15 names (goal: 100 % verified)."""

PLACEHOLDER = 5
"""Vocabulary id the generic builder gives the image placeholder."""


def builders() -> dict[str, Any]:
    """model_type → builder of ``(model, processor, inputs)`` for the families with a real processor."""
    from tests.capture import conftest as tiny
    from tests.fixtures import tiny_vlms

    families = {**tiny_vlms.FAMILIES, **tiny_vlms.LEGACY, **tiny_vlms.ENCODER_DECODER}
    out: dict[str, Any] = {name.replace("kosmos2", "kosmos-2"): fn for name, fn in families.items()}

    def with_prompt(make: Any, text: str) -> Any:
        def made() -> Any:
            model, processor = make()
            inputs = dict(processor(text=[text], images=[tiny_vlms.IMG], return_tensors="pt"))
            inputs.pop("labels", None)
            return model, processor, inputs

        return made

    def qwen2_vl() -> Any:
        model, processor = tiny.make_qwen2_vl()
        text = ["<|vision_start|><|image_pad|><|vision_end|> what shape"]
        return model, processor, tiny.qwen2_vl_inputs(processor, text, [tiny_vlms.IMG])

    out.update(
        llava=with_prompt(tiny.make_llava, "<image> what shape"),
        paligemma=with_prompt(tiny.make_paligemma, "<image> what shape"),
        qwen2_vl=qwen2_vl,
    )
    out["blip-2"] = with_prompt(tiny.make_blip2, "what shape")
    return out


def generic(model_type: str, class_name: str) -> tuple[Any, Any, dict[str, Any]]:
    """A shrunk default model, one image at the tower's size and as many placeholders as it has features."""
    from tests.fixtures.tiny_vlms import randomize_zero_weights

    model = build(model_type, class_name)
    config = model.config
    vc, tc = getattr(config, "vision_config", None), getattr(config, "text_config", None)
    width = getattr(tc, "hidden_size", None)
    if width is not None and getattr(vc, "out_hidden_size", width) != width:  # the merger's output feeds the text
        vc.out_hidden_size = width
        torch.manual_seed(0)
        model = type(model)(config).eval()
    randomize_zero_weights(model)
    for cfg in (config, getattr(config, "text_config", None)):
        for name in ("image_token_id", "image_token_index"):
            if cfg is not None and isinstance(getattr(cfg, name, None), int):
                setattr(cfg, name, PLACEHOLDER)
    vc = getattr(config, "vision_config", None) or config
    features_of = getattr(model, "get_image_features", None) or model.model.get_image_features
    params = inspect.signature(features_of).parameters
    gen = torch.Generator().manual_seed(0)
    extra: dict[str, Any] = {}
    if "image_grid_thw" in params:  # flattened patches (Qwen2-VL style): an 8×8 grid of raw patches
        merge = int(getattr(vc, "spatial_merge_size", 2) or 2)
        temporal = int(getattr(vc, "temporal_patch_size", 1) or 1)
        channels = int(getattr(vc, "in_channels", None) or getattr(vc, "num_channels", 3))
        side = 4 * merge
        patch = int(getattr(vc, "patch_size", 14))
        pixels = torch.randn(side * side, channels * temporal * patch * patch, generator=gen)
        extra["image_grid_thw"] = torch.tensor([[1, side, side]])
    else:
        size = getattr(vc, "image_size", 224)
        size = size if isinstance(size, int) else 224 if isinstance(size, dict) else int(next(iter(size)))
        pixels = torch.randn(1, getattr(vc, "num_channels", 3), size, size, generator=gen)
        if "image_sizes" in params:  # any-resolution families
            extra["image_sizes"] = torch.tensor([[size, size]])
    with torch.no_grad():
        try:
            features = features_of(pixel_values=pixels, **extra)
        except (ValueError, RuntimeError):
            if pixels.ndim != 4:
                raise
            pixels = pixels[None]  # families that take [batch, images, C, H, W] (Idefics2)
            features = features_of(pixel_values=pixels, **extra)
    features = getattr(features, "pooler_output", features)
    if isinstance(features, (list, tuple)):
        features = torch.cat([f.reshape(-1, f.shape[-1]) for f in features])
    n = int(features.reshape(-1, features.shape[-1]).shape[0])
    ids = torch.tensor([[1] + [PLACEHOLDER] * n + [7, 8, 9]])
    if "mm_token_type_ids" in inspect.signature(model.forward).parameters:
        extra["mm_token_type_ids"] = (ids == PLACEHOLDER).long()
    return model, None, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels, **extra}


def image_side(trace: Any) -> tuple[str, str] | None:
    """The stack and side holding the image's patches as the language model sees them."""
    text = [m for m, mod in trace.modules.items() if mod.query_table in ("text", "decoder_sequence")]
    for m in text:
        if (trace.tokens(m, side="query").kind == "image").any():
            return m, "query"
    for m, mod in trace.modules.items():  # cross-attention or resampler keys (Mllama, Kosmos-2, BLIP-2's Q-Former)
        if mod.key_table != mod.query_table and (trace.tokens(m, side="key").kind == "image").any():
            return m, "key"
    return None


def check(model_type: str, class_name: str, made: dict[str, Any]) -> tuple[str, str]:
    try:
        model, processor, inputs = made[model_type]() if model_type in made else generic(model_type, class_name)
        with torch.no_grad():
            model(**inputs)  # the inputs must work without mmviz
    except Exception as e:
        return "not-built", f"{type(e).__name__}: {str(e)[:150]}"
    try:
        with torch.no_grad(), mmviz.capture(model, processor=processor) as cap:
            model(**inputs)
        trace = cap.attention
        side = image_side(trace)
        if side is None:
            queries = any(
                np.char.startswith(trace.tokens(m, side="query").text.astype(str), "<query ").any()
                for m in trace.modules
            )
            return ("queries" if queries else "partial"), "no stack has laid-out image tokens"
        stack, which = side
        result = verify_layout(model, inputs, trace.tokens(stack, side=which), stack, processor, side=which)
    except Exception as e:
        return "error", f"{type(e).__name__}: {str(e)[:150]}"
    where = f"{stack}, {which} side"
    counts = f"{result.verified}/{result.image_tokens} verified, {result.laid_out} laid out ({where})"
    return ("verified" if result.ok else "partial"), counts + ("" if result.ok else f"; {result.failures[:2]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated model types")
    parser.add_argument("--named", action="store_true", help="only the families issue 15 names")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per family")
    parser.add_argument("--json", default="", help="write every result to this file")
    args = parser.parse_args()

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    only = {s for s in args.only.split(",") if s} | (set(NAMED) if args.named else set())
    todo = [(t, c) for t, c in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.items() if not only or t in only]
    made = builders()
    results: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    for i, (model_type, class_name) in enumerate(todo):
        t0 = time.perf_counter()
        try:
            with time_limit(args.timeout), quiet():
                status, message = check(model_type, class_name, made)
        except Timeout as e:
            status, message = "error", str(e)
        seconds = time.perf_counter() - t0
        results[model_type] = {"status": status, "message": message, "seconds": round(seconds, 2)}
        mark = "*" if model_type in NAMED else " "
        print(
            f"[{i + 1:3d}/{len(todo)}]{mark}{model_type:28s} {status:10s} {seconds:5.1f}s {message[:120]}", flush=True
        )

    print(f"\n== summary ({time.perf_counter() - start:.0f} s) ==")
    for label, names in (("named in issue 15", [t for t in NAMED if t in results]), ("all families", list(results))):
        counts = Counter(results[t]["status"] for t in names)
        ok = counts["verified"]
        share = 100 * ok / max(len(names), 1)
        print(f"{label}: {ok}/{len(names)} every image token laid out and verified ({share:.0f} %)")
        print("   " + ", ".join(f"{s} {n}" for s, n in sorted(counts.items())))
    missing = [t for t in NAMED if t in results and results[t]["status"] != "verified"]
    for t in missing:
        print(f"  named, not verified: {t}: {results[t]['status']} — {results[t]['message'][:160]}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
