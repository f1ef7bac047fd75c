"""The teaching kit's published figures, re-measured through the public API on a few held-out scenes.

``mmviz.teaching.faithfulness.PUBLISHED`` holds the figures of ``python -m mmviz.teaching.faithfulness`` (the
tables of ``docs/teaching.md`` and ``docs/faithfulness.md``); these tests run the same public calls on small
samples and assert the floors under them (``floor``) and the sanity-check verdicts (``sane``) where every
published scene agreed.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("torch")

from mmviz.teaching.faithfulness import PUBLISHED, run_clip, run_diffusion, run_text, run_vlm, summarise


def _check(model: str, res: dict[str, dict[str, float]]) -> None:
    for name, published in PUBLISHED[model].items():
        got = res[name]
        if "floor" in published:
            assert got["pointing"] >= published["floor"], (name, got)
            assert got["pointing"] > got["area"], (name, got)
        if "sane" in published and "sanity_passed" in got:
            assert got["sanity_passed"] == published["sane"], (name, got)


def test_summarise_means_over_maps_without_nan() -> None:
    out = summarise({"m": [{"pointing": 1.0, "deletion": float("nan")}, {"pointing": 0.0, "deletion": 0.5}]})
    assert out["m"]["pointing"] == 0.5 and out["m"]["n_pointing"] == 2 and out["m"]["n_deletion"] == 1
    assert out["m"]["ci_pointing"] == pytest.approx(1.96 * 0.5**0.5 / 2**0.5, abs=1e-4)


def test_clip_figures(clip: tuple[Any, Any]) -> None:
    res = run_clip(*clip, n=4, sanity=1, curves=0, steps=8)
    _check("clip", res)
    assert all(0 < r["area"] < r["objects"] <= 1 for r in res.values())


def test_vlm_figures(vlm: tuple[Any, Any]) -> None:
    res = run_vlm(*vlm, n=3, sanity=1, curves=0, steps=8)
    _check("vlm", res)
    assert res["accuracy"]["accuracy"] >= 0.9


def test_text_figures(vlm: tuple[Any, Any]) -> None:
    _check("text", run_text(*vlm, n=2, sanity=1, curves=0, steps=8))


def test_diffusion_figures(pipe: Any) -> None:
    res = run_diffusion(pipe, n=4, steps=20) | run_diffusion(pipe, n=3, steps=20, n_objects=1)
    _check("diffusion", res)
