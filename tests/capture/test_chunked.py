"""Recorded layers with big score matrices run in blocks of query rows: same outputs, same probabilities.

``CHUNK_FROM`` is lowered to 0 here so that tiny models take the blocked path that long inputs take.
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import mmviz  # noqa: E402
from mmviz.capture import _interface  # noqa: E402
from tests.capture import conftest as tiny  # noqa: E402
from tests.capture.test_families import assert_outputs_equal, assert_trace_matches, eager_run  # noqa: E402


def _blocked(model: Any, inputs: dict[str, Any], processor: Any, monkeypatch: Any) -> tuple[Any, list[int]]:
    calls: list[int] = []
    chunk_rows = _interface.chunk_rows

    def spy(*args: Any) -> int | None:
        rows = chunk_rows(*args)
        calls.append(-1 if rows is None else rows)
        return rows

    monkeypatch.setattr(_interface, "CHUNK_FROM", 0)
    monkeypatch.setattr(_interface, "CHUNKS", 3)
    monkeypatch.setattr(_interface, "CHUNK_MIN_ROWS", 1)
    monkeypatch.setattr(_interface, "chunk_rows", spy)
    with torch.no_grad(), mmviz.capture(model, processor=processor) as cap:
        out = model(**inputs)
    return (out, cap.attention), calls


def _check(model: Any, inputs: dict[str, Any], processor: Any, monkeypatch: Any) -> None:
    with torch.no_grad():
        ref = model(**inputs)
    (out, trace), calls = _blocked(model, inputs, processor, monkeypatch)
    assert calls and all(rows > 0 for rows in calls), "every recorded layer ran in blocks"
    assert_outputs_equal(ref, out, inputs.get("attention_mask"))
    assert_trace_matches(trace, eager_run(model, inputs)[1], None)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_blocked_decoder_with_left_padding(kind: str, monkeypatch: Any) -> None:
    tok = tiny.word_tokenizer()
    tok.padding_side = "left"
    inputs = dict(tok(["a red square", "what is the blue circle"], return_tensors="pt", padding=True))
    _check(tiny.make_llama(kind), inputs, tok, monkeypatch)


def test_blocked_encoder_with_padding(monkeypatch: Any) -> None:
    tok = tiny.wordpiece_tokenizer()
    inputs = dict(tok(["a red square", "what is the blue circle"], return_tensors="pt", padding=True))
    _check(tiny.make_bert(), inputs, tok, monkeypatch)


def test_blocked_vlm(monkeypatch: Any) -> None:
    model, processor = tiny.make_llava()
    inputs = dict(processor(text="<image> what colour", images=tiny.random_image(32), return_tensors="pt"))
    _check(model, inputs, processor, monkeypatch)


def test_probabilities_asked_for_are_computed_whole(monkeypatch: Any) -> None:
    model = tiny.make_llama("llama")
    tok = tiny.word_tokenizer()
    inputs = dict(tok(["a red square"], return_tensors="pt"))
    inputs["output_attentions"] = True
    (out, _), calls = _blocked(model, inputs, tok, monkeypatch)
    assert calls and all(rows == -1 for rows in calls)
    eager_out, _ = eager_run(model, {k: v for k, v in inputs.items() if k != "output_attentions"})
    for got, want in zip(out.attentions, eager_out.attentions):
        assert got.dtype == want.dtype and (got - want).abs().max() <= 1e-5
