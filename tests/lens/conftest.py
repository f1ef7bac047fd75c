"""Tiny offline models for the lens tests: the attribution tests' models, plus a masked LM and Gemma 2."""

from __future__ import annotations

from typing import Any

import pytest

from tests.attribution.conftest import (  # noqa: F401  (fixtures shared with the attribution tests)
    _one_thread,
    _seed,
    bert_classifier,
    clip,
    gpt2,
    image_processor,
    llama,
    llava,
    paligemma,
    qwen2_vl,
    siglip,
    tok,
    word_tokenizer,
)
from tests.fixtures.tiny_configs import text_cfg

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="session")
def bert_mlm() -> Any:
    torch.manual_seed(0)
    return transformers.BertForMaskedLM(transformers.BertConfig(**text_cfg(max_position_embeddings=64))).eval()


@pytest.fixture(scope="session")
def gemma2() -> Any:
    """Gemma 2: final norm with an offset weight, and final logit soft-capping (small cap, so it bites)."""
    torch.manual_seed(0)
    cfg = transformers.Gemma2Config(
        **text_cfg(num_key_value_heads=2, head_dim=8, pad_token_id=0), final_logit_softcapping=2.0
    )
    model = transformers.Gemma2ForCausalLM(cfg).eval()
    with torch.no_grad():
        model.model.norm.weight.normal_()  # zeros at init would hide a missing offset
    return model
