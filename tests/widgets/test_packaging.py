"""The built front end ships in the wheel, and a missing bundle gives an error that names the build."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mmviz import _static

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_contains_the_bundle(tmp_path):
    if not (ROOT / "pyproject.toml").is_file() or not (ROOT / "hatch_build.py").is_file():
        pytest.skip("not a source checkout")
    if not _static.STATIC_DIR.joinpath("widget.js").is_file() and shutil.which("npm") is None:
        pytest.skip("no bundle and no npm to build it")
    if importlib.util.find_spec("hatchling") is not None:
        command = [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path)]
    else:  # an isolated build fetches hatchling from the package index
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    (wheel,) = tmp_path.glob("mmviz-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("widget.js", "widget.css", "standalone.js"):
        assert f"mmviz/static/{name}" in names
    assert not any(n.startswith("js/") or "node_modules" in n for n in names)
    for name in ("cfg.json", "sae_weights.safetensors"):  # the teaching SAE ships as package data
        assert f"mmviz/teaching/weights/sae/{name}" in names


def test_missing_bundle_names_the_build_command(monkeypatch, tmp_path):
    monkeypatch.setattr(_static, "STATIC_DIR", tmp_path)
    with pytest.raises(_static.MissingBundleError, match=r"npm --prefix js run build"):
        _static.asset("widget.js")
    with pytest.raises(FileNotFoundError):
        _static.read_asset("standalone.js")
