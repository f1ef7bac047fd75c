"""Faithfulness of the shipped teaching models (pointing game vs the object-area baseline).

The full figures (``python -m mmviz.teaching.evaluate``, 200 scenes for CLIP and the
VLM, 64 captions for diffusion) are in `mmviz.teaching.evaluate.MEASURED`; these
tests re-run the same evaluators on fewer held-out scenes so that they stay fast.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("torch")

from mmviz.teaching.evaluate import (
    MEASURED,
    clip_pointing,
    diffusion_pointing,
    vlm_pointing,
)


def test_clip_pointing(clip: tuple[Any, Any]) -> None:
    measured = MEASURED["clip"]
    res = clip_pointing(clip[0], n=60, batch=30, ig_steps=measured["test_ig_steps"])
    assert res[measured["map"]] >= measured["test_floor"], res
    assert res[measured["map"]] >= 5 * res["relevance_baseline"], res
    assert res["ig_hit"] >= measured["ig_floor"], res
    assert res["colour_swap"] >= 0.95, res


def test_vlm_pointing(vlm: tuple[Any, Any]) -> None:
    measured = MEASURED["vlm"]
    res = vlm_pointing(vlm[0], n=25, batch=25, ig_steps=measured["test_ig_steps"])
    assert res[measured["map"]] >= measured["test_floor"], res
    assert res[measured["map"]] >= 5 * res["baseline"], res
    assert res["relevance_hit"] >= measured["relevance_floor"], res
    assert res["accuracy"] >= measured["accuracy_floor"], res


def test_diffusion_pointing(pipe: Any) -> None:
    res = diffusion_pointing(pipe, n=12, steps=20, batch=12)
    floor = MEASURED["diffusion"]["test_floor"]
    assert res["hit"] >= floor, {k: v for k, v in res.items() if k != "images"}
    assert res["hit"] >= 3 * res["baseline"], {k: v for k, v in res.items() if k != "images"}
