"""Cost of ``mmviz.logit_lens``: every layer and position against one forward plus the unembedding it cannot avoid.

A GPT-2-shaped causal LM (``GPT2LMHeadModel``, random weights; 12 layers × d768 and a 50 257-token vocabulary
unless told) at 1024 tokens, batch 1. Variants, interleaved so that machine load hits them alike, median of
``--repeats`` runs after one warm-up:

* **baseline**: one forward with ``output_hidden_states=True`` (its LM head makes the last state's logits),
  then the final norm and the ``[tokens, dim] × [dim, vocab]`` unembedding of each other hidden state — the
  matmuls any logit lens must do — each result dropped at once;
* **lens**: ``mmviz.logit_lens(model, inputs, top_k=10, tokens=[...])`` of all 13 hidden states at every
  position, ``LensTrace`` built (top-k, entropy, named tokens). Goal: ≤ 1.2 × baseline.

Peak memory: the rise of this process's peak RSS (Linux ``VmHWM`` after ``clear_refs``) over its RSS before
each call, against the size of the ``[layers, tokens, vocab]`` float32 logits the lens never holds.

Run: ``python benchmarks/lens.py`` (``--quick``: 4 layers × d256 at 256 tokens; ``--threads``, ``--repeats``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from capture_overhead import _reset_peak, _status_mib  # benchmarks/ is on sys.path when run as a script


def _peak_rise(fn: Callable[[], Any]) -> float:
    """MiB the peak RSS rises above the RSS before ``fn`` runs (Linux only)."""
    before = _reset_peak()
    fn()
    return _status_mib("VmHWM") - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="4 layers × d256 at 256 tokens")
    args = parser.parse_args()
    if args.quick:
        args.layers, args.dim, args.tokens = 4, 256, 256
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # glibc reads it at start: restart with it set, so that
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # freed blocks leave the heap and the peak follows live memory
        os.execv(sys.executable, [sys.executable, *sys.argv])

    import torch
    import transformers

    import mmviz

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    transformers.logging.set_verbosity_error()
    cfg = transformers.GPT2Config(
        n_layer=args.layers,
        n_head=max(1, args.dim // 64),
        n_embd=args.dim,
        n_positions=args.tokens,
        vocab_size=args.vocab,
    )
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, args.vocab, (1, args.tokens))
    named = [11, 262, 290]

    def baseline() -> None:
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
            for hidden in out.hidden_states[:-1]:
                model.lm_head(model.transformer.ln_f(hidden))

    def lens() -> None:
        mmviz.logit_lens(model, {"input_ids": ids}, tokens=named, top_k=10)

    variants = {"baseline": baseline, "lens": lens}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    wall: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in variants.items():
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
    peaks = {name: statistics.median(_peak_rise(fn) for _ in range(2)) for name, fn in variants.items()}

    n_states = args.layers + 1
    dense = n_states * args.tokens * args.vocab * 4 / 2**20
    print("# mmviz logit lens cost —", platform.machine(), f"{os.cpu_count()} CPUs")
    print(f"# torch {torch.__version__}, transformers {transformers.__version__}, torch threads {args.threads}")
    print(f"# load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"# GPT-2 shape: {args.layers} layers × d{args.dim}, vocabulary {args.vocab}, {args.tokens} tokens, "
        f"{n_states} hidden states lensed at every position; median of {args.repeats} after one warm-up\n"
    )
    print("| variant | cpu s | wall s | cpu ratio | wall ratio | peak RSS rise MiB |")
    print("|---|---|---|---|---|---|")
    base_cpu, base_wall = statistics.median(cpu["baseline"]), statistics.median(wall["baseline"])
    for name in variants:
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        print(f"| {name} | {c:.2f} | {w:.2f} | {c / base_cpu:.3f} | {w / base_wall:.3f} | {peaks[name]:.0f} |")
    print(f"\n[layers, tokens, vocab] float32 logits the lens never holds: {dense:.0f} MiB")


if __name__ == "__main__":
    main()
