"""``mmviz.decompose`` against one forward pass of the same vision tower (goal: ≤ 3× the forward).

Model: a CLIP-ViT-B/16-shaped ``CLIPVisionModelWithProjection`` (224 px, 16 px patches → 196 patches + CLS,
12 layers × 12 heads × d768, projection 512), random weights built from its config. Inputs: random pixels.

Rows (each timed against the plain forward ``model(pixel_values=...)`` under ``torch.no_grad()`` on the same
batch, the configurations interleaved ``--repeats`` times in one process, the fastest run of each kept —
other jobs on a shared machine only ever slow a run down):

* ``decompose``: ``mmviz.decompose(model, pixels)`` with the default budget, which keeps every layer's full
  ``[heads, positions, dim]`` terms (58 MiB);
* ``decompose, layers=[]``: only the reductions (per head, per patch, maps on the embedding direction);
* ``batch 8``: eight images; the first detailed, every image's per-head terms (what TextSpan spans).

Run: ``python benchmarks/decompose.py`` (``--repeats 5``, ``--threads 1``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any


def _model() -> Any:
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.CLIPVisionConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=16,
        projection_dim=512,
    )
    return transformers.CLIPVisionModelWithProjection(cfg).eval()


def _best(fn: Callable[[], Any], times: list[float]) -> None:
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    import mmviz

    torch.set_num_threads(args.threads)
    model = _model()
    rows: dict[str, tuple[Any, dict[str, Any]]] = {}
    for batch in (1, 8):
        pixels = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
        rows[f"batch {batch}: decompose"] = (pixels, {})
        if batch == 1:
            rows[f"batch {batch}: decompose, layers=[]"] = (pixels, {"layers": []})
    forward: dict[int, list[float]] = {1: [], 8: []}
    timed: dict[str, list[float]] = {name: [] for name in rows}
    dec = None
    with torch.no_grad():
        model(pixel_values=rows["batch 1: decompose"][0])  # warm-up
    for _ in range(args.repeats):
        for name, (pixels, options) in rows.items():
            with torch.no_grad():
                _best(lambda p=pixels: model(pixel_values=p), forward[p_len(pixels)])
            _best(lambda p=pixels, o=options: mmviz.decompose(model, p, **o), timed[name])
    dec = mmviz.decompose(model, rows["batch 1: decompose"][0])
    print(f"CLIP ViT-B/16 vision tower, 224 px, {torch.get_num_threads()} thread(s), best of {args.repeats}")
    print(f"relative error of the sum: {dec.info['relative_error']:.1e}; kept layers: {len(dec.detail_layers)}")
    print(f"{'configuration':34s} {'forward s':>10s} {'decompose s':>12s} {'ratio':>7s}")
    for name, times in timed.items():
        base = min(forward[8 if name.startswith("batch 8") else 1])
        print(f"{name:34s} {base:10.3f} {min(times):12.3f} {min(times) / base:7.2f}")


def p_len(pixels: Any) -> int:
    """Batch size of a pixel tensor (the key of its forward timings)."""
    return int(pixels.shape[0])


if __name__ == "__main__":
    main()
