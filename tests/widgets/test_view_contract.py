"""The view contract: one base class, typed options, requests answered by whoever hosts the view,
checked inputs in a Dashboard, and every view kind (cross-attention included) as a Dashboard pane."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import mmviz
from mmviz.data import Attribution, TokenTable
from mmviz.errors import InputMismatchError
from mmviz.widgets import AttentionView, AttributionView, CrossAttentionView, Dashboard, View
from tests.browser.test_dashboard_page import _trace
from tests.widgets.test_cross_attention_view import synthetic_cross_trace

SLICE = {"type": "slice", "module": "language_model", "layer": 1, "aggregate": "head", "head": 1}


def _attribution(table: TokenTable, method: str = "saliency", target: str = "answer") -> Attribution:
    scores = np.linspace(0, 1, len(table), dtype=np.float32)[None]
    return Attribution(scores, table, method, ("log p",), target)


def _table(words: list[str]) -> TokenTable:
    return TokenTable.build(["<s>", *words], kind=["special", *["text"] * len(words)])


class _Sent:
    """Records ``View.send`` calls, whichever view makes them."""

    def __init__(self, monkeypatch: Any) -> None:
        self.calls: list[tuple[View, dict[str, Any], list[Any]]] = []
        monkeypatch.setattr(
            View, "send", lambda view, content, buffers=None: self.calls.append((view, content, buffers))
        )


def test_a_view_shown_before_joining_a_dashboard_still_answers(monkeypatch: Any) -> None:
    sent = _Sent(monkeypatch)
    table = _table(["a", "red", "circle"])
    view = _trace(table).show()
    view._on_msg(view, SLICE, [])  # shown on its own first
    board = Dashboard(view, _attribution(table))
    view._on_msg(view, SLICE, [])  # still answered by the view itself after joining
    board._on_msg(board, {"pane": 0, "content": SLICE}, [])  # and through the Dashboard, wrapped
    assert [type(v).__name__ for v, _, _ in sent.calls] == ["AttentionView", "AttentionView", "Dashboard"]
    (_, first, buffers), (_, second, _), (_, wrapped, wrapped_buffers) = sent.calls
    assert first == second and first["key"] == "language_model|1|1" and len(buffers) == 3
    assert wrapped == {"pane": 0, "content": first} and len(wrapped_buffers) == 3
    board._on_msg(board, {"pane": 1, "content": SLICE}, [])  # an attribution pane holds all its data
    board._on_msg(board, {"pane": 7, "content": SLICE}, [])  # no such pane
    assert len(sent.calls) == 3


def test_dashboard_refuses_panes_of_different_inputs() -> None:
    table = _table(["a", "red", "circle"])
    other = _table(["a", "blue", "circle"])
    with pytest.raises(InputMismatchError, match=r"pane 0 \(attention\) and pane 1 \(attribution\).*'red'.*'blue'"):
        Dashboard(_trace(table), _attribution(other))
    with pytest.raises(InputMismatchError, match="'red' at position 2 vs 'blue' at position 2"):
        AttributionView([_attribution(table), _attribution(other)])
    image = np.zeros((8, 8, 3), np.uint8)
    with_image = TokenTable.build(["<s>", "x"], kind=["special", "text"], images=[image], grids=[(1, 1)])
    brighter = TokenTable.build(["<s>", "x"], kind=["special", "text"], images=[image + 1], grids=[(1, 1)])
    with pytest.raises(InputMismatchError, match="image 0 differs"):
        Dashboard(_attribution(with_image), _trace(brighter))


def test_attributions_of_different_targets_share_one_pane() -> None:
    prompt = _table(["the", "sky", "is", " blue"])
    longer = _table(["the", "sky", "is", " blue", " sky"])  # a two-token target appends its first token
    board = Dashboard(
        _trace(prompt), _attribution(prompt, target="' blue'"), _attribution(longer, target="' blue sky'")
    )
    assert [p.KIND for p in board.panes] == ["attention", "attribution"]
    assert [e["label"] for e in board.panes[1]._entries] == ["saliency: ' blue'", "saliency: ' blue sky'"]


def test_cross_attention_joins_a_dashboard_with_the_text_encoder_attention() -> None:
    cross = synthetic_cross_trace(batch=1)
    board = mmviz.Dashboard(cross, _trace(cross.tables[0]))
    assert [p["kind"] for p in board._panes] == ["cross_attention", "attention"]
    state = board._panes[0]["state"]
    assert state["_word_positions"][state["_words"].index("circle")] == [3]  # words link by prompt position
    assert board.export_state()["_panes"][0]["state"]["_standalone"] is True


def test_typed_options_are_checked_once_in_the_base() -> None:
    table = _table(["a", "b"])
    with pytest.raises(
        TypeError, match=r"AttentionView got unexpected keyword argument\(s\) \['layr'\]; valid options:.*layer"
    ):
        AttentionView(_trace(table), layr=1)
    with pytest.raises(TypeError, match=r"CrossAttentionView got unexpected.*\['wrod'\]"):
        CrossAttentionView(synthetic_cross_trace(batch=1), wrod="red")
    with pytest.raises(IndexError, match="token 9 is not a query position"):
        _trace(table).show(token=9)
    for bad in ({"max_matrix": 0}, {"thumb_size": 0}):
        with pytest.raises(ValueError, match="at least 1"):
            _trace(table).show(**bad)
    assert AttentionView.state_names()[:5] == ["_view", "_title", "_notes", "_standalone", "cmap"]


def test_every_trace_shows_itself_by_one_rule() -> None:
    table = _table(["a", "b"])
    for trace in (_trace(table), _attribution(table), synthetic_cross_trace(batch=1)):
        bundle = trace._repr_mimebundle_()
        data = bundle[0] if isinstance(bundle, tuple) else bundle  # ipywidgets returns (data, metadata)
        assert "application/vnd.jupyter.widget-view+json" in data, type(trace).__name__
    big = _trace(table)
    big.show = lambda **_: (_ for _ in ()).throw(mmviz.BudgetError("over budget"))  # type: ignore[method-assign]
    assert "shown as text: over budget" in big._repr_mimebundle_()["text/plain"]


def test_generated_tokens_are_not_part_of_the_input() -> None:
    prompt = ["the", "capital", "is"]
    generated = TokenTable.build(["<s>", *prompt, " f"], kind=["special", *["text"] * 4], generated=[0, 0, 0, 0, 1])
    target = _table([*prompt, " Paris"])  # an attribution of a teacher-forced target after the same prompt
    board = Dashboard(_trace(generated), _attribution(target))
    assert [p.KIND for p in board.panes] == ["attention", "attribution"]


def test_a_partial_trace_says_so_in_its_view_title() -> None:
    trace = _trace(_table(["a", "b"]))
    trace.complete = False
    assert trace.show()._title == "Partial trace: the run stopped early"
    assert trace.show(title="run 3")._title == "run 3 (partial trace: the run stopped early)"
    cross = synthetic_cross_trace(batch=1)
    cross.complete = False
    assert cross.show()._title == "Partial trace: the run stopped early"


def test_qk_thumbnails_are_computed_once_per_trace() -> None:
    from tests.fixtures.synthetic import big_trace

    trace = big_trace(64, n_layers=2, n_heads=2)
    module = trace.module(trace.default_module)
    calls = {"n": 0}
    original = type(module).block_means

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        return original(self, *args, **kwargs)

    type(module).block_means = counting  # type: ignore[method-assign]
    try:
        first = trace.show(thumb_size=8)
        second = trace.show(thumb_size=8)
    finally:
        type(module).block_means = original  # type: ignore[method-assign]
    assert calls["n"] == 2 and first._thumbs == second._thumbs
    assert len(module._blocks) == 2  # one cached entry per layer, shared by both views
