"""Cost of ``mmviz.capture``: forward time and memory against the uncaptured model, and the long-sequence store.

Part 1: a GPT-2-shaped model (12 layers × 12 heads × d768, random weights, ``GPT2Model``: the transformer
without the 50k-word LM head, whose matmul would hide the attention cost) at 128, 512 and 1024 tokens:

* forward time: sdpa without capture; eager with ``output_attentions=True``; ``mmviz.capture`` of all
  layers (dense, float16); ``mmviz.capture(layers=[5])``. Captures include building ``cap.attention``.
  Median of ``--repeats`` runs after one warm-up, the variants interleaved so that machine load hits
  them alike; CPU time (``time.process_time``, all threads) and wall time. On a shared machine CPU
  time is the steadier of the two. Goals: all layers ≤ 1.1 × eager+output_attentions; one layer ≤ 1.15 × sdpa.
* peak extra memory of a capture (peak RSS of a fresh process that runs an sdpa forward, then the
  capture and ``cap.attention``, minus its peak after the sdpa forward; median of three alternating
  windows; allocations over 64 KiB mapped and unmapped directly, ``MALLOC_MMAP_THRESHOLD_``, so that the
  peak follows live memory) against the float16 size of what is stored. Goal: ≤ 1.2 ×.

Part 2: ``store="qk"`` at 16 384 tokens on a 4-layer × 8-head Llama (hidden 256), in a fresh process:
capture time against sdpa, peak RSS of that process (goal ≤ 2 GB, where dense float16 probabilities
would take 17 GB), time to serve one row and the 64 × 64 thumbnail grid of every layer and head.

Run: ``python benchmarks/capture_overhead.py`` (``--quick`` for a smoke run with fewer tokens).
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

LENGTHS = (128, 512, 1024)
LONG = 16384


def _status_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since start or the last :func:`_reset_peak`) of this process."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> float:
    """Starts a new peak-RSS window (Linux ``clear_refs`` 5); returns the RSS now."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mib("VmRSS")


def _gpt2(threads: int) -> Any:
    import torch
    import transformers

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257)
    return transformers.GPT2Model(cfg).eval()


def _variants(model: Any, ids: Any) -> dict[str, Any]:
    import torch

    from mmviz.capture import capture

    def sdpa() -> None:
        with torch.no_grad():
            model(input_ids=ids)

    def eager() -> None:
        model.set_attn_implementation("eager")
        try:
            with torch.no_grad():
                model(input_ids=ids, output_attentions=True)
        finally:
            model.set_attn_implementation("sdpa")

    def recorded(layers: list[int] | None) -> Any:
        def run() -> None:
            with torch.no_grad(), capture(model, layers=layers, store="dense") as cap:
                model(input_ids=ids)
            cap.attention  # noqa: B018 - building the trace is part of the cost

        return run

    return {"sdpa": sdpa, "eager+output_attentions": eager, "capture all": recorded(None), "capture [5]": recorded([5])}


