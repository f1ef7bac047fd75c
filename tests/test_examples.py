"""Example scripts run end to end on tiny offline models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import mmviz

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_capture_tiny_models_script(tmp_path):
    script = EXAMPLES / "capture_tiny_models.py"
    run = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    assert "generated positions" in run.stdout
    llava = mmviz.load(tmp_path / "llava.mmviz")
    assert llava.tokens().image_positions(0).shape == (4, 4)
    assert mmviz.load(tmp_path / "gpt2-generate.mmviz").tokens().generated.sum() == 5
