"""Targets for every kind of model: a function of the outputs, and an embedding's similarity to a reference.

* A callable ``f(outputs) → [batch]`` is explained as it is, on any model.
* ``SimilarityTarget`` (``mmviz.similarity_to``) pools the last hidden state ``[batch, positions, dim]``
  into ``[batch, dim]`` and compares it with a fixed reference embedding; on a bare model (no head) a
  text, an embedding or a pair of them is read as one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from mmviz.attribution._targets import Plan, Variant, _accepts, _text_row
from mmviz.attribution.targets import SimilarityTarget, similarity_to

__all__ = ["is_function_target", "is_similarity", "plan_function", "plan_similarity", "pool"]


def is_function_target(target: Any) -> bool:
    """Whether ``target`` is a user's function of the outputs (not a spec object mmviz resolves)."""
    return callable(target) and not isinstance(target, (SimilarityTarget, type))


def _forward_kwargs(model: Any, hidden_states: bool = False) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if _accepts(model, "use_cache"):
        kwargs["use_cache"] = False
    if hidden_states:
        kwargs["output_hidden_states"] = True
    return kwargs


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    values = out.values() if isinstance(out, Mapping) else out if isinstance(out, (tuple, list)) else ()
    return [v for v in values if isinstance(v, torch.Tensor)]


def _default_rows(kind: str, model: Any, inputs: dict[str, Any]) -> list[int]:
    """The text positions a target of this kind of model reads (rows of relevance and rollout)."""
    ids = inputs.get("input_ids")
    n = int(ids.shape[1]) if isinstance(ids, torch.Tensor) else 0
    if kind == "lm":
        return [n - 1]
    if kind == "dual" and isinstance(ids, torch.Tensor):
        return [_text_row(model, ids)]
    if kind == "embedding":
        return _kept(inputs, n)
    return [0]


def _kept(inputs: dict[str, Any], n: int) -> list[int]:
    mask = inputs.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.ndim != 2:
        return list(range(n))
    return [int(i) for i in mask[0].nonzero()[:, 0]]


def is_similarity(target: Any) -> bool:
    """Whether ``target`` is a ``SimilarityTarget`` or a pair holding one."""
    if isinstance(target, tuple):
        return any(isinstance(t, SimilarityTarget) for t in target)
    return isinstance(target, SimilarityTarget)


# -- a function of the outputs -----------------------------------------------------------------------
def plan_function(model: Any, inputs: dict[str, Any], fn: Callable[[Any], Any], kind: str) -> Plan:
    """A target computed by ``fn(outputs) → [batch]`` on the model's outputs of ``batch`` copies."""
    name = getattr(fn, "__name__", type(fn).__name__)
    label = "custom target" if name == "<lambda>" else f"{name}(outputs)"

    def objective(out: Any) -> torch.Tensor:
        return _checked(fn(out), out, name)[:, None]

    ids = inputs.get("input_ids")
    n = int(ids.shape[1]) if isinstance(ids, torch.Tensor) else 0
    one_text = not isinstance(ids, torch.Tensor) or ids.shape[0] == 1
    variant = Variant(dict(inputs), 1.0, objective, _forward_kwargs(model))
    rows = _default_rows(kind, model, inputs)
    return Plan(kind, [variant], [label], label, n, text_rows=[rows], attribute_text=one_text)


def _checked(value: Any, out: Any, name: str) -> torch.Tensor:
    tensors = _tensors(out)
    batch = int(tensors[0].shape[0]) if tensors and tensors[0].ndim else None
    what = f"the target function {name!r}"
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{what} returned {type(value).__name__}; it must return a torch tensor [batch], one value per row "
            "of the outputs (keep it a torch expression: no .item(), no numpy)"
        )
    if not value.is_floating_point():
        raise TypeError(f"{what} returned a {value.dtype} tensor; it must return floating-point values")
    if value.ndim != 1 or (batch is not None and value.shape[0] != batch):
        expected = f"[{batch}]" if batch is not None else "[batch]"
        raise ValueError(
            f"{what} returned shape {list(value.shape)}; it must return {expected}: one scalar per row of the "
            "outputs (the attribution runs several copies of the input in one batch), e.g. "
            "outputs.logits[:, -1, a] - outputs.logits[:, -1, b]"
        )
    if torch.is_grad_enabled() and not value.requires_grad and any(t.requires_grad for t in tensors):
        raise ValueError(
            f"{what} returned a value detached from the outputs (.detach(), .item(), numpy or a new tensor); "
            "gradient methods need a torch expression of the outputs"
        )
    return value.float()


# -- similarity of a pooled embedding ----------------------------------------------------------------
def no_head_message(model: Any) -> str:
    """The error for a bare model asked for its prediction (it has none)."""
    return (
        f"{type(model).__name__} is a bare model with no head: it returns hidden states, not logits, so there is "
        "no prediction to explain. Explain the similarity of its pooled embedding to a reference with "
        "target=mmviz.similarity_to('a reference sentence') (or an embedding; plain target='a reference sentence' "
        "is short for it), or pass a function target=lambda outputs: ... returning one scalar per batch row"
    )


def _as_similarity(model: Any, target: Any, kind: str) -> SimilarityTarget:
    if isinstance(target, SimilarityTarget):
        return target
    if kind == "embedding" and not isinstance(target, (int, float, bool)) and target is not None:
        return similarity_to(target)
    if kind == "embedding":
        raise TypeError(f"unsupported target {target!r} for a bare model. {no_head_message(model)}")
    raise TypeError(
        f"unsupported target {target!r} in a similarity contrast: pair two mmviz.similarity_to(...) targets"
    )


