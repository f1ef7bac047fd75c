"""Targets: what scalar(s) of a model's output an attribution explains.

A target becomes one or more ``Variant``s (model inputs plus an objective reading ``[k, targets]``
values from the output of a batch of ``k`` perturbed copies) with a weight each; the explained
function is ``Σ weight · objective``. Contrasts of two answers run two variants (+1, −1).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Plan", "Variant", "plan_target"]

Objective = Callable[[Any], torch.Tensor]


@dataclass
class Variant:
    """One model input with the objective read from its output.

    Attributes:
        inputs: batch-1 model inputs.
        weight: ``+1`` or ``-1`` (contrasts).
        objective: model output of ``k`` copies → ``[k, targets]``.
        kwargs: extra forward arguments (``logits_to_keep``, ``use_cache``).
        fast: ``batch → [k, targets]`` computing the objective without the full vocabulary projection;
            used once ``Problem`` has checked it against ``objective``.
    """

    inputs: dict[str, Any]
    weight: float
    objective: Objective
    kwargs: dict[str, Any] = field(default_factory=dict)
    fast: Callable[[dict[str, Any]], torch.Tensor] | None = None
    """Same values from the base model and only the needed rows of the output layer (or ``None``)."""


@dataclass
class Plan:
    """A resolved target.

    Attributes:
        kind: ``"lm"`` (next-token logits), ``"classifier"`` or ``"dual"`` (CLIP/SigLIP similarity).
        variants: the inputs and objectives.
        labels: description of each target row.
        description: description of the whole target.
        shared: leading positions of the text sequence shared by all variants (attributed positions).
        generated_from: first position of an appended answer (``None``: nothing appended).
        text_rows: per target row, the text-sequence positions whose outputs the target reads
            (rows of attention-based methods).
        attribute_text: whether text embeddings are attributed (``False`` for two different captions).
    """

    kind: str
    variants: list[Variant]
    labels: list[str]
    description: str
    shared: int
    generated_from: int | None = None
    text_rows: list[list[int]] = field(default_factory=list)
    attribute_text: bool = True


def model_kind(model: Any) -> str:
    """The kind of model a target is read from.

    ``"dual"`` for two-tower similarity models, ``"lm"`` for language-model heads, ``"embedding"`` for
    bare models (no head: ``BertModel``, sentence-embedding models), else ``"classifier"``.
    """
    name = type(model).__name__
    if hasattr(model, "logit_scale") and hasattr(model, "get_text_features"):
        return "dual"
    if name.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")):
        return "lm"
    if getattr(model, "base_model", None) is model:
        return "embedding"
    return "classifier"


def _accepts(model: Any, name: str) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def _token_text(tokenizer: Any, token_id: int) -> str:
    if tokenizer is None:
        return f"#{token_id}"
    return repr(tokenizer.decode([token_id], clean_up_tokenization_spaces=False))


def _extend(inputs: dict[str, Any], ids: list[int], model: Any) -> dict[str, Any]:
    """Appends answer ids to ``input_ids`` and every ``[1, length]`` companion (masks, type ids)."""
    n = inputs["input_ids"].shape[1]
    extra = torch.tensor([ids], dtype=inputs["input_ids"].dtype)
    out = dict(inputs)
    for key, value in inputs.items():
        if not isinstance(value, torch.Tensor) or value.ndim != 2 or value.shape != (1, n):
            continue
        if key == "input_ids":
            out[key] = torch.cat([value, extra.to(value.device)], 1)
            continue
        fill = 1 if key == "attention_mask" else 0
        if key == "token_type_ids" and getattr(model.config, "model_type", "") == "paligemma":
            fill = 1  # the suffix (causal part) of PaliGemma's prefix-LM
        out[key] = torch.cat([value, torch.full((1, len(ids)), fill, dtype=value.dtype, device=value.device)], 1)
    return out


def plan_target(model: Any, inputs: dict[str, Any], tokenizer: Any, target: Any, per_token: bool) -> Plan:
    """Resolves a target spec into variants (see ``mmviz.attribute`` for the specs)."""
    from mmviz.attribution import _custom_targets as custom

    kind = model_kind(model)
    if custom.is_function_target(target):
        return custom.plan_function(model, inputs, target, kind)
    if kind == "embedding" or custom.is_similarity(target):
        return custom.plan_similarity(model, inputs, tokenizer, target, kind)
    if kind == "dual":
        return _plan_dual(model, inputs, tokenizer, target)
    if kind == "classifier":
        return _plan_classifier(model, inputs, target)
    return _plan_lm(model, inputs, tokenizer, target, per_token)


# -- language models (text LMs and VLMs) -------------------------------------------------------------
def _lm_kwargs(model: Any, keep: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep
    if _accepts(model, "use_cache"):
        kwargs["use_cache"] = False
    return kwargs


def _logits(out: Any) -> torch.Tensor:
    logits = getattr(out, "logits", None)
    if logits is None or logits.ndim != 3:
        raise ValueError(
            "the model returned no [batch, positions, vocab] logits; give a model with a language-model head"
        )
    return logits


def _next_token(model: Any, inputs: dict[str, Any]) -> int:
    with torch.no_grad():
        out = model(**inputs, **_lm_kwargs(model, 1))
    return int(_logits(out)[0, -1].argmax())


def _answer_variant(model: Any, inputs: dict[str, Any], ids: list[int], per_token: bool, weight: float) -> Variant:
    full = _extend(inputs, ids, model)
    keep = len(ids) + 1
    target_ids = torch.tensor(ids)

    def objective(out: Any) -> torch.Tensor:
        logits = _logits(out)[:, -keep:-1].float()  # rows predicting the answer tokens
        logp = logits.log_softmax(-1)
        picked = logp.gather(-1, target_ids.to(logp.device)[None, :, None].expand(logp.shape[0], -1, 1))[..., 0]
        return picked if per_token else picked.sum(-1, keepdim=True)

    return Variant(full, weight, objective, _lm_kwargs(model, keep))


def _logit_variant(model: Any, inputs: dict[str, Any], token_ids: list[int], weights: list[float]) -> Variant:
    ids = torch.tensor(token_ids)
    w = torch.tensor(weights)

    def objective(out: Any) -> torch.Tensor:
        last = _logits(out)[:, -1].float()
        return (last[:, ids.to(last.device)] * w.to(last.device)).sum(-1, keepdim=True)

    return Variant(dict(inputs), 1.0, objective, _lm_kwargs(model, 1), _fast_logits(model, token_ids, weights))


def _fast_logits(
    model: Any, token_ids: list[int], weights: list[float]
) -> Callable[[dict[str, Any]], torch.Tensor] | None:
    """Logits of a few ids at the last position from the base model's last hidden state.

    A causal LM computes all vocabulary logits (50k+ rows) for every copy of the input, forward and
    backward; a logit target needs only its rows of the output layer.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    base = getattr(model, "base_model", None)
    if not isinstance(head, torch.nn.Linear) or base is None or base is model:
        return None
    rows = torch.tensor(token_ids)
    w = torch.tensor(weights)
    use_cache = {"use_cache": False} if _accepts(base, "use_cache") else {}

    def run(batch: dict[str, Any]) -> torch.Tensor:
        hidden = base(**batch, **use_cache).last_hidden_state[:, -1]
        idx = rows.to(hidden.device)
        logits = hidden @ head.weight[idx].T
        if head.bias is not None:
            logits = logits + head.bias[idx]
        return (logits.float() * w.to(hidden.device)).sum(-1, keepdim=True)

    return run


