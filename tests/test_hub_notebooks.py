"""The hub notebooks of ``examples/hub/`` run end to end on tiny stand-ins of their checkpoints.

Without weights they skip (``examples/hub/conftest.py``); this runs every call they make, on random
stand-ins with the real architectures and processors, through ``MMVIZ_HUB_ROOT``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from tests.fixtures import hub_standins  # noqa: E402

HUB = Path(__file__).resolve().parents[1] / "examples" / "hub"
sys.path.insert(0, str(HUB))
from _hub import required_by  # noqa: E402

NOTEBOOKS = sorted(HUB.glob("*.ipynb"))


def test_every_hub_notebook_has_a_stand_in() -> None:
    assert NOTEBOOKS
    for notebook in NOTEBOOKS:
        assert required_by(notebook), f"{notebook.name} must call require(...) in a code cell"
        assert set(required_by(notebook)) <= set(hub_standins.BUILDERS), notebook.name


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_hub_notebook_runs_on_stand_ins(notebook: Path, tmp_path: Any, monkeypatch: Any) -> None:
    for repo_id in required_by(notebook):
        hub_standins.build(tmp_path, repo_id)
    monkeypatch.setenv("MMVIZ_HUB_ROOT", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(notebook, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(HUB)}})
    client.execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert any(o.get("output_type") == "display_data" for c in nb.cells for o in c.get("outputs", []))
