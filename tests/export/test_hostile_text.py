"""Token text, targets and titles are data: ``$`` and TeX in them never reach mathtext, in any figure."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import mmviz
from mmviz.data import Attribution, TokenTable
from tests.browser.test_dashboard_page import _trace
from tests.widgets.test_cross_attention_view import synthetic_cross_trace

EVIL = ["$^$", r"$\frac{x$", "$5 and $6"]


def _views() -> dict[str, Any]:
    table = TokenTable.build(["<s>", *EVIL], kind=["special", "text", "text", "text"])
    attr = Attribution(np.ones((1, len(table)), np.float32), table, "saliency", (EVIL[0],), EVIL[1])
    cross = synthetic_cross_trace(batch=1)
    cross.tables[0].text[2] = EVIL[0]
    return {
        "attention": _trace(table).show(title=EVIL[1]),
        "attribution": attr.show(title=EVIL[0]),
        "cross_attention": cross.show(title=EVIL[1], word=1),
        "dashboard": mmviz.Dashboard(_trace(table), attr, title=EVIL[2]),
    }


@pytest.mark.parametrize("kind", ["attention", "attribution", "cross_attention", "dashboard"])
def test_dollar_signs_are_text_in_every_figure(tmp_path: Any, kind: str) -> None:
    view = _views()[kind]
    assert view.save(tmp_path / "f.png", dpi=30).read_bytes().startswith(b"\x89PNG")
    svg = view.save(tmp_path / "f.svg").read_text(encoding="utf-8")
    assert "$" in svg  # shown as typed, not parsed
