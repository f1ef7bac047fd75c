"""Checks of ``mmviz.attribute``'s arguments where they enter, with messages that say what to change.

Token ids and class ids are the model's own numbers, from 0; negative ids are refused (as layer and
head indices are by ``mmviz.capture``). A string answer must tokenize to known tokens: one that
becomes the unknown token would explain ``log p(<unk>)`` under the answer's name, so it is refused
with the vocabulary's nearest tokens.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch

from mmviz.attribution._targets import model_kind

_EXAMPLE = "inputs = processor(text=..., images=..., return_tensors='pt')"


def check_inputs(inputs: Any) -> dict[str, Any]:
    """The processor's output as a plain dict, or a ``TypeError``/``ValueError`` saying what to pass."""
    if hasattr(inputs, "data") and not isinstance(inputs, dict):
        inputs = inputs.data
    if not isinstance(inputs, dict):
        raise TypeError(
            f"inputs must be the processor's (or tokenizer's) output for one example, a dict of tensors, not "
            f"{type(inputs).__name__}: {_EXAMPLE}"
        )
    if not any(isinstance(v, torch.Tensor) for v in inputs.values()):
        raise ValueError(f"inputs hold no tensors ({sorted(inputs)}); call the processor with return_tensors='pt'")
    return dict(inputs)


def check_count(value: Any, name: str, hint: str) -> int:
    """A positive integer argument (``steps``, ``batch_size``), or a ``ValueError`` naming it."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ValueError(f"{name}={value!r} must be a whole number ≥ 1 ({hint})")
    number = int(value.__index__())
    if number < 1:
        raise ValueError(f"{name}={number} must be at least 1 ({hint})")
    return number


def check_target(model: Any, tokenizer: Any, target: Any) -> None:
    """Refuses ids out of range and answers that tokenize to the unknown token (see the module docstring)."""
    items = list(target) if isinstance(target, tuple) else [target]
    kind = model_kind(model)
    for item in items:
        if isinstance(item, bool):
            raise TypeError(f"target={target!r}: {item!r} is not a token id, an answer or a label")
        if isinstance(item, int) and kind in ("lm", "classifier"):
            _check_id(model, item, kind)
        elif isinstance(item, str) and kind == "lm":
            _check_known(tokenizer, item)


def _check_id(model: Any, index: int, kind: str) -> None:
    if kind == "lm":
        size, what = _vocab_size(model), "token id"
        hint = "a token id from the tokenizer (tokenizer.convert_tokens_to_ids(...)) or a string answer"
    else:
        size, what = _num_labels(model), "class id"
        hint = "a class id or one of the label names in model.config.id2label"
    if index < 0 or (size is not None and index >= size):
        bound = f"0 to {size - 1}" if size is not None else "from 0"
        raise ValueError(f"target {what} {index} is out of range ({bound}); give {hint}")


def _vocab_size(model: Any) -> int | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.ndim == 2:
        return int(weight.shape[0])
    config = getattr(model.config, "text_config", None) or model.config
    size = getattr(config, "vocab_size", None)
    return int(size) if isinstance(size, int) else None


def _num_labels(model: Any) -> int | None:
    labels = getattr(model.config, "num_labels", None)
    return int(labels) if isinstance(labels, int) else None


def _check_known(tokenizer: Any, text: str) -> None:
    unk = getattr(tokenizer, "unk_token_id", None)
    if tokenizer is None or unk is None or (tokenizer.unk_token and tokenizer.unk_token in text):
        return
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if unk not in ids:
        return
    unknown = [w for w in text.split() if unk in tokenizer(w, add_special_tokens=False)["input_ids"]] or [text]
    vocab = [t for t in tokenizer.get_vocab() if t and t not in tokenizer.all_special_tokens]
    near = difflib.get_close_matches(unknown[0].strip(), vocab, n=5, cutoff=0.5)
    hint = f"; nearest tokens: {', '.join(repr(t) for t in near)}" if near else ""
    raise ValueError(
        f"target {text!r}: {unknown[0]!r} is not in the tokenizer's vocabulary (it becomes "
        f"{tokenizer.unk_token!r}, so the attribution would explain that instead){hint}"
    )
