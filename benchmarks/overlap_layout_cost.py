"""What does laying out a tower with overlapping convolutions cost? Florence-2 with DaViT-base widths, CPU.

Such a tower (Florence-2's DaViT) makes every pixel feed several positions, so the derived layout
places each image token by the centre of its receptive field (``mmviz.capture.layouts.overlap``): by
default from perturbed bands of pixels, one forward per row and per column band (``BANDS_PER_PASS``
bands a batched forward); its fallback, one backward pass per token (``CHUNK`` tokens a batched pass).
This script builds a random Florence-2 with DaViT-base stage widths and depths ([1, 1, 9, 1], 128…1024
channels) and a one-layer language model at a few image sizes, and times, interleaved, in the same run:

* the model's forward (the baseline);
* the pixel measurement of the language model's encoder (``trace_pixels``) by bands;
* the same by gradients (the band method switched off, as where it falls back).

Both place every image token; the script checks that they place them in the same cells.

Run: ``python benchmarks/overlap_layout_cost.py [--sizes 128,192,384] [--repeats 2] [--skip-gradients 384]``.
One CPU thread; the time budget (``$MMVIZ_LAYOUT_SECONDS``) is lifted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmviz.capture.layouts import overlap, provenance
from mmviz.capture.layouts.provenance import trace_pixels

_PLACE = provenance.place_by_receptive_field
_placing: list[float] = []


def _timed_place(*args: Any, **kwargs: Any) -> Any:
    """``place_by_receptive_field``, its seconds kept in ``_placing``."""
    start = time.perf_counter()
    try:
        return _PLACE(*args, **kwargs)
    finally:
        _placing.append(time.perf_counter() - start)


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


def _no_bands(*args: Any) -> Any:
    raise ValueError("band method switched off: the gradient path")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128,192,384", help="comma-separated image sizes (multiples of 32)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-gradients", default="", help="sizes at which not to time the gradient path")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    os.environ["MMVIZ_LAYOUT_SECONDS"] = "1e9"
    skip = {int(s) for s in args.skip_gradients.split(",") if s}
    bands = overlap._band_centres
    provenance.place_by_receptive_field = _timed_place
    for size in (int(s) for s in args.sizes.split(",")):
        model, inputs = florence(size)
        length = inputs["input_ids"].shape[1]
        shapes = {"language_model.encoder": (1, length, length)}
        labels = ["forward", "layout by bands"] + ([] if size in skip else ["layout by gradients"])
        times: dict[str, list[float]] = {label: [] for label in labels}
        placing: dict[str, list[float]] = {label: [] for label in labels}
        boxes: dict[str, Any] = {}
        for _ in range(args.repeats):
            for label in times:
                overlap._band_centres = _no_bands if label.endswith("gradients") else bands  # type: ignore[assignment]
                start = time.perf_counter()
                _placing.clear()
                if label == "forward":
                    with torch.no_grad():
                        model(**inputs)
                else:
                    traced = trace_pixels(model, inputs, shapes)
                    assert traced is not None
                    boxes[label] = traced[0][("language_model.encoder", "query")]
                times[label].append(time.perf_counter() - start)
                placing[label].append(sum(_placing))
        overlap._band_centres = bands
        base = min(times["forward"])
        tokens = (size // 32) ** 2
        print(f"{size} px, {tokens} image tokens (forward {base:.2f} s):")
        for label, values in times.items():
            if label not in boxes:
                print(f"  {label:22s} {min(values):8.2f} s  {min(values) / base:7.1f}x the forward")
                continue
            place = min(placing[label])
            print(
                f"  {label:22s} {min(values):8.2f} s  {min(values) / base:7.1f}x the forward; of which placing "
                f"{place:.2f} s, {place / base:.1f}x  ({int((boxes[label].unit >= 0).sum())} placed)"
            )
        if len(boxes) == 2:
            same = (boxes["layout by bands"].box == boxes["layout by gradients"].box).all()
            print(f"  same cells by both: {bool(same)}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