def _answer_ids(tokenizer: Any, text: str) -> list[int]:
    if tokenizer is None:
        raise ValueError("a string target needs the tokenizer: pass processor= (a processor or a tokenizer)")
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise ValueError(f"the answer {text!r} tokenizes to no tokens")
    return [int(i) for i in ids]


def _plan_lm(model: Any, inputs: dict[str, Any], tokenizer: Any, target: Any, per_token: bool) -> Plan:
    if "input_ids" not in inputs:
        raise ValueError("a language model needs input_ids among the inputs")
    n = int(inputs["input_ids"].shape[1])
    if target is None:
        target = _next_token(model, inputs)
    if isinstance(target, tuple):
        if len(target) != 2:
            raise ValueError("a contrast target is a pair: target=('red', 'blue') explains f('red') − f('blue')")
        if per_token:
            raise ValueError("per_token=True needs a single answer, not a contrast")
        a, b = target
        if isinstance(a, int) and isinstance(b, int):
            labels = [f"logit {_token_text(tokenizer, a)} − logit {_token_text(tokenizer, b)}"]
            variant = _logit_variant(model, inputs, [a, b], [1.0, -1.0])
            return Plan("lm", [variant], labels, labels[0], n, text_rows=[[n - 1]])
        ids_a = [a] if isinstance(a, int) else _answer_ids(tokenizer, str(a))
        ids_b = [b] if isinstance(b, int) else _answer_ids(tokenizer, str(b))
        variants = [
            _answer_variant(model, inputs, ids_a, False, 1.0),
            _answer_variant(model, inputs, ids_b, False, -1.0),
        ]
        label = f"log p({a!r}) − log p({b!r})"
        return Plan("lm", variants, [label], label, n, text_rows=[[n - 1]])
    if isinstance(target, int):
        label = f"logit {_token_text(tokenizer, target)} (id {target})"
        return Plan("lm", [_logit_variant(model, inputs, [target], [1.0])], [label], label, n, text_rows=[[n - 1]])
    if isinstance(target, str):
        ids = _answer_ids(tokenizer, target)
        variant = _answer_variant(model, inputs, ids, per_token, 1.0)
        total = n + len(ids)
        rows = [[n - 1 + i] for i in range(len(ids))]
        if per_token:
            labels = [f"log p({_token_text(tokenizer, t)})" for t in ids]
        else:
            labels = [f"log p({target!r})"]
            rows = [[r[0] for r in rows]]
        return Plan("lm", [variant], labels, f"answer {target!r}", total, generated_from=n, text_rows=rows)
    raise TypeError(f"unsupported target {target!r}: give an int token id, a string answer, a pair, or None")


