"""The decomposition tests reuse the attribution tests' tiny CLIP and SigLIP (hidden 32, 2 layers, seeded)."""

from __future__ import annotations

from typing import Any

import pytest

import mmviz
from tests.attribution.conftest import _one_thread, _seed, clip, image_processor, random_image, siglip  # noqa: F401

TEXTS = ["a red square", "blue circle", "the green triangle"]


def images(processor: Any, n: int = 3) -> Any:
    """The processor's output for ``n`` random 16 px images (seeds 0 … n − 1)."""
    return processor(images=[random_image(16, seed) for seed in range(n)], return_tensors="pt")


@pytest.fixture(scope="module")
def clip_dec(clip: tuple[Any, Any]) -> Any:  # noqa: F811  (the imported fixture)
    model, processor = clip
    return mmviz.decompose(model, images(processor), processor, texts=TEXTS)


@pytest.fixture(scope="module")
def siglip_dec(siglip: tuple[Any, Any]) -> Any:  # noqa: F811  (the imported fixture)
    model, processor = siglip
    return mmviz.decompose(model, images(processor), processor, texts=TEXTS)
