"""The shipped teaching models load offline and work."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import mmviz.teaching as teaching  # noqa: E402
from mmviz.teaching.shapes import caption_for, make_scenes  # noqa: E402


def test_import_needs_no_torch_at_module_level() -> None:
    import ast
    from pathlib import Path

    for name in ("__init__.py", "shapes.py", "_common.py", "_tokenizer.py", "_vlm.py", "faithfulness.py"):
        tree = ast.parse((Path(teaching.__file__).parent / name).read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        mods = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
        mods |= {n.module for n in top if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m for m in mods if m.split(".")[0] in {"torch", "transformers", "diffusers"}}, name


def test_clip_forward(clip: tuple[Any, Any]) -> None:
    model, processor = clip
    assert not model.training
    scenes = make_scenes(4, seed=11)
    inputs = processor(
        text=[s.caption for s in scenes], images=[s.image for s in scenes], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits_per_image.shape == (4, 4)
    assert model.config.text_config.eos_token_id != 2
    # each image prefers its own caption
    assert (out.logits_per_image.argmax(-1) == torch.arange(4)).float().mean() >= 0.75


def test_clip_prefers_true_caption_over_colour_swap(clip: tuple[Any, Any]) -> None:
    model, processor = clip
    scenes = make_scenes(16, seed=12345, n_objects=2)  # held out: training used seed 0
    true = [s.caption for s in scenes]
    swapped = [
        caption_for([(s.objects[1].colour, s.objects[0].shape), (s.objects[0].colour, s.objects[1].shape)], s.relation)
        for s in scenes
    ]
    images = [s.image for s in scenes]
    with torch.no_grad():
        a = model(**processor(text=true, images=images, return_tensors="pt", padding=True))
        b = model(**processor(text=swapped, images=images, return_tensors="pt", padding=True))
    right = (a.logits_per_image.diagonal() > b.logits_per_image.diagonal()).float().mean().item()
    assert right >= 15 / 16


def test_vlm_answers(vlm: tuple[Any, Any]) -> None:
    model, processor = vlm
    assert not model.training
    scenes = make_scenes(8, seed=321, n_objects=1)
    questions = [s.qa[i % 2] for i, s in enumerate(scenes)]
    inputs = processor(
        images=[s.image for s in scenes],
        text=[f"<image> {q}" for q, _, _ in questions],
        return_tensors="pt",
        padding=True,
    )
    assert int((inputs["input_ids"][0] == model.config.image_token_id).sum()) == 64
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    answers = processor.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    # one-object scenes: no binding needed (two-object accuracy: mmviz.teaching.faithfulness.run_vlm)
    right = np.mean([a.strip() == ans for a, (_, ans, _) in zip(answers, questions)])
    assert right >= 0.75, answers


def test_diffusion_draws(pipe: Any) -> None:
    from mmviz.teaching.shapes import segment_colour

    out = pipe(
        ["a red circle", "a blue square left of a yellow star"],
        num_inference_steps=10,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    images = (out.images * 255).round().astype(np.uint8)
    assert images.shape == (2, 32, 32, 3)
    assert segment_colour(images[0], "red").sum() >= 8
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe("a green triangle", num_inference_steps=2).images[0].size == (32, 32)


def test_capture_keeps_the_generated_image(pipe: Any) -> None:
    import mmviz

    with mmviz.capture(pipe) as cap:
        out = pipe("a red circle", num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np")
    trace = cap.cross_attention
    assert trace.images is not None, "the capture must see the pipeline's output image"
    expected = (np.clip(out.images, 0, 1) * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(trace.images, expected)
    assert trace.num_steps == 3


def test_loaders_hide_progress_bars_and_keep_the_callers_setting(capfd: Any) -> None:
    import transformers.utils.logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    teaching.load_vlm()
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        teaching.load_clip()
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()
