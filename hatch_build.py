"""Hatch build hook: builds the front end (``js/``) into ``mmviz/static`` when the bundle is missing.

Runs for wheels and editable installs (``pip install .`` / ``pip install -e .``). Set
``MMVIZ_SKIP_JS_BUILD=1`` to skip it (the bundle must then already exist, or views raise an error
that names the build command).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

BUNDLE = ("widget.js", "widget.css", "standalone.js")
NODE_MIN = 18
"""Oldest Node.js major version that builds the bundle (esbuild's minimum)."""


def node_major(node: str) -> int | None:
    """The major version of the ``node`` executable (``None`` when it cannot be read)."""
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
        return int(out.strip().lstrip("v").split(".")[0])
    except (OSError, subprocess.CalledProcessError, ValueError):
        return None


class JSBuildHook(BuildHookInterface):  # type: ignore[misc]
    """Runs ``npm ci`` and ``npm run build`` in ``js/`` unless the bundle is already built."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Builds the bundle if needed, then ships ``mmviz/static`` as artifacts."""
        root = Path(self.root)
        static = root / "mmviz" / "static"
        missing = [name for name in BUNDLE if not (static / name).is_file()]
        if missing and os.environ.get("MMVIZ_SKIP_JS_BUILD", "") not in ("", "0"):
            self.app.display_warning(f"mmviz: MMVIZ_SKIP_JS_BUILD is set; bundle files missing: {missing}")
            return
        if missing:
            js = root / "js"
            npm, node = shutil.which("npm"), shutil.which("node")
            if npm is None or node is None or not (js / "package.json").is_file():
                raise RuntimeError(
                    f"mmviz: the front-end bundle is missing and cannot be built here (needs Node.js >= {NODE_MIN} "
                    "with npm, and js/). Install Node.js, or install a built mmviz wheel instead; or run "
                    "`npm --prefix js ci && npm --prefix js run build`, or set MMVIZ_SKIP_JS_BUILD=1."
                )
            major = node_major(node)
            if major is not None and major < NODE_MIN:
                raise RuntimeError(
                    f"mmviz: building the front end needs Node.js >= {NODE_MIN}; `node` is version {major}. "
                    "Install a newer Node.js, or install a built mmviz wheel instead."
                )
            self.app.display_info("mmviz: building the front end (npm ci && npm run build)")
            if not (js / "node_modules").is_dir():
                subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=js, check=True)
            subprocess.run([npm, "run", "build"], cwd=js, check=True)
        build_data.setdefault("artifacts", []).extend(f"mmviz/static/{name}" for name in BUNDLE)
