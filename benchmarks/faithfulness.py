"""Cost of mmviz.evaluate's model-running checks against the forwards and maps they cannot avoid.

Model: GPT-2-shaped (random weights from a config; by default 6 layers × 8 heads × d512 and GPT-2's 50 257
words, ``--layers/--width`` to change), a 256-token prompt, target: one word's logit at the last position.

* **deletion**: ``mmviz.evaluate(map, model, inputs, checks=("deletion",), steps=20, random_orders=0)``
  — 21 points of the curve (0, 1/20, ..., 1 of the 256 tokens removed) in batches of ``--batch`` — against
  21 plain forwards of the same batch size (``model(input_ids, logits_to_keep=1)`` on copies of the
  prompt). Goal ≤ 1.1×. The judged map is a fixed random array (the map itself costs nothing here).
* **model randomisation**: ``checks=("model_randomization",)`` on a saliency map — one map per randomised
  block, top-down — against recomputing the same map once per block with ``mmviz.attribute`` (what the
  check cannot avoid). Goal ≤ 1.1×.

Configurations are interleaved ``--repeats`` times in one process (one torch thread) and each one's fastest
run is kept: other jobs on a shared machine only ever slow a run down. Quantus is not timed: its deletion-style
metrics perturb a model's input array (token ids, for a language model), not token embeddings, so it has no
like-for-like run here; ``tests/evaluation/test_quantus.py`` compares its mask scores with mmviz's.

Run: ``python benchmarks/faithfulness.py`` (``--repeats 3 --layers 6 --width 512 --tokens 256``).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import mmviz

TARGET = 1234


def _build(layers: int, width: int, tokens: int) -> tuple[Any, dict[str, Any]]:
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=layers, n_embd=width, n_head=8, n_positions=max(1024, tokens))
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, tokens))
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _best(fn: Callable[[], Any], runs: list[float]) -> None:
    start = time.perf_counter()
    fn()
    runs.append(time.perf_counter() - start)


def main() -> None:
    """Prints the two ratios (and Quantus's time where it is installed)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    model, inputs = _build(args.layers, args.width, args.tokens)
    n = args.tokens
    points = args.steps + 1
    the_map = np.random.default_rng(0).random(n)
    tokens = mmviz.attribute(model, inputs, method="saliency", target=TARGET, progress=False).tokens
    saliency = mmviz.attribute(model, inputs, method="saliency", target=TARGET, progress=False)
    n_blocks = args.layers

    def deletion() -> None:
        mmviz.evaluate(
            the_map,
            model,
            inputs,
            tokens=tokens,
            target=TARGET,
            checks=("deletion",),
            steps=args.steps,
            random_orders=0,
            batch_size=args.batch,
            progress=False,
        )

    def plain_forwards() -> None:
        with torch.no_grad():
            for start in range(0, points, args.batch):
                k = min(args.batch, points - start)
                model(input_ids=inputs["input_ids"].expand(k, -1), logits_to_keep=1)

    def randomization() -> None:
        mmviz.evaluate(saliency, model, inputs, checks=("model_randomization",), progress=False)

    def recompute_per_block() -> None:
        for _ in range(n_blocks):
            mmviz.attribute(model, inputs, method="saliency", target=TARGET, progress=False)

    runs: dict[str, list[float]] = {k: [] for k in ("deletion", "plain", "randomization", "recompute")}
    for _ in range(args.repeats):
        _best(deletion, runs["deletion"])
        _best(plain_forwards, runs["plain"])
        _best(randomization, runs["randomization"])
        _best(recompute_per_block, runs["recompute"])
    best = {k: min(v) for k, v in runs.items()}
    shape = f"GPT-2-shaped {args.layers}×d{args.width}, {n} tokens, batch {args.batch}, {args.threads} thread(s)"
    print(f"{shape}; best of {args.repeats}")
    print(
        f"deletion curve ({points} points) {best['deletion']:.2f} s vs {points} plain forwards "
        f"{best['plain']:.2f} s: {best['deletion'] / best['plain']:.2f}× (goal ≤ 1.1×)"
    )
    print(
        f"model randomisation ({n_blocks} blocks) {best['randomization']:.2f} s vs {n_blocks} saliency maps "
        f"{best['recompute']:.2f} s: {best['randomization'] / best['recompute']:.2f}× (goal ≤ 1.1×)"
    )
    if importlib.util.find_spec("quantus") is None:
        print("Quantus: not installed beside this stack; not timed")
    else:
        print(
            "Quantus: installed, not timed: its deletion-style metrics (RegionPerturbation, ...) perturb the "
            "model's input array, which for a language model is token ids, not embeddings; "
            "tests/evaluation/test_quantus.py checks its mask scores against mmviz's instead"
        )


if __name__ == "__main__":
    main()
