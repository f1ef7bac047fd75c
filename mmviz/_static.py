"""Where the built front end lives (``mmviz/static``, written by ``npm --prefix js run build``)."""

from __future__ import annotations

from pathlib import Path

from mmviz.errors import MMVizError

__all__ = ["STATIC_DIR", "MissingBundleError", "asset", "read_asset"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
"""The one place the bundle is looked for; ``hatch_build.py`` writes it there."""

BUILD_COMMAND = "npm --prefix js ci && npm --prefix js run build"


class MissingBundleError(MMVizError, FileNotFoundError):
    """The JavaScript bundle was not built (a source checkout before ``npm --prefix js run build``)."""


def asset(name: str) -> Path:
    """Path of a built front-end file, checked to exist.

    Args:
        name: file name inside ``mmviz/static`` (``widget.js``, ``widget.css``, ``standalone.js``).

    Raises:
        MissingBundleError: the file is missing; the message names the build command.
    """
    path = STATIC_DIR / name
    if not path.is_file():
        raise MissingBundleError(
            f"mmviz's front-end bundle {path} is missing. In a source checkout, build it with "
            f"`{BUILD_COMMAND}` (or reinstall with `pip install -e .`, whose build hook runs it)."
        )
    return path


def read_asset(name: str) -> str:
    """Text of a built front-end file (see ``asset``)."""
    return asset(name).read_text(encoding="utf-8")
