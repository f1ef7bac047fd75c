"""The teaching maps judged through the public API (``mmviz.teaching.faithfulness``), on one scene each.

The full figures (``python -m mmviz.teaching.faithfulness``) are in ``docs/faithfulness.md``; here one
held-out scene shows the finding they rest on: the blank-scene integrated gradients points at the object but
fails the model-randomisation check, relevance passes it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmviz.teaching.faithfulness import run_clip, run_vlm, summarise


def test_summarise_means_over_scenes_without_nan() -> None:
    out = summarise({"m": [{"pointing": 1.0, "deletion": float("nan")}, {"pointing": 0.0, "deletion": 0.5}]})
    assert out["m"] == {"deletion": 0.5, "n_deletion": 1, "pointing": 0.5, "n_pointing": 2}


def test_clip_maps_on_one_scene(clip: tuple[Any, Any]) -> None:
    res = run_clip(*clip, n=1, sanity=1)
    assert set(res) == {
        "relevance",
        "integrated gradients, pixels, blank scene",
        "integrated gradients, zero baseline",
        "saliency, pixels",
        "CLS attention, last layer",
    }
    blank_ig, relevance = res["integrated gradients, pixels, blank scene"], res["relevance"]
    assert blank_ig["sanity_passed"] == 0.0 and blank_ig["model_randomization"] > 0.9
    assert relevance["sanity_passed"] == 1.0 and relevance["pointing"] == 1.0
    assert res["integrated gradients, zero baseline"]["pointing"] == 0.0
    assert all(0 < r["area"] < r["objects"] <= 1 for r in res.values())


def test_vlm_maps_on_one_scene(vlm: tuple[Any, Any]) -> None:
    res = run_vlm(*vlm, n=1, sanity=1)
    blank_ig = res["integrated gradients, pixels, blank scene"]
    assert blank_ig["sanity_passed"] == 0.0 and res["relevance"]["sanity_passed"] == 1.0
    assert np.isfinite(blank_ig["mass"]) and blank_ig["pointing_objects"] == 1.0