# -- classifiers -------------------------------------------------------------------------------------
def _plan_classifier(model: Any, inputs: dict[str, Any], target: Any) -> Plan:
    id2label = getattr(model.config, "id2label", None) or {}
    label2id = {str(v): int(k) for k, v in id2label.items()}

    def class_id(t: Any) -> int:
        if isinstance(t, str):
            if t not in label2id:
                raise ValueError(f"unknown label {t!r}; the model's labels are {sorted(label2id)}")
            return label2id[t]
        return int(t)

    if target is None:
        with torch.no_grad():
            out = model(**inputs)
        target = int(_class_logits(out)[0].argmax())
    pair = isinstance(target, tuple)
    if pair and len(target) != 2:
        raise ValueError("a contrast target is a pair of classes")
    ids = [class_id(t) for t in target] if pair else [class_id(target)]
    weights = [1.0, -1.0] if pair else [1.0]
    idx, w = torch.tensor(ids), torch.tensor(weights)

    def objective(out: Any) -> torch.Tensor:
        logits = _class_logits(out).float()
        return (logits[:, idx.to(logits.device)] * w.to(logits.device)).sum(-1, keepdim=True)

    names = [str(id2label.get(i, id2label.get(str(i), i))) for i in ids]
    label = f"logit {names[0]!r}" + (f" − logit {names[1]!r}" if pair else "")
    n = int(inputs["input_ids"].shape[1]) if "input_ids" in inputs else 0
    return Plan("classifier", [Variant(dict(inputs), 1.0, objective)], [label], label, n, text_rows=[[0]])


def _class_logits(out: Any) -> torch.Tensor:
    logits = getattr(out, "logits", None)
    if logits is None or logits.ndim != 2:
        raise ValueError(
            "the model returned no [batch, classes] logits: give a classifier (…ForSequenceClassification, "
            "…ForImageClassification), a language model, or a CLIP/SigLIP model; or explain an embedding with "
            "target=mmviz.similarity_to('a reference text'), or any scalar with a function "
            "target=lambda outputs: ... returning one value per batch row"
        )
    return logits