def time_gpt2(threads: int, repeats: int, lengths: tuple[int, ...]) -> list[dict[str, Any]]:
    import torch

    model = _gpt2(threads)
    rows = []
    for n in lengths:
        ids = torch.randint(0, 50257, (1, n), generator=torch.Generator().manual_seed(n))
        variants = _variants(model, ids)
        for fn in variants.values():  # warm-up
            fn()
        wall: dict[str, list[float]] = {k: [] for k in variants}
        cpu: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(repeats):
            for name, fn in variants.items():
                t, c = time.perf_counter(), time.process_time()
                fn()
                wall[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
        rows.append(
            {
                "tokens": n,
                "wall": {k: statistics.median(v) for k, v in wall.items()},
                "cpu": {k: statistics.median(v) for k, v in cpu.items()},
            }
        )
    return rows


def memory_gpt2(n: int, layers: list[int] | None, threads: int, repeats: int = 3) -> dict[str, Any]:
    """Runs in a fresh process: peak RSS over an sdpa forward, then over capture + trace, ``repeats`` times.

    The windows alternate and each figure is the median over the repeats: a single window's peak moves by
    tens of MiB with the allocator's state.
    """
    import torch

    from mmviz.capture import capture

    model = _gpt2(threads)
    ids = torch.randint(0, 50257, (1, n), generator=torch.Generator().manual_seed(n))
    sdpa, captured, kept = [], [], []
    stored = 0.0
    with torch.no_grad():
        with capture(model, layers=layers, store="dense") as cap:  # imports everything the capture uses
            model(input_ids=ids[:, :8])
        cap.attention  # noqa: B018
        del cap
        model(input_ids=ids)
        for _ in range(repeats):
            start = _reset_peak()
            model(input_ids=ids)
            sdpa.append(_status_mib("VmHWM") - start)
            start = _reset_peak()
            with capture(model, layers=layers, store="dense") as cap:
                model(input_ids=ids)
            trace = cap.attention
            captured.append(_status_mib("VmHWM") - start)
            kept.append(_status_mib("VmRSS") - start)
            stored = trace.module().dense.size * 2 / 2**20  # float16 MiB
            del cap, trace
    return {
        "sdpa_mib": statistics.median(sdpa),
        "capture_mib": statistics.median(captured),
        "kept_mib": statistics.median(kept),
        "stored_mib": stored,
    }


def long_qk(n: int, threads: int) -> dict[str, Any]:
    """Runs in a fresh process: 4-layer × 8-head Llama, sdpa forward vs store='qk' capture, then serving."""
    import numpy as np
    import torch
    import transformers

    from mmviz.capture import capture

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8, hidden_size=256, intermediate_size=688,
        vocab_size=1024, max_position_embeddings=n,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 1024, (1, n), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # warm-up at a small size
        model(input_ids=ids[:, :512], logits_to_keep=1)
        with capture(model, store="qk") as cap:
            model(input_ids=ids[:, :512], logits_to_keep=1)
        cap.attention.thumbnails(size=8)
        del cap
    startup_mib = _status_mib("VmHWM")
    with torch.no_grad():
        t, c = time.perf_counter(), time.process_time()
        model(input_ids=ids, logits_to_keep=1)
        sdpa_s, sdpa_cpu = time.perf_counter() - t, time.process_time() - c
        sdpa_peak = _status_mib("VmHWM")
        t, c = time.perf_counter(), time.process_time()
        with capture(model, store="qk") as cap:
            model(input_ids=ids, logits_to_keep=1)
        trace = cap.attention
        capture_s, capture_cpu = time.perf_counter() - t, time.process_time() - c
    qk = trace.module().qk
    row_times = []
    for q in (n - 1, n // 2, n - 2):
        t = time.perf_counter()
        trace.rows([q], layer=2, head=5)
        row_times.append(time.perf_counter() - t)
    t, c = time.perf_counter(), time.process_time()
    thumbs = trace.thumbnails(size=64)
    thumb_s, thumb_cpu = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    qk.thumbnails(0, 64, layers=[0], heads=[0])
    thumb_one_s, thumb_one_cpu = time.perf_counter() - t, time.process_time() - c
    assert thumbs.shape == (4, 8, 64, 64) and np.allclose(thumbs.sum(-1) * (n / 64), 1, atol=1e-3)
    return {
        "tokens": n,
        "sdpa_s": sdpa_s,
        "capture_s": capture_s,
        "sdpa_cpu": sdpa_cpu,
        "capture_cpu": capture_cpu,
        "thumb_all_cpu": thumb_cpu,
        "thumb_one_cpu": thumb_one_cpu,
        "row_ms": statistics.median(row_times) * 1e3,
        "thumb_all_s": thumb_s,
        "thumb_one_s": thumb_one_s,
        "startup_peak_mib": startup_mib,
        "sdpa_peak_mib": sdpa_peak,
        "peak_mib": _status_mib("VmHWM"),
        "stored_mib": qk.nbytes / 2**20,
        "dense_f16_gib": 4 * 8 * n * n * 2 / 2**30,
    }


def _child(kind: str, *args: Any) -> dict[str, Any]:
    """Runs one measurement in a fresh interpreter, so that its peak RSS is its own."""
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    code = (
        f"import json, sys; sys.path.insert(0, {root!r}); sys.path.insert(0, {here!r}); "
        f"import capture_overhead as b; print('RESULT', json.dumps(b.{kind}(*{args!r})))"
    )
    # large blocks straight from mmap and back at free: the peak RSS then follows live memory, not the state
    # of glibc's heap (which otherwise moves single peaks by tens of MiB)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, env=env)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[7:])
            return result
    raise RuntimeError(f"{kind}{args} failed:\n{done.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (default 1: steadier)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smoke run: 128 and 256 tokens, 2048 for the qk run")
    opts = parser.parse_args()
    lengths = (128, 256) if opts.quick else LENGTHS
    long_n = 2048 if opts.quick else LONG
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(opts.threads)  # before numpy and torch start their pools; children inherit it

    import torch
    import transformers

    print(f"# mmviz capture overhead — {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"# torch {torch.__version__}, transformers {transformers.__version__}, torch threads {opts.threads}")
    print(f"# load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    print("\n## GPT-2 shape (12 layers × 12 heads × d768), forward time, median of", opts.repeats, "after warm-up")
    timing = time_gpt2(opts.threads, opts.repeats, lengths)
    print()
    for clock in ("cpu", "wall"):
        print(f"\n{clock} time (median) — ratios from the same run")
        print()
        print(
            "| tokens | sdpa | eager+output_attentions | capture all | capture [5] "
            "| all / eager (≤ 1.10) | [5] / sdpa (≤ 1.15) |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for row in timing:
            r = row[clock]
            all_ratio = r["capture all"] / r["eager+output_attentions"]
            one_ratio = r["capture [5]"] / r["sdpa"]
            print(
                f"| {row['tokens']} | {r['sdpa'] * 1e3:.0f} ms | {r['eager+output_attentions'] * 1e3:.0f} ms "
                f"| {r['capture all'] * 1e3:.0f} ms | {r['capture [5]'] * 1e3:.0f} ms "
                f"| {all_ratio:.2f} | {one_ratio:.2f} |"
            )

    print("\n## Peak extra memory of a capture (fresh process each) against the float16 size stored")
    print("# peak RSS over the RSS before the call (Linux VmHWM after clear_refs), sdpa forward vs capture + trace")
    print()
    print(
        "| tokens | layers | stored (float16) | sdpa forward peak | capture peak "
        "| (capture − sdpa) / stored (≤ 1.2) | kept after |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")
    for n in lengths:
        for layers, label in ((None, "all"), ([5], "[5]")):
            m = _child("memory_gpt2", n, layers, opts.threads)
            extra = m["capture_mib"] - m["sdpa_mib"]
            print(
                f"| {n} | {label} | {m['stored_mib']:.1f} MiB | {m['sdpa_mib']:.1f} MiB | {m['capture_mib']:.1f} MiB "
                f"| {extra / m['stored_mib']:.2f} | {m['kept_mib']:.1f} MiB |"
            )

    print(f"\n## store='qk' at {long_n} tokens: Llama 4 layers × 8 heads, hidden 256 (fresh process)")
    q = _child("long_qk", long_n, opts.threads)
    print()
    print("| measure | value |")
    print("|---|---:|")
    print(f"| sdpa forward (no capture), wall / CPU | {q['sdpa_s']:.1f} s / {q['sdpa_cpu']:.1f} s |")
    print(
        f"| capture, store='qk' (with trace), wall / CPU | {q['capture_s']:.1f} s / {q['capture_cpu']:.1f} s "
        f"({q['capture_s'] / q['sdpa_s']:.2f} / {q['capture_cpu'] / q['sdpa_cpu']:.2f} × sdpa) |"
    )
    print(f"| stored queries + keys | {q['stored_mib']:.0f} MiB (dense float16: {q['dense_f16_gib']:.1f} GiB) |")
    print(f"| peak RSS, whole process (goal ≤ 2048 MiB) | {q['peak_mib']:.0f} MiB |")
    print(f"| peak after imports + warm-up | {q['startup_peak_mib']:.0f} MiB |")
    print(f"| peak after the sdpa forward | {q['sdpa_peak_mib']:.0f} MiB |")
    print(f"| serve one row (all {long_n} keys) | {q['row_ms']:.1f} ms |")
    print(f"| serve a 64×64 thumbnail, one head, wall / CPU | {q['thumb_one_s']:.2f} s / {q['thumb_one_cpu']:.2f} s |")
    print(
        f"| serve the 64×64 thumbnail grid, 4 layers × 8 heads, wall / CPU "
        f"| {q['thumb_all_s']:.1f} s / {q['thumb_all_cpu']:.1f} s |"
    )
    print(f"\n# load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
