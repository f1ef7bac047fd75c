"""Thumbnails of a long ``store="qk"`` trace: what ``trace.show()`` computes before the first paint.

A 12-layer × 12-head trace of random queries and keys (head dim 64, causal, float32 as a CPU capture
stores them) at ``--tokens`` (default 8192). An ``AttentionView`` shows a 32 × 32 thumbnail of every
head and of the head maximum per layer.

* **baseline**: the per-layer path views used before, rows recomputed in chunks of 512 by
  ``ModuleAttention.rows`` and block-averaged (``display.block_mean``), one layer;
* **block_means**: ``ModuleAttention.block_means(..., head_max=True)`` of the same layer (one thread), and
  of all layers (threads: one per core), then the same call again (cached on the trace: what ``save_html``
  after ``show()`` costs).

The one-layer figures are interleaved, median of ``--repeats``; the ratio is baseline / block_means.
Goal: all 12 × 12 thumbnails at 8192 tokens in ≤ 15 s on a 2-core machine. CPU time (all threads) and
wall time are both printed: on a shared machine CPU time is the steadier.

Run: ``python benchmarks/qk_views.py`` (``--tokens 2048`` for a quick run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

from mmviz.data import ModuleAttention
from mmviz.data.display import block_mean, steps
from mmviz.data.qk import QKAttention

LAYERS, HEADS, DIM, THUMB = 12, 12, 64, 32


def trace_module(tokens: int) -> ModuleAttention:
    rng = np.random.default_rng(0)
    qk = QKAttention(
        query=rng.standard_normal((1, LAYERS, HEADS, tokens, DIM), dtype=np.float32),
        key=rng.standard_normal((1, LAYERS, HEADS, tokens, DIM), dtype=np.float32),
        scaling=np.full(LAYERS, DIM**-0.5),
        mask=None,
        causal=True,
        head_index=np.arange(HEADS),
    )
    return ModuleAttention("language_model", tuple(range(LAYERS)), tuple(range(HEADS)), "text", "text", qk=qk)


def baseline_layer(module: ModuleAttention, layer: int, q_step: int, k_step: int) -> None:
    """The earlier view path: 512 rows of every head at a time, block-averaged, and their maximum."""
    n = module.shape[3]
    chunk = q_step * max(1, 512 // q_step)
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        p = np.stack([module.rows(rows, 0, layer, head) for head in range(HEADS)])
        block_mean(p, q_step, k_step)
        block_mean(p.max(axis=0), q_step, k_step)


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args()
    module = trace_module(opts.tokens)
    q_step, k_step = steps(opts.tokens, opts.tokens, THUMB)
    print(
        f"# qk thumbnails: {LAYERS} layers × {HEADS} heads × {opts.tokens} tokens, {THUMB}×{THUMB} cells, "
        f"{os.cpu_count()} CPU(s), load {os.getloadavg()[0]:.1f}"
    )

    def new_layer() -> None:
        module._blocks.clear()  # measure the computation, not the cache
        module.block_means(0, q_step, k_step, layers=[0], head_max=True)

    base: dict[str, list[float]] = {"wall": [], "cpu": []}
    new: dict[str, list[float]] = {"wall": [], "cpu": []}
    for _ in range(opts.repeats):
        for store, fn in ((base, lambda: baseline_layer(module, 0, q_step, k_step)), (new, new_layer)):
            wall, cpu = timed(fn)
            store["wall"].append(wall)
            store["cpu"].append(cpu)
    print("\n| one layer (12 heads + max), 1 thread | baseline | block_means | ratio |")
    print("|---|---|---|---|")
    for kind in ("cpu", "wall"):
        b, n = statistics.median(base[kind]), statistics.median(new[kind])
        print(f"| {kind} time (s) | {b:.2f} | {n:.2f} | {b / n:.1f}× |")

    module._blocks.clear()
    wall, cpu = timed(lambda: module.block_means(0, q_step, k_step, head_max=True, progress=False))
    again_wall, _ = timed(lambda: module.block_means(0, q_step, k_step, head_max=True))
    print(
        f"\nall {LAYERS} × {HEADS} thumbnails and maxima, threads = cores: wall {wall:.1f} s, CPU {cpu:.1f} s "
        f"(goal ≤ 15 s wall on 2 cores); again (cached): {again_wall * 1000:.1f} ms"
    )
    print(f"baseline for all layers, extrapolated from one: {statistics.median(base['wall']) * LAYERS:.0f} s wall")


if __name__ == "__main__":
    main()
