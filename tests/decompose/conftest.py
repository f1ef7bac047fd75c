"""The decomposition tests reuse the attribution tests' tiny CLIP and SigLIP (hidden 32, 2 layers, seeded)."""

from __future__ import annotations

from tests.attribution.conftest import _one_thread, _seed, clip, image_processor, siglip  # noqa: F401
