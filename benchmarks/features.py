"""``mmviz.features`` against capturing the same site alone (goal: ≤ 1.3× the capture).

Model: a GPT-2-small-shaped ``GPT2LMHeadModel`` (12 layers × 12 heads × d768, vocabulary 50 257), random
weights built from its config; input: 1024 random token ids. SAE: 16 384 features on d768 (random weights,
relu, b_dec subtracted).

Rows (the configurations interleaved ``--repeats`` times in one process, the fastest run of each kept — other
jobs on a shared machine only ever slow a run down):

* ``capture``: the baseline — the model's forward under ``torch.no_grad()`` with the residual stream after
  block 6 recorded (what ``mmviz.capture`` or any method reading that site from a run pays);
* ``capture to the site``: the same forward stopped after block 6, as ``mmviz.features`` runs it (the second
  baseline: the ratio of ``features`` to it is the SAE's own cost);
* ``features k=16``: ``mmviz.features(model, inputs, sae, site="h.6", k=16)``: the forward to the site, then
  the SAE encode, decode (reconstruction error) and top-k of every position;
* ``features k=16, 8 named``: also keeps eight features' full activation rows.

Times: wall clock and process CPU time (the CPU time is what other jobs on a shared machine do not
inflate). Peak memory: ``tracemalloc`` peak of the numpy/Python side (the trace), and the size of what the trace keeps
against ``positions × k`` and against a dense ``positions × d_sae`` float32 array.

Run: ``python benchmarks/features.py`` (``--repeats 3``, ``--threads 1``).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

POSITIONS, D_MODEL, D_SAE, SITE = 1024, 768, 16384, "h.6"


def _model() -> Any:
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=D_MODEL, n_layer=12, n_head=12, n_positions=POSITIONS)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _sae() -> Any:
    from mmviz.features import sae_from_arrays

    rng = np.random.default_rng(0)
    return sae_from_arrays(
        {
            "W_enc": (rng.standard_normal((D_MODEL, D_SAE), np.float32) / np.sqrt(D_MODEL)).astype(np.float32),
            "W_dec": (rng.standard_normal((D_SAE, D_MODEL), np.float32) / np.sqrt(D_SAE)).astype(np.float32),
            "b_enc": np.full(D_SAE, -0.5, np.float32),
            "b_dec": np.zeros(D_MODEL, np.float32),
        }
    )


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call (CPU time is what other jobs on the machine do not add)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    import mmviz
    from mmviz._hf.residual import record_residual
    from mmviz._hf.sites import find_site
    from mmviz.features._run import stop_after

    torch.set_num_threads(args.threads)
    model, sae = _model(), _sae()
    inputs = {"input_ids": torch.randint(0, 50257, (1, POSITIONS))}
    site = find_site(model, SITE)

    def capture() -> Any:
        with torch.no_grad(), record_residual(site.blocks, [site.state]) as seen:
            model(**inputs)
        return seen[site.state][0]

    def capture_to_site() -> Any:
        with (
            torch.no_grad(),
            record_residual(site.blocks, [site.state]) as seen,
            stop_after(site.blocks[site.index]) as s,
        ):
            s.run(model, inputs)
        return seen[site.state][0]

    rows: dict[str, Callable[[], Any]] = {
        "capture": capture,
        "capture to the site": capture_to_site,
        "features k=16": lambda: mmviz.features(model, inputs, sae, site=SITE, k=16),
        "features k=16, 8 named": lambda: mmviz.features(model, inputs, sae, site=SITE, k=16, features=range(8)),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in rows}
    rows["capture"]()  # warm-up
    for _ in range(args.repeats):
        for name, fn in rows.items():
            times[name].append(_timed(fn))
    base_wall = min(w for w, _ in times["capture"])
    base_cpu = min(c for _, c in times["capture"])
    site_cpu = min(c for _, c in times["capture to the site"])
    print(
        f"{POSITIONS} positions, d_model {D_MODEL}, SAE {D_SAE} features, {args.threads} thread(s), "
        f"best of {args.repeats}"
    )
    for name, ts in times.items():
        wall, cpu = min(w for w, _ in ts), min(c for _, c in ts)
        print(
            f"  {name:<24} wall {wall:7.3f} s ({wall / base_wall:4.2f}× capture)   "
            f"cpu {cpu:7.3f} s ({cpu / base_cpu:4.2f}× capture, {cpu / site_cpu:4.2f}× capture to the site)"
        )

    tracemalloc.start()
    ft = rows["features k=16"]()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    kept = sum(getattr(ft, n).nbytes for n in ft._ARRAYS)
    dense = POSITIONS * D_SAE * 4
    print(
        f"  trace arrays {kept / 2**20:.2f} MiB (positions × k × 8 B = {POSITIONS * 16 * 8 / 2**20:.2f} MiB, "
        f"+ [d_sae] statistics {D_SAE * 12 / 2**20:.2f} MiB); numpy peak {peak / 2**20:.2f} MiB; "
        f"a dense positions × d_sae float32 would be {dense / 2**20:.0f} MiB"
    )


if __name__ == "__main__":
    main()
