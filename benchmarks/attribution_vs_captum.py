"""mmviz integrated gradients against Captum: time, peak memory and scores, same model, target and steps.

Cases (random weights, built from configs; 50 Gauss–Legendre steps, as Captum's default):

* ``gpt2-64`` / ``gpt2-256``: a GPT-2-small-shaped LM (12 layers × 12 heads × d768, 50 257 words) on 64
  and 256 tokens; target: the logit of one word at the last position; baseline: pad-token embeddings.
  mmviz: ``method="integrated_gradients", baseline="pad"``. Captum: ``LayerIntegratedGradients`` on the
  token-embedding layer with all-pad input ids as baseline, ``internal_batch_size=None`` (its default:
  all 50 steps in one batch) and ``return_convergence_delta=True`` (mmviz always reports delta).
  Captum's forward also gets ``logits_to_keep=1`` (without it, the 50 × n × 50 257 logits alone take
  gigabytes), so both compute the same function.
* ``clip``: a CLIP-ViT-B/32-shaped model (224 px, 32 px patches, vision 12 × 768, text 12 × 512, 16-token
  caption); target: image–caption similarity; baseline: zero pixels. mmviz:
  ``sources=["image"]`` (pixels only); Captum: ``IntegratedGradients`` on ``pixel_values``.

Each run is a fresh process: build the model, one warm-up forward, reset the peak-RSS mark
(``/proc/self/clear_refs``), run the attribution, read the peak (``VmHWM``). Memory is that peak minus the
RSS before the run: what the attribution itself adds. Times are wall-clock seconds in the same process; the
CPU-time ratio (user + system of that process) is printed too, since other jobs share this machine's cores.
A watchdog kills a run whose RSS passes ``--limit-gib`` (default 14 GiB: the machine has 24 GB shared
with others) and reports it as not measurable here. Scores are compared per position (text) or per pixel
(image) against Captum's: max |difference| / max |Captum score|.

One torch thread per run by default: where other jobs share the cores, two OpenMP threads spin-wait
on each other (measured on the 2-core machine: mmviz GPT-2 64 tokens 9.5 s with 1 thread, 32.8 s
with 2; Captum 22 s with 2). mmviz and Captum run alternately ``--repeats`` times (default 2) and
each one's fastest run is kept: other jobs on a shared machine only ever slow a run down.

Run: ``python benchmarks/attribution_vs_captum.py`` (``--cases gpt2-64 clip``, ``--threads 1``,
``--repeats 3``).
Needs ``captum`` (benchmark only: ``pip install --no-deps captum``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

CASES = ("gpt2-64", "gpt2-256", "clip")
STEPS = 50
TARGET = 1234


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _hwm_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# -- the models ----------------------------------------------------------------------------------------
def _gpt2(length: int) -> tuple[Any, dict[str, Any]]:
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257)
    cfg.pad_token_id = 50256
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 50000, (1, length), generator=torch.Generator().manual_seed(1))
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _clip() -> tuple[Any, dict[str, Any]]:
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config={"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 8},
        vision_config={
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 224,
            "patch_size": 32,
        },
        projection_dim=512,
    )
    model = transformers.CLIPModel(cfg).eval()
    ids = torch.randint(3, 49000, (1, 16), generator=torch.Generator().manual_seed(1))
    ids[0, -1] = cfg.text_config.eos_token_id
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}


def _build(case: str) -> tuple[Any, dict[str, Any]]:
    if case.startswith("gpt2"):
        return _gpt2(int(case.split("-")[1]))
    return _clip()


# -- the two tools ------------------------------------------------------------------------------------
def _run_mmviz(case: str, model: Any, inputs: dict[str, Any], batch_size: int) -> np.ndarray:
    import mmviz

    if case.startswith("gpt2"):
        attr = mmviz.attribute(
            model,
            inputs,
            method="integrated_gradients",
            target=TARGET,
            baseline="pad",
            steps=STEPS,
            batch_size=batch_size,
            progress=False,
        )
        return attr.scores[0]
    attr = mmviz.attribute(
        model,
        inputs,
        method="integrated_gradients",
        sources=["image"],
        steps=STEPS,
        batch_size=batch_size,
        progress=False,
    )
    assert attr.pixels is not None
    return attr.pixels[0]


def _run_captum(case: str, model: Any, inputs: dict[str, Any]) -> np.ndarray:
    import torch
    from captum.attr import IntegratedGradients, LayerIntegratedGradients

    if case.startswith("gpt2"):

        def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return model(input_ids=ids, attention_mask=mask, logits_to_keep=1, use_cache=False).logits[:, -1, TARGET]

        lig = LayerIntegratedGradients(forward, model.transformer.wte)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        attr = lig.attribute(
            ids,
            baselines=torch.full_like(ids, model.config.pad_token_id),
            additional_forward_args=(mask,),
            n_steps=STEPS,
            return_convergence_delta=True,
        )
        return attr[0].sum(-1)[0].detach().numpy()

    def similarity(pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits_per_image.diagonal()

    ig = IntegratedGradients(similarity)
    attr = ig.attribute(
        inputs["pixel_values"],
        baselines=torch.zeros_like(inputs["pixel_values"]),
        additional_forward_args=(inputs["input_ids"], inputs["attention_mask"]),
        n_steps=STEPS,
        return_convergence_delta=True,
    )
    return attr[0][0].sum(0).detach().numpy()


def worker(tool: str, case: str, out: str, threads: int, batch_size: int) -> None:
    import torch

    torch.set_num_threads(threads)
    model, inputs = _build(case)
    with torch.no_grad():
        model(**inputs)
    before = _rss_mib()
    _reset_hwm()
    start, cpu = time.perf_counter(), time.process_time()
    scores = _run_mmviz(case, model, inputs, batch_size) if tool == "mmviz" else _run_captum(case, model, inputs)
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    peak = _hwm_mib()
    np.save(out, scores)
    print(json.dumps({"seconds": seconds, "cpu": cpu, "extra_mib": peak - before, "rss_before_mib": before}))


# -- the driver ---------------------------------------------------------------------------------------
def _launch(tool: str, case: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "scores.npy")
        cmd = [sys.executable, __file__, "--worker", tool, case, out, str(args.threads), str(args.batch_size)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        limit = args.limit_gib * 1024
        killed = False
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/statm") as f:
                    rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
            except OSError:
                rss = 0.0
            if rss > limit:
                proc.kill()
                killed = True
                break
            time.sleep(0.05)
        stdout, stderr = proc.communicate()
        if killed:
            return {"error": f"RSS passed {args.limit_gib} GiB: not measurable on this machine"}
        if proc.returncode != 0:
            return {"error": (stderr.strip().splitlines() or ["failed"])[-1][:200]}
        result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
        result["scores"] = np.load(out)
        return result


def _best(case: str, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Runs mmviz and Captum alternately ``--repeats`` times; keeps each one's fastest run.

    Other jobs share this machine's cores, so a run is only ever slowed down: the minimum is the
    estimate least disturbed by them. Memory is the largest of the runs.
    """
    runs: dict[str, list[dict[str, Any]]] = {"mmviz": [], "captum": []}
    for _ in range(args.repeats):
        for tool in ("mmviz", "captum"):
            result = _launch(tool, case, args)
            runs[tool].append(result)
            if "error" in result:
                break
    picked = []
    for tool in ("mmviz", "captum"):
        ok = [r for r in runs[tool] if "error" not in r]
        if not ok:
            picked.append(runs[tool][-1])
            continue
        best = dict(min(ok, key=lambda r: r["seconds"]))
        best["cpu"] = min(r["cpu"] for r in ok)
        best["extra_mib"] = max(r["extra_mib"] for r in ok)
        picked.append(best)
    return picked[0], picked[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=CASES)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (1: no oversubscription)")
    parser.add_argument("--batch-size", type=int, default=8, help="mmviz's steps per pass")
    parser.add_argument("--limit-gib", type=float, default=14.0)
    parser.add_argument("--repeats", type=int, default=2, help="alternate runs per tool; the fastest is kept")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        tool, case, out, threads, batch = args.worker
        worker(tool, case, out, int(threads), int(batch))
        return
    import torch

    print(
        f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs; IG {STEPS} steps; "
        f"mmviz batch_size={args.batch_size}; Captum internal_batch_size=None (one batch)"
    )
    header = (
        f"{'case':<10} {'mmviz s':>8} {'captum s':>9} {'time ratio':>10} {'cpu ratio':>9} {'mmviz MiB':>10} "
        f"{'captum MiB':>11} {'mem ratio':>9} {'max |diff|/max':>15}"
    )
    rows = [header, "-" * len(header)]
    for case in args.cases:
        mine, theirs = _best(case, args)
        if "error" in mine:
            rows.append(f"{case:<10} mmviz failed: {mine['error']}")
            continue
        if "error" in theirs:
            rows.append(
                f"{case:<10} {mine['seconds']:8.2f} {'—':>9} {'—':>10} {'—':>9} {mine['extra_mib']:10.0f} "
                f"{'—':>11} {'—':>9} {'—':>15}   Captum: {theirs['error']}"
            )
            continue
        diff = float(np.abs(mine["scores"] - theirs["scores"]).max() / max(np.abs(theirs["scores"]).max(), 1e-12))
        rows.append(
            f"{case:<10} {mine['seconds']:8.2f} {theirs['seconds']:9.2f} {mine['seconds'] / theirs['seconds']:10.2f} "
            f"{mine['cpu'] / theirs['cpu']:9.2f} "
            f"{mine['extra_mib']:10.0f} {theirs['extra_mib']:11.0f} {mine['extra_mib'] / theirs['extra_mib']:9.3f} "
            f"{diff:15.2e}"
        )
    print("\n".join(rows), flush=True)
    print("goals: time ratio ≤ 1.0, memory ratio ≤ 0.25, scores equal within 1e-3 of the largest score")


if __name__ == "__main__":
    main()