def _hidden(out: Any) -> torch.Tensor:
    hidden = getattr(out, "last_hidden_state", None)
    if hidden is None:
        states = getattr(out, "hidden_states", None)
        hidden = states[-1] if states else None
    if not isinstance(hidden, torch.Tensor) or hidden.ndim != 3:
        raise ValueError(
            "the model returned no last hidden state [batch, positions, dim] to pool; give a transformers model, "
            "or a function target=lambda outputs: ... that computes the scalar itself"
        )
    return hidden


def pool(out: Any, pooling: str, mask: torch.Tensor | None) -> torch.Tensor:
    """One embedding per batch row.

    Args:
        out: model output with ``last_hidden_state`` (or ``hidden_states``) ``[batch, positions, dim]``.
        pooling: ``"mean"``, ``"cls"``, ``"pooler"`` or ``"last"``.
        mask: ``[1 or batch, positions]`` attention mask (``None``: every position counts).

    Returns:
        ``[batch, dim]`` float32 embeddings.
    """
    if pooling == "pooler":
        pooled = getattr(out, "pooler_output", None)
        if not isinstance(pooled, torch.Tensor):
            raise ValueError("this model has no pooler (its output has no pooler_output): use pooling='mean' or 'cls'")
        return pooled.float()
    hidden = _hidden(out).float()
    if pooling == "cls":
        return hidden[:, 0]
    keep = torch.ones(hidden.shape[:2], device=hidden.device) if mask is None else mask.to(hidden.device).float()
    if pooling == "last":
        last = keep.shape[1] - 1 - keep.flip(1).argmax(1)
        return hidden[torch.arange(hidden.shape[0]), last.expand(hidden.shape[0])]
    keep = keep[..., None]
    return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1e-9)


def _similarity(pooled: torch.Tensor, reference: torch.Tensor, metric: str) -> torch.Tensor:
    if pooled.shape[-1] != reference.shape[-1]:
        raise ValueError(
            f"the reference embedding has {reference.shape[-1]} values but the model's pooled embedding has "
            f"{pooled.shape[-1]}; give an embedding from this model (or the reference text)"
        )
    reference = reference.to(pooled.device)
    if metric == "cosine":
        return torch.nn.functional.cosine_similarity(pooled, reference[None], dim=-1)
    return (pooled * reference).sum(-1)


def _reference_embedding(
    model: Any, spec: SimilarityTarget, tokenizer: Any, device: torch.device, kwargs: dict[str, Any]
) -> torch.Tensor:
    """``[dim]`` float32 embedding of the reference (a text or inputs run through the model, no gradient)."""
    ref = spec.reference
    if isinstance(ref, (str, Mapping)):
        if isinstance(ref, str):
            if tokenizer is None:
                raise ValueError("a reference text needs the tokenizer: pass processor= (a tokenizer or processor)")
            ref = tokenizer(ref, return_tensors="pt")
        enc = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in dict(ref).items()}
        try:
            with torch.no_grad():
                out = model(**enc, **kwargs)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(
                f"the model could not embed the reference on its own ({exc}); give the reference as an embedding"
            ) from exc
        embedding = pool(out, spec.pooling, enc.get("attention_mask"))
        if embedding.shape[0] != 1:
            raise ValueError(f"the reference inputs hold {embedding.shape[0]} examples; give one")
        return embedding[0].detach()
    embedding = torch.as_tensor(ref.detach().cpu() if isinstance(ref, torch.Tensor) else ref, dtype=torch.float32)
    if embedding.ndim == 2 and embedding.shape[0] == 1:
        embedding = embedding[0]
    if embedding.ndim != 1:
        raise ValueError(f"a reference embedding is [dim] (or [1, dim]), not {list(embedding.shape)}")
    return embedding.to(device)


def plan_similarity(model: Any, inputs: dict[str, Any], tokenizer: Any, target: Any, kind: str) -> Plan:
    """Similarity of the input's pooled embedding to one reference, or a contrast of two."""
    if kind == "dual":
        raise ValueError(
            "CLIP and SigLIP explain their own image–text similarity: give the caption as target='...' "
            "(or a function target=lambda outputs: ...)"
        )
    if target is None:
        raise ValueError(no_head_message(model))
    pair = isinstance(target, tuple)
    if pair and len(target) != 2:
        raise ValueError("a contrast target is a pair: target=(a, b) explains similarity(a) − similarity(b)")
    specs = [_as_similarity(model, t, kind) for t in (target if pair else (target,))]
    kwargs = _forward_kwargs(model, hidden_states=kind != "embedding")
    device = next((v.device for v in inputs.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
    references = [_reference_embedding(model, s, tokenizer, device, kwargs) for s in specs]
    mask = inputs.get("attention_mask")
    mask = mask if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None
    weights = [1.0, -1.0]

    def objective(out: Any) -> torch.Tensor:
        total: torch.Tensor | None = None
        for spec, reference, weight in zip(specs, references, weights):
            value = weight * _similarity(pool(out, spec.pooling, mask), reference, spec.metric)
            total = value if total is None else total + value
        assert total is not None
        return total[:, None]

    names = [f"{s.metric}({s.pooling}-pooled embedding, {s.describe()})" for s in specs]
    label = " − ".join(names)
    ids = inputs.get("input_ids")
    n = int(ids.shape[1]) if isinstance(ids, torch.Tensor) else 0
    rows = _rows(specs[0].pooling, inputs, n)
    return Plan(kind, [Variant(dict(inputs), 1.0, objective, kwargs)], [label], label, n, text_rows=[rows])


def _rows(pooling: str, inputs: dict[str, Any], n: int) -> list[int]:
    kept = _kept(inputs, n)
    if pooling == "mean":
        return kept
    if pooling == "last":
        return kept[-1:]
    return [0]
