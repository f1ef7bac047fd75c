"""What does laying out a tower with overlapping convolutions cost? Florence-2 with DaViT-base widths, CPU.

Such a tower (Florence-2's DaViT) makes every pixel feed several positions, so the derived layout
places each image token by its receptive field: one backward pass per token
(``mmviz.capture.layouts.overlap``, ``CHUNK`` tokens per batched pass). This script builds a random
Florence-2 with DaViT-base stage widths and depths ([1, 1, 9, 1], 128…1024 channels) and a one-layer
language model at a few image sizes, and times, interleaved, in the same run:

* the model's forward (the baseline);
* the pixel measurement of the language model's encoder (``trace_pixels``) with batched passes;
* the same with one pass per token (``CHUNK = 1``).

Run: ``python benchmarks/overlap_layout_cost.py [--sizes 128,192] [--repeats 2]``. One CPU thread.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmviz.capture.layouts import overlap
from mmviz.capture.layouts.provenance import trace_pixels


def florence(size: int) -> tuple[Any, dict[str, Any]]:
    """A random Florence-2 with DaViT-base stage widths, and inputs with one ``size``-pixel image."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.Florence2Config(
        vision_config={
            "depths": [1, 1, 9, 1], "embed_dim": [128, 256, 512, 1024], "num_heads": [4, 8, 16, 32],
            "num_groups": [4, 8, 16, 32], "window_size": 12, "projection_dim": 256,
            "max_position_embeddings": 50, "max_temporal_embeddings": 4,
        },
        text_config={
            "vocab_size": 64, "d_model": 256, "encoder_layers": 1, "decoder_layers": 1,
            "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 512,
            "decoder_ffn_dim": 512, "max_position_embeddings": 1200, "pad_token_id": 0, "bos_token_id": 2,
            "eos_token_id": 3, "decoder_start_token_id": 2,
        },
        image_token_id=5,
    )  # fmt: skip
    model = transformers.Florence2ForConditionalGeneration(cfg).eval()
    ids = torch.tensor([[5] * ((size // 32) ** 2 + 1) + [2, 7, 8, 3]])
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}
    return model, {**inputs, "decoder_input_ids": torch.tensor([[2, 7]])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128,192", help="comma-separated image sizes (multiples of 32)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for size in (int(s) for s in args.sizes.split(",")):
        model, inputs = florence(size)
        length = inputs["input_ids"].shape[1]
        shapes = {"language_model.encoder": (1, length, length)}
        times: dict[str, list[float]] = {"forward": [], "layout": [], "layout, one pass a token": []}
        for _ in range(args.repeats):
            for label in times:
                overlap.CHUNK = 1 if label.endswith("token") else 16
                start = time.perf_counter()
                if label == "forward":
                    with torch.no_grad():
                        model(**inputs)
                else:
                    traced = trace_pixels(model, inputs, shapes)
                    assert traced is not None
                    placed = int((traced[0][("language_model.encoder", "query")].unit >= 0).sum())
                    print(f"  ({label}: {placed} of {(size // 32) ** 2} image tokens placed)")
                times[label].append(time.perf_counter() - start)
        base = min(times["forward"])
        tokens = (size // 32) ** 2
        print(f"{size} px, {tokens} image tokens:")
        for label, values in times.items():
            print(f"  {label:26s} {min(values):7.2f} s  {min(values) / base:6.1f}x the forward")


if __name__ == "__main__":
    main()
