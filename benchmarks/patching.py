"""Cost of ``mmviz.patch``: a residual sweep over every (layer, position) pair against plain forwards and a hand loop.

A GPT-2-shaped model (``GPT2LMHeadModel``, 12 layers × 12 heads × d768, 50 257-word head, random weights from
the config) at 64 tokens; residual patching of all 12 × 64 = 768 (layer, position) pairs, batch size 64:

* ``mmviz.patch(method="exact")`` (768 patched runs in 12 batches, plus its clean and corrupted forwards)
  against the same number of plain forwards of the corrupted input at the same batch size (12 forwards of
  64 copies, no hooks). Goal: ≤ 1.15 ×.
* against the loop a user writes by hand: the clean activations recorded once, then one forward per pair
  with one hook that restores one position of one block's input (768 forwards of batch 1).
* ``nnsight`` (when importable): the same sweep in its idiom, one trace per pair (its ``NNsight`` wrapper of a
  transformers model refuses several invokes in one trace, so it cannot batch the pairs).
* ``mmviz.patch(method="attribution")`` over the whole grid, in forward-equivalents (its time over one
  plain batch-1 forward). Goal: ≤ 3.
* peak memory: peak RSS above the model's of a fresh process running ``mmviz.patch`` on one batch of cells
  (64) and on the full grid, at the same batch size. Goal: the same.

Times are CPU times of the child (``time.process_time``; with one thread the steadiest figure on a shared
machine). Every figure comes from a fresh child process (one per configuration and round), rounds interleave the
configurations so that machine load hits them alike; the median of ``--repeats`` rounds is printed. The
logits are read at the last position only (``logits_to_keep=1``) by every configuration.

Run: ``python benchmarks/patching.py`` (``--quick``: 2 layers × 16 tokens smoke run; ``--threads N``;
``--nnsight-path DIR`` to add a directory holding nnsight to ``sys.path``; ``--grid-layers N`` to sweep only the
first N layers' pairs where the full sweep takes too long: the ratios do not depend on the grid's size).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

CONFIGS = ("plain", "mmviz", "hand", "nnsight", "attribution", "forward1", "memory_small", "memory_full")


def _peak_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def _reset_peak() -> float:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _setup(args: argparse.Namespace) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=args.layers, n_head=12, n_embd=768, n_positions=1024)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (1, args.tokens), generator=g)
    other = ids.clone()
    other[0, : args.tokens // 2] = torch.randint(0, cfg.vocab_size, (args.tokens // 2,), generator=g)
    clean = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    corrupt = {"input_ids": other, "attention_mask": torch.ones_like(ids)}
    return model, clean, corrupt


def _child(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import mmviz

    model, clean, corrupt = _setup(args)
    grid_layers = list(range(args.grid_layers or args.layers))
    pairs = len(grid_layers) * args.tokens
    answer = 11
    kw = {"logits_to_keep": 1}
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        model(**corrupt, **kw)  # warm-up: every configuration starts from a model that has run once
    base = _reset_peak()
    t0 = time.process_time()
    if args.child == "plain":
        batch = {k: v.repeat(args.batch, 1) for k, v in corrupt.items()}
        with torch.no_grad():
            for start in range(0, pairs, args.batch):
                n = min(args.batch, pairs - start)
                model(**{k: v[:n] for k, v in batch.items()}, **kw).logits[:, -1].log_softmax(-1)[:, answer]
    elif args.child == "forward1":
        with torch.no_grad():
            for _ in range(5):
                model(**corrupt, **kw)
        return {"seconds": (time.process_time() - t0) / 5, "peak_mib": _peak_mib() - base}
    elif args.child in ("mmviz", "memory_full"):
        mmviz.patch(model, clean, corrupt, metric=answer, layers=grid_layers, batch_size=args.batch, progress=False)
    elif args.child == "memory_small":  # one batch of cells: the same batch size as the full grid's
        mmviz.patch(
            model,
            clean,
            corrupt,
            metric=answer,
            batch_size=args.batch,
            layers=[0],
            positions=range(min(args.batch, args.tokens)),
            progress=False,
        )
    elif args.child == "attribution":
        mmviz.patch(model, clean, corrupt, metric=answer, layers=grid_layers, method="attribution", progress=False)
    elif args.child == "hand":
        _hand_loop(model, clean, corrupt, answer, kw, grid_layers)
    elif args.child == "nnsight":
        _nnsight(model, clean, corrupt, answer, grid_layers)
    seconds = time.process_time() - t0
    return {"seconds": seconds, "peak_mib": _peak_mib() - base}


def _hand_loop(
    model: Any, clean: dict[str, Any], corrupt: dict[str, Any], answer: int, kw: dict[str, Any], layers: list[int]
) -> None:
    import torch

    blocks = model.transformer.h
    saved: dict[int, torch.Tensor] = {}
    handles = [b.register_forward_pre_hook(lambda m, a, i=i: saved.__setitem__(i, a[0])) for i, b in enumerate(blocks)]
    with torch.no_grad():
        model(**clean, **kw)
    for h in handles:
        h.remove()
    with torch.no_grad():
        for layer in layers:
            block = blocks[layer]
            for pos in range(clean["input_ids"].shape[1]):

                def restore(m: Any, a: Any, layer: int = layer, pos: int = pos) -> Any:
                    x = a[0].clone()
                    x[:, pos] = saved[layer][:, pos]
                    return (x, *a[1:])

                h = block.register_forward_pre_hook(restore)
                try:
                    model(**corrupt, **kw).logits[:, -1].log_softmax(-1)[:, answer]
                finally:
                    h.remove()


def _nnsight(model: Any, clean: dict[str, Any], corrupt: dict[str, Any], answer: int, layers: list[int]) -> None:
    """The sweep in nnsight's idiom: one trace per pair (``NNsight`` wrappers refuse batched invokes)."""
    import torch
    from nnsight import NNsight

    net = NNsight(model)
    saved = []
    with torch.no_grad():
        with net.trace(**clean, logits_to_keep=1):
            for layer in layers:
                saved.append(net.transformer.h[layer].input.save())
        for i, layer in enumerate(layers):
            clean_state = saved[i]
            for pos in range(clean["input_ids"].shape[1]):
                with net.trace(**corrupt, logits_to_keep=1):
                    net.transformer.h[layer].input[:, pos] = clean_state[:, pos]
                    net.lm_head.output[:, -1].log_softmax(-1)[:, answer].save()


