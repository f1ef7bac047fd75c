"""Exceptions raised by mmviz.

Every error mmviz raises on purpose derives from ``MMVizError``, so a notebook can catch them all
with one ``except``. Each message says what was wrong and what to do about it.
"""

from __future__ import annotations

__all__ = ["BudgetError", "CaptureError", "InputMismatchError", "MMVizError", "TraceFileError"]


class MMVizError(Exception):
    """Base class of every error raised by mmviz."""


class TraceFileError(MMVizError, ValueError):
    """A file could not be read as an mmviz trace (foreign, truncated, newer format or unsafe)."""


class CaptureError(MMVizError, RuntimeError):
    """Attention could not be captured from a model, or a capture was used incorrectly."""


class BudgetError(MMVizError, ValueError):
    """A trace is bigger than a size budget allows; the message names the arguments that trim it."""


class InputMismatchError(MMVizError, ValueError):
    """Views or traces that must show one input (a Dashboard's panes, a view's attributions) show different ones."""
