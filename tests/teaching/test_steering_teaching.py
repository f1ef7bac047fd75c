"""Steering the teaching VLM's colour answer with a mean-difference direction, and decomposing the teaching CLIP."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import mmviz


def _questions(processor: Any, scenes: list[Any]) -> Any:
    from mmviz.teaching._vlm import prompt

    texts = [prompt(f"what colour is the {s.objects[0].shape} ?") for s in scenes]
    return processor(images=[s.image for s in scenes], text=texts, return_tensors="pt", padding=True)


def test_red_minus_blue_turns_blue_answers_red(vlm: tuple[Any, Any]) -> None:
    torch = pytest.importorskip("torch")
    from mmviz import teaching

    model, processor = vlm
    scenes = teaching.make_scenes(400, seed=5, n_objects=1)
    red = [s for s in scenes if s.objects[0].colour == "red"][:16]
    blue = [s for s in scenes if s.objects[0].colour == "blue"]
    site = "language_model.layers.1"
    v = mmviz.direction(model, _questions(processor, red), _questions(processor, blue[:16]), site=site, positions=-1)
    held_out = _questions(processor, blue[16:20])

    def answers() -> list[str]:
        with torch.no_grad():
            out = model.generate(**held_out, max_new_tokens=1, do_sample=False)
        return processor.tokenizer.batch_decode(out[:, held_out["input_ids"].shape[1] :])

    assert answers() == ["blue"] * 4
    with mmviz.steer(model, v, site=site, positions=-1):
        assert answers() == ["red"] * 4
    assert answers() == ["blue"] * 4  # restored


def test_teaching_clip_has_a_colour_head(clip: tuple[Any, Any]) -> None:
    pytest.importorskip("torch")
    from mmviz import teaching

    model, processor = clip
    scenes = teaching.make_scenes(64, seed=0)
    texts = ["red", "blue", "green", "yellow", "circle", "square", "triangle", "above", "below"]
    dec = mmviz.decompose(
        model, processor(images=[s.image for s in scenes], return_tensors="pt"), processor, texts=texts
    )
    assert dec.info["relative_error"] < 1e-4
    picks = dec.describe(k=2, layers=[-1])
    colours = {"red", "blue", "green", "yellow"}
    assert any({t for t, _ in p} <= colours for p in picks.values()), picks  # one last-layer head reads as colour
    assert np.isclose(sum(float(np.sum(v)) for v in dec.shares("red").values()), dec.similarity("red"), atol=1e-5)
