"""Tiny offline models for the patching tests: the attribution tests' builders (GPT-2, BERT, LLaVA, Qwen2-VL, ViT)."""

from __future__ import annotations

from tests.attribution.conftest import (  # noqa: F401  (fixtures re-exported for this package)
    _one_thread,
    _seed,
    bert_classifier,
    gpt2,
    image_processor,
    llava,
    qwen2_vl,
    tok,
    vit,
)
