"""AttributionView: state, export and errors (the page itself is tested in tests/browser)."""

from __future__ import annotations

import numpy as np
import pytest

from mmviz import _codec
from mmviz.data import Attribution, TokenTable
from mmviz.errors import BudgetError

pytest.importorskip("anywidget")


def _floats_in(value):
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_floats_in(v) for k, v in value.items() if k not in ("scale", "offset", "opacity"))
    if isinstance(value, list):
        return any(isinstance(v, float) for v in value) or any(_floats_in(v) for v in value)
    return False


def _attr(n=4, method="integrated_gradients", rows=2, pixels=True):
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    table = TokenTable.build(
        ["<s>", "<img>", "<img>", "red"][:n],
        kind=["special", "image", "image", "text"][:n],
        image_index=[-1, 0, 0, -1][:n],
        patch_row=[-1, 0, 0, -1][:n],
        patch_col=[-1, 0, 1, -1][:n],
        images=[image],
        grids=[(1, 2)],
    )
    scores = np.arange(rows * n, dtype=np.float32).reshape(rows, n) - 3
    maps = (np.linspace(-1, 1, rows * 64).reshape(rows, 8, 8),) if pixels else ()
    return Attribution(scores, table, method, tuple(f"t{i}" for i in range(rows)), "answer", pixel_maps=maps)


def test_state_is_binary_and_round_trips():
    from mmviz.widgets import AttributionView

    view = _attr().show(target=1, opacity=0.3)
    assert isinstance(view, AttributionView) and view._view == "attribution"
    assert view.target == 1 and view.opacity == 0.3
    entry = view._entries[0]
    assert entry["signed"] and entry["targets"] == ["t0", "t1"]
    np.testing.assert_array_equal(_codec.decode_tensor(entry["scores"]), view.attributions[0].scores)
    np.testing.assert_allclose(
        _codec.decode_tensor(entry["pixels"][0]), view.attributions[0].pixel_maps[0], atol=2 / 255
    )
    assert not _floats_in(view._entries) and not _floats_in(view._tokens)
    state = view.export_state()
    assert state["_standalone"] and state["_entries"] is view._entries


def test_several_attributions_and_entry_switch(tmp_path):
    from mmviz.widgets import AttributionView

    view = AttributionView([_attr(), _attr(method="saliency", rows=1, pixels=False)], target=1)
    assert [e["signed"] for e in view._entries] == [True, False]
    view.entry = 1
    assert view.target == 0  # the saliency attribution has one row
    out = view.save(tmp_path / "a.html", title="<b>t</b>")
    text = out.read_text()
    assert "&lt;b&gt;t&lt;/b&gt;" in text and "https://" not in text
    assert view.save(tmp_path / "a.png").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match=r"ending in \.html, \.png, \.svg, \.pdf"):
        view.save(tmp_path / "a.gif")


def test_errors():
    from mmviz.errors import InputMismatchError
    from mmviz.widgets import AttributionView

    shorter = AttributionView([_attr(), _attr(n=3)])  # one prompt, a shorter target: one view, one selector
    assert len(shorter._entries) == 2 and len(shorter.tokens()) == 3
    other = _attr()
    other.tokens.text[3] = "blue"
    with pytest.raises(InputMismatchError, match=r"token 'red' at position 3 vs 'blue' at position 3"):
        AttributionView([_attr(), other])
    with pytest.raises(BudgetError, match="budget"):
        AttributionView(_attr(), budget=10)
    with pytest.raises(TypeError, match="unexpected keyword"):
        AttributionView(_attr(), layer=3)
    with pytest.raises(IndexError):
        AttributionView(_attr(), target=5)


def test_dashboard_panes_and_routed_slice_requests():
    import mmviz
    from mmviz.data import AttentionTrace, ModuleAttention
    from mmviz.widgets import AttentionView, AttributionView

    attr = _attr()
    n = len(attr.tokens)
    probs = np.tril(np.ones((n, n), dtype=np.float16))
    probs /= probs.sum(-1, keepdims=True)
    module = ModuleAttention(
        "language_model", (0, 1), (0,), "text", "text", dense=np.stack([probs, probs])[None, :, None]
    )
    trace = AttentionTrace({"language_model": module}, {"text": [attr.tokens]})
    board = mmviz.Dashboard(trace, attr, _attr(method="saliency"), title="t")
    assert [p["kind"] for p in board._panes] == ["attention", "attribution"]
    assert isinstance(board.panes[0], AttentionView) and isinstance(board.panes[1], AttributionView)
    assert len(board._panes[1]["state"]["_entries"]) == 2  # consecutive attributions share a pane
    assert board._panes[0]["state"]["_standalone"] is False
    assert board.export_state()["_panes"][0]["state"]["_standalone"] is True
    sent = []
    board.send = lambda content, buffers=None: sent.append((content, buffers))
    board._on_msg(
        board,
        {
            "pane": 0,
            "content": {"type": "slice", "module": "language_model", "layer": 0, "aggregate": "head", "head": 0},
        },
        [],
    )
    assert sent and sent[0][0]["pane"] == 0 and sent[0][0]["content"]["type"] == "slice"
    with pytest.raises(TypeError, match="Dashboard shows"):
        mmviz.Dashboard(3)


def test_dashboard_saves_every_pane_as_one_figure(tmp_path):
    import mmviz
    from mmviz.data import AttentionTrace, ModuleAttention

    attr = _attr()
    n = len(attr.tokens)
    probs = np.tril(np.ones((n, n), dtype=np.float16))
    probs /= probs.sum(-1, keepdims=True)
    module = ModuleAttention("language_model", (0,), (0,), "text", "text", dense=probs[None, None, None])
    trace = AttentionTrace({"language_model": module}, {"text": [attr.tokens]})
    board = mmviz.Dashboard(trace, attr, title="why red?")
    fig = board.figure()
    assert len(fig.subfigs) == 2 and fig.get_suptitle() == "why red?"
    assert fig.subfigs[0].get_suptitle() and fig.subfigs[1].get_suptitle()  # each pane says what it shows
    svg = board.save(tmp_path / "board.svg").read_text(encoding="utf-8")
    assert "why red?" in svg and "<text" in svg  # token text stays text
    assert board.save(tmp_path / "board.png", dpi=60).read_bytes()[:4] == b"\x89PNG"
    assert board.save(tmp_path / "board.html").read_text(encoding="utf-8").lower().startswith("<!doctype html>")
    with pytest.raises(ValueError, match=r"\.png"):
        board.save(tmp_path / "board.gif")
