"""The attribution tests' tiny models (GPT-2, ViT, CLIP; one CPU thread, seeded) for the evaluation tests."""

from __future__ import annotations

from tests.attribution.conftest import _one_thread, _seed, clip, gpt2, image_processor, llava, tok, vit

__all__ = ["_one_thread", "_seed", "clip", "gpt2", "image_processor", "llava", "tok", "vit"]
