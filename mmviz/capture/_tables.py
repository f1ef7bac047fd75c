"""Token tables of a run, for methods that need to know which position is which image patch.

Lens, patching, attribution and features run the model themselves and only need the token tables capture
builds (image tokens carry ``(image, row, col)`` from the family's layout). ``token_tables`` records the first
layer of every stack while the block runs and hands back the tables; when capture cannot follow the model
the tables stay empty and the caller falls back to text or anonymous positions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from mmviz.data.tokens import TokenTable
from mmviz.errors import CaptureError

__all__ = ["IMAGE_INPUTS", "RunTables", "has_images", "token_tables"]

IMAGE_INPUTS = ("pixel_values", "image_grid_thw", "image_embeds")
"""Forward-call keys that carry images (``pixel_values`` also as a prefix: ``pixel_values_videos``, …): a run
with any of them needs capture's layout for its tables."""


def has_images(inputs: Mapping[str, Any]) -> bool:
    """Whether a forward call's keyword inputs carry images (or videos)."""
    return any(key in IMAGE_INPUTS or key.startswith("pixel_values") for key in inputs)


@dataclasses.dataclass
class RunTables:
    """The token tables of the forward calls run inside ``token_tables``.

    Attributes:
        tables: table name (``"text"``, ``"decoder"``, ``"vision_model.patches"``, …) → one table per batch row.
        key_tables: captured stack → the name of the table its keys refer to.
    """

    tables: dict[str, list[TokenTable]] = dataclasses.field(default_factory=dict)
    key_tables: dict[str, str] = dataclasses.field(default_factory=dict)

    def of_site(self, site: str) -> list[TokenTable]:
        """The key tables of the stack whose name is part of ``site``'s dotted path (the longest such name).

        Args:
            site: a module path such as ``"model.language_model.layers.1"``, or a stack name.

        Returns:
            One table per batch row; empty when no recorded stack lies on the path.
        """
        path = f".{site}."
        hits = [name for name in self.key_tables if f".{name}." in path]
        if not hits:
            return []
        return self.tables.get(self.key_tables[max(hits, key=len)], [])


@contextlib.contextmanager
def token_tables(
    model: Any, processor: Any = None, *, modules: Sequence[str] | None = None, enabled: bool = True
) -> Iterator[RunTables]:
    """Records the token tables of the forward calls run inside the block.

    Example::

        with token_tables(model, processor) as run:
            model(**inputs)
        run.tables["text"][0]        # the prompt's TokenTable, image tokens with their patches

    Only the first layer of each stack is recorded (dense), so the cost is one layer's attention. Errors of
    the block propagate and the model is restored as ``mmviz.capture`` restores it.

    Args:
        model: a transformers model ``mmviz.capture`` accepts.
        processor: its processor or tokenizer, for token texts and the image layout.
        modules: record only these stacks (``None``: all).
        enabled: ``False`` records nothing and leaves the tables empty (for runs whose tables the caller
            builds from the input ids).

    Yields:
        A ``RunTables``, filled when the block ends; empty if capture cannot follow the model.
    """
    run = RunTables()
    if not enabled:
        yield run
        return
    from mmviz.capture import capture

    try:
        session = capture(model, processor, layers=[0], modules=modules, store="dense").__enter__()
    except CaptureError:  # a model capture cannot follow: no tables
        yield run
        return
    try:
        yield run
    except BaseException:
        session.__exit__(*sys.exc_info())
        raise
    try:
        session.__exit__(None, None, None)
    except CaptureError:  # the model ran but recorded nothing (state-space blocks, ...): no tables
        return
    with contextlib.suppress(CaptureError, KeyError, AttributeError):
        trace = session.attention
        run.tables = {name: list(rows) for name, rows in trace.tables.items()}
        run.key_tables = {name: module.key_table for name, module in trace.modules.items()}
