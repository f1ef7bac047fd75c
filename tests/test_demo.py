"""`mmviz demo` writes one offline HTML report (the README's first command)."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from mmviz.cli import main
from mmviz.demo import teaching_weights_available


def _check_report(path):
    html = path.read_text(encoding="utf-8")
    assert html.lower().startswith("<!doctype html>")
    assert not re.search(r"""(src|href)=["']https?://""", html), "the report must not load anything from the network"
    assert "mmviz demo" in html
    return html


def test_demo_on_the_teaching_models(tmp_path, capsys):
    assert teaching_weights_available(), "the teaching weights ship in mmviz/teaching/weights"
    out = tmp_path / "demo.html"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "loading the teaching models" in printed
    assert f"wrote {out}" in printed
    html = _check_report(out)
    assert "Tiny models trained on a procedural shapes world" in html
    for part in ("CLIP vision tower", "VLM", "diffusion"):  # one section per teaching model and scene
        assert html.count(f"· {part} ·") == 2, part
    assert "integrated gradients" in html and "cross-attention" in html.lower()


def test_demo_on_random_models(tmp_path, capsys):
    import torch

    out = tmp_path / "demo.html"
    threads = torch.get_num_threads()
    assert main(["demo", "--models", "random", "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads, "the demo runs on one thread and gives the others back"
    assert "loading the random models" in capsys.readouterr().out
    assert "Random weights" in _check_report(out)