def _run_child(config: str, args: argparse.Namespace) -> dict[str, Any] | None:
    cmd = [sys.executable, __file__, "--child", config, "--layers", str(args.layers), "--tokens", str(args.tokens)]
    cmd += ["--batch", str(args.batch), "--threads", str(args.threads), "--grid-layers", str(args.grid_layers)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MALLOC_MMAP_THRESHOLD_="65536")
    if args.nnsight_path:
        env["PYTHONPATH"] = os.pathsep.join([env.get("PYTHONPATH", ""), args.nnsight_path])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        print(f"  {config}: failed ({tail[0][:200]})", flush=True)
        return None
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {config}: {result['seconds']:.2f} s CPU, peak +{result['peak_mib']:.0f} MiB", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=CONFIGS)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--grid-layers", type=int, default=0, help="patch only the first N layers (0: all)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip", nargs="*", default=[], choices=CONFIGS, help="configurations not to run")
    parser.add_argument("--nnsight-path", default="")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args)))
        return
    if args.quick:
        args.layers, args.tokens, args.batch = 2, 16, 8
    n_grid = args.grid_layers or args.layers
    print(
        f"patching benchmark: GPT-2 shape {args.layers} layers × 12 heads × d768 at {args.tokens} tokens, "
        f"{n_grid * args.tokens} (layer, position) pairs, batch {args.batch}, {args.threads} thread(s); "
        f"{platform.machine()} {os.cpu_count()} CPU(s)",
        flush=True,
    )
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in CONFIGS if c not in args.skip}
    for round_ in range(args.repeats):
        print(f"round {round_ + 1}/{args.repeats}", flush=True)
        for config in runs:
            result = _run_child(config, args)
            if result is not None:
                runs[config].append(result)

    def median(config: str, key: str = "seconds") -> float | None:
        values = [r[key] for r in runs.get(config, [])]
        return statistics.median(values) if values else None

    plain, ours = median("plain"), median("mmviz")
    print("\nresults (median over rounds)")
    if plain and ours:
        print(f"  mmviz.patch exact: {ours:.2f} s vs {plain:.2f} s plain forwards: {ours / plain:.3f}× (goal ≤ 1.15×)")
    hand = median("hand")
    if hand and ours:
        print(f"  hand loop (one hook, one forward per pair): {hand:.2f} s: mmviz is {hand / ours:.2f}× faster")
    nn = median("nnsight")
    if nn and ours:
        print(f"  nnsight, one trace per pair: {nn:.2f} s: {nn / ours:.2f}× mmviz's time")
    elif "nnsight" in runs:
        print("  nnsight: not timed (it failed above; pass --nnsight-path DIR where it is not installed)")
    attr, one = median("attribution"), median("forward1")
    if attr and one:
        print(f"  attribution patching: {attr:.3f} s = {attr / one:.2f} forward-equivalents (goal ≤ 3)")
    small, full = median("memory_small", "peak_mib"), median("memory_full", "peak_mib")
    if small is not None and full is not None:
        cells, one = n_grid * args.tokens, min(args.batch, args.tokens)
        print(f"  peak RSS above the model: {one}-cell grid +{small:.0f} MiB, {cells}-cell grid +{full:.0f} MiB")


if __name__ == "__main__":
    main()
