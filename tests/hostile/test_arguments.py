"""Careless arguments to ``mmviz.capture`` and ``mmviz.attribute``: refused early, saying what to change.

Each row: the call's keyword arguments, the error class, a regex of its message. Add a row per finding.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import mmviz  # noqa: E402
from mmviz.errors import CaptureError  # noqa: E402
from tests.attribution.conftest import word_tokenizer  # noqa: E402
from tests.capture.conftest import make_llama  # noqa: E402

CAPTURE_CASES: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"heads": [-1]}, CaptureError, r"heads=\[-1\]: negative indices are not accepted"),
    ({"layers": [-1]}, CaptureError, r"layers=\[-1\]: negative indices.*the last of 12 is 11"),
    ({"layers": [0, 99]}, CaptureError, r"no attention stack has layer 99 \(layers: language_model 0–1\)"),
    (
        {"layers": {"languag_model": [0]}},
        CaptureError,
        r"no attention stack 'languag_model' \(did you mean 'language_model'",
    ),
    ({"layers": {"language_model": [5]}}, CaptureError, r"'language_model' has no layer 5 \(its layers are 0–1\)"),
    ({"modules": ["vision_tower"]}, CaptureError, r"no attention stack 'vision_tower'; its stacks are language_model"),
    ({"heads": [4]}, CaptureError, r"'language_model' has 4 heads \(0–3\), so head 4 does not exist"),
    ({"heads": ["0"]}, CaptureError, r"'0' is not an integer index"),
    ({"layers": "0"}, CaptureError, r"give a list of integer indices"),
    ({"layers": []}, CaptureError, r"selects nothing"),
    ({"heads": [True]}, CaptureError, r"True is not an integer index"),
    ({"store": "sparse"}, ValueError, r"store must be 'auto', 'dense' or 'qk'"),
    ({"qk_threshold": 0}, ValueError, r"qk_threshold must be a positive number"),
]


@pytest.fixture(scope="module")
def llama() -> Any:
    torch.set_num_threads(1)
    return make_llama()


@pytest.mark.parametrize(("kwargs", "error", "message"), CAPTURE_CASES, ids=[repr(k) for k, _, _ in CAPTURE_CASES])
def test_capture_argument_is_refused_before_the_run(
    llama: Any, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    implementation = llama.config._attn_implementation_internal
    with pytest.raises(error) as caught:
        mmviz.capture(llama, **kwargs)
    assert re.search(message, str(caught.value)), str(caught.value)
    assert llama.config._attn_implementation_internal == implementation


def test_valid_selection_is_normalised(llama: Any) -> None:
    ids = torch.tensor([[2, 5, 6, 7]])
    with torch.no_grad(), mmviz.capture(llama, layers=1, heads=[3, 0, 3]) as cap:
        llama(input_ids=ids)
    module = cap.attention.module()
    assert module.layers == (1,)
    assert module.heads == (0, 3)


ATTRIBUTE_CASES: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"target": "zzzzz"}, ValueError, r"'zzzzz' is not in the tokenizer's vocabulary.*<unk>"),
    ({"target": "a bleu"}, ValueError, r"'bleu' is not in the tokenizer's vocabulary.*nearest tokens: 'blue'"),
    ({"target": ("red", "grene")}, ValueError, r"'grene' is not in.*nearest tokens: 'green'"),
    ({"target": 10**6}, ValueError, r"target token id 1000000 is out of range \(0 to 63\)"),
    ({"target": -1}, ValueError, r"target token id -1 is out of range"),
    ({"target": (3, 10**6)}, ValueError, r"target token id 1000000 is out of range"),
    ({"target": True}, TypeError, r"True is not a token id"),
    ({"steps": 2.5}, ValueError, r"steps=2\.5 must be a whole number ≥ 1"),
    ({"steps": 0}, ValueError, r"steps=0 must be at least 1"),
    ({"method": "occlusion", "batch_size": 0}, ValueError, r"batch_size=0 must be at least 1"),
    ({"inputs": None}, TypeError, r"inputs must be the processor's .* not NoneType: inputs = processor\("),
    ({"inputs": "a red square"}, TypeError, r"not str"),
    ({"inputs": {"input_ids": [[2, 5]]}}, ValueError, r"hold no tensors.*return_tensors='pt'"),
    ({"method": "shap"}, ValueError, r"unknown attribution method 'shap'"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), ATTRIBUTE_CASES, ids=[repr(k) for k, _, _ in ATTRIBUTE_CASES])
def test_attribute_argument_is_refused_with_what_to_change(
    llama: Any, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    tok = word_tokenizer()
    call: dict[str, Any] = {"inputs": tok("a red square", return_tensors="pt"), "processor": tok, "progress": False}
    call.update({"method": "saliency", "target": " red"} | kwargs)
    with pytest.raises(error) as caught:
        mmviz.attribute(llama, **call)
    assert re.search(message, str(caught.value), re.S), str(caught.value)
