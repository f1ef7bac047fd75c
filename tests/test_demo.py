"""`mmviz demo` writes one offline HTML report."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from mmviz.cli import main


def test_demo_writes_an_offline_report(tmp_path, capsys):
    out = tmp_path / "demo.html"
    assert main(["demo", "--models", "random", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") or html.lower().startswith("<!doctype html>")
    assert not re.search(r"""(src|href)=["']https?://""", html), "the report must not load anything from the network"
    assert "mmviz demo" in html
