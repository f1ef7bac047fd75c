"""Capture attention of tiny models built offline, then reduce and save it.

Run: ``python examples/capture_tiny_models.py [--out DIR]``. Nothing is downloaded: the GPT-2 and LLaVA
below are built from configs with random weights (their patterns are not meaningful, the mechanics are).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlavaConfig, LlavaForConditionalGeneration

import mmviz


def gpt2_generation(out: Path) -> None:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=4, n_head=4, n_embd=64, vocab_size=256, n_positions=128, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    prompt = torch.randint(1, 256, (1, 12))
    with torch.no_grad(), mmviz.capture(model) as cap:
        model.generate(input_ids=prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    trace = cap.attention
    print(trace)
    generated = trace.tokens().generated
    print(f"  {generated.sum()} generated positions; rollout shape {trace.rollout().shape}")
    trace.save(out / "gpt2-generate.mmviz")


def llava_image_tokens(out: Path) -> None:
    torch.manual_seed(0)
    vision = {
        "model_type": "clip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 32,
        "patch_size": 8,
    }
    text = {
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 128,
    }
    model = LlavaForConditionalGeneration(
        LlavaConfig(vision_config=vision, text_config=text, image_token_index=100)
    ).eval()
    ids = torch.tensor([[1, 5, 6, *[100] * 16, 7, 8, 9]])  # 16 image tokens: a 4 × 4 patch grid
    with torch.no_grad(), mmviz.capture(model) as cap:
        model(input_ids=ids, pixel_values=torch.randn(1, 3, 32, 32))
    trace = cap.attention
    print(trace)
    table = trace.tokens()
    last = len(table) - 1
    to_patches = trace.head_mean()[-1, last][table.image_positions(0)]
    print(f"  last token's attention over the 4×4 patch grid (last layer, head mean):\n{to_patches.round(3)}")
    trace.save(out / "llava.mmviz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    gpt2_generation(args.out)
    llava_image_tokens(args.out)


if __name__ == "__main__":
    main()
