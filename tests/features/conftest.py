"""The feature tests reuse the attribution tests' tiny GPT-2, Llama and LLaVA (hidden 32, 2 layers, seeded)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.attribution.conftest import _one_thread, _seed, gpt2, image_processor, llama, llava, random_image, tok  # noqa: F401


def random_arrays(d_in: int = 32, d_sae: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """SAELens-named float32 weights with small random biases."""
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(size=(d_in, d_sae)).astype(np.float32) / np.sqrt(d_in),
        "W_dec": rng.normal(size=(d_sae, d_in)).astype(np.float32) / np.sqrt(d_sae),
        "b_enc": (rng.normal(size=d_sae) * 0.1).astype(np.float32),
        "b_dec": (rng.normal(size=d_in) * 0.1).astype(np.float32),
    }


def relu(x: Any) -> Any:
    return np.maximum(x, 0.0)
