"""The steering tests reuse the attribution tests' tiny Llama and LLaVA (hidden 32, 2 layers, seeded)."""

from __future__ import annotations

from tests.attribution.conftest import _one_thread, _seed, image_processor, llama, llava  # noqa: F401
