"""The data, widget and export layers must work without torch (a saved trace opens anywhere)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_import_without_torch():
    code = textwrap.dedent(
        """
        import importlib, sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers", "diffusers", "accelerate"):
                    raise ImportError(f"{name} is blocked for this test")

        sys.meta_path.insert(0, Block())
        import mmviz, mmviz.data, mmviz.capture
        for optional in ("mmviz.widgets", "mmviz.export"):
            try:
                importlib.import_module(optional)
            except ModuleNotFoundError as exc:
                if exc.name != optional:
                    raise
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_subpackages_are_reachable_as_attributes():
    code = (
        "import mmviz; print(mmviz.widgets.AttributionView.__name__, mmviz.export.__name__, mmviz.teaching.SHAPES[0])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["AttributionView", "mmviz.export", "circle"]
    missing = subprocess.run([sys.executable, "-c", "import mmviz; mmviz.nothing"], capture_output=True, text=True)
    assert "module 'mmviz' has no attribute 'nothing'" in missing.stderr