# -- CLIP / SigLIP -----------------------------------------------------------------------------------
def _caption_inputs(model: Any, inputs: dict[str, Any], tokenizer: Any, caption: Any) -> dict[str, Any]:
    out = dict(inputs)
    if isinstance(caption, int):
        if "input_ids" not in inputs:
            raise ValueError("give the captions as input_ids (processor(text=..., images=...)) or target=<caption>")
        for key in ("input_ids", "attention_mask", "position_ids"):
            if key in inputs:
                out[key] = inputs[key][caption : caption + 1]
        return out
    if tokenizer is None:
        raise ValueError("a caption target needs the tokenizer: pass processor=")
    kwargs: dict[str, Any] = {"return_tensors": "pt"}
    if getattr(model.config, "model_type", "").startswith("siglip"):
        length = inputs["input_ids"].shape[1] if "input_ids" in inputs else 64
        kwargs.update(padding="max_length", max_length=length, truncation=True)
    enc = tokenizer(str(caption), **kwargs)
    out["input_ids"] = enc["input_ids"]
    if "attention_mask" in inputs or getattr(model.config, "model_type", "") == "clip":
        out["attention_mask"] = enc["attention_mask"]
    return out


def _dual_objective(out: Any) -> torch.Tensor:
    return out.logits_per_image.float().diagonal()[:, None]


TEXT_KEYS = ("input_ids", "attention_mask", "position_ids")
"""Inputs of a two-tower model's text tower."""


def _fast_dual(model: Any) -> Callable[[dict[str, Any]], torch.Tensor]:
    """Each image's similarity to its caption, without the ``k × k`` logits.

    The text inputs may hold one row for all ``k`` images (the caption is not attributed: its tower runs
    once) or ``k`` rows (one per image).
    """

    def pooled(out: Any) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def fast(batch: dict[str, Any]) -> torch.Tensor:
        image = pooled(model.get_image_features(pixel_values=batch["pixel_values"]))
        text = pooled(model.get_text_features(**{key: batch[key] for key in TEXT_KEYS if key in batch}))
        image = image / image.norm(dim=-1, keepdim=True)
        text = text / text.norm(dim=-1, keepdim=True)
        similarity = (image * text.to(image.device)).sum(-1) * model.logit_scale.exp()
        bias = getattr(model, "logit_bias", None)
        if bias is not None:  # SigLIP
            similarity = similarity + bias
        return similarity.float()[:, None]

    return fast


def _text_row(model: Any, ids: torch.Tensor) -> int:
    """The text position a CLIP/SigLIP text tower pools (EOS for CLIP, the last position for SigLIP)."""
    text_config = getattr(model.config, "text_config", model.config)
    if getattr(model.config, "model_type", "") == "clip":
        eos = getattr(text_config, "eos_token_id", None)
        hits = (ids[0] == eos).nonzero() if eos is not None and eos != 2 else None
        if hits is not None and len(hits):
            return int(hits[0])
        return int(ids[0].argmax())
    return int(ids.shape[1] - 1)


def _plan_dual(model: Any, inputs: dict[str, Any], tokenizer: Any, target: Any) -> Plan:
    if "pixel_values" not in inputs:
        raise ValueError("a CLIP/SigLIP attribution needs pixel_values (and a caption as input_ids or target=)")
    pair = isinstance(target, tuple)
    captions = list(target) if pair else [0 if target is None else target]
    variants = [
        Variant(_caption_inputs(model, inputs, tokenizer, c), w, _dual_objective, fast=_fast_dual(model))
        for c, w in zip(captions, [1.0, -1.0])
    ]
    names = [f"caption {c}" if isinstance(c, int) else repr(c) for c in captions]
    label = f"similarity({names[0]})" + (f" − similarity({names[1]})" if pair else "")
    first = variants[0].inputs["input_ids"]
    same_text = all(torch.equal(v.inputs["input_ids"], first) for v in variants)
    n = int(first.shape[1]) if same_text else 0
    return Plan("dual", variants, [label], label, n, text_rows=[[_text_row(model, first)]], attribute_text=same_text)
