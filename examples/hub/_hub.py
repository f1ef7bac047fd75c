"""Find real hub weights on this machine, never download them.

The notebooks in ``examples/hub/`` show mmviz on real checkpoints. Nothing here downloads: a notebook
calls :func:`require` in its first code cell and stops there, with a message saying how to get the
weights, when they are not on disk. Under pytest (``--nbmake``), ``conftest.py`` skips such a notebook
with the same message.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

ROOT_VARIABLE = "MMVIZ_HUB_ROOT"
"""Environment variable naming a folder of checkpoints laid out as ``<root>/<owner>/<name>``."""


class WeightsNotFound(RuntimeError):
    """The checkpoint a notebook needs is not on this machine."""


def find(repo_id: str) -> Path | None:
    """The local folder of a checkpoint, or ``None`` when it is not on this machine.

    Looks in ``$MMVIZ_HUB_ROOT/<repo_id>`` first, then in the Hugging Face cache (``HF_HOME``), with
    ``local_files_only=True``: nothing is downloaded.

    Args:
        repo_id: a hub id such as ``"openai/clip-vit-base-patch32"``.
    """
    root = os.environ.get(ROOT_VARIABLE)
    if root and (Path(root) / repo_id).is_dir():
        return Path(root) / repo_id
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached (or huggingface_hub missing): absent, never fetched
        return None


def message(repo_id: str) -> str:
    """What to do when ``repo_id`` is missing."""
    return (
        f"The weights of {repo_id} are not on this machine, so this notebook stops here. mmviz never "
        f"downloads weights. To run it, fetch them once where you have internet (`hf download {repo_id}`), "
        f"or point {ROOT_VARIABLE} at a folder holding {repo_id}/. The teaching notebooks (examples/01-04) "
        "run offline with the models that ship with mmviz."
    )


def require(repo_id: str) -> Path:
    """The local folder of ``repo_id``.

    Raises:
        WeightsNotFound: the checkpoint is not on this machine (the message says how to get it).
    """
    path = find(repo_id)
    if path is None:
        raise WeightsNotFound(message(repo_id))
    return path


REQUIRE = re.compile(r"""require\(\s*["']([^"']+)["']\s*\)""")


def required_by(notebook: Path) -> list[str]:
    """Hub ids a notebook's code cells pass to :func:`require` (read, not run)."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return REQUIRE.findall(code)
