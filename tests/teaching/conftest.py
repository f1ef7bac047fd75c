"""Shared fixtures of the teaching-kit tests (one CPU thread, models loaded once)."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def clip() -> tuple[Any, Any]:
    pytest.importorskip("torch")
    import mmviz.teaching as teaching

    return teaching.load_clip()


@pytest.fixture(scope="session")
def vlm() -> tuple[Any, Any]:
    pytest.importorskip("torch")
    import mmviz.teaching as teaching

    return teaching.load_vlm()


@pytest.fixture(scope="session")
def pipe() -> Any:
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    import mmviz.teaching as teaching

    return teaching.load_diffusion()
