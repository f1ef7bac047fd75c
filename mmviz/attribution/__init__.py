"""Token and patch attributions: gradients, integrated gradients, rollout, relevance and occlusion.

``mmviz.attribute(model, inputs, method=..., target=...)`` explains one example's target (a logit, an
answer's log-probability, a CLIP/SigLIP similarity or a contrast of two) by scoring every input position:
text tokens through their input embeddings, image tokens and pixels through ``pixel_values``. The result
is an ``Attribution`` (numpy only) whose token table is the one
``mmviz.capture`` builds, so attributions link to attention traces by position and by
``(image, row, col)``.

One method per file: ``.saliency``, ``.input_x_gradient``, ``.integrated_gradients``,
``.attention_rollout``, ``.relevance``, ``.occlusion``. Every method leaves the model as it
found it (hooks removed, attention implementation, train/eval mode and ``requires_grad`` flags
restored), also when it raises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mmviz.attribution.targets import SimilarityTarget, similarity_to

__all__ = [
    "DEFAULT_BASELINES",
    "DEFAULT_METHODS",
    "DEFAULT_VLM_SOURCES",
    "METHODS",
    "SimilarityTarget",
    "attribute",
    "explained",
    "similarity_to",
]

METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "attention_rollout", "relevance", "occlusion")
"""The method names ``attribute`` accepts."""

DEFAULT_METHODS = {
    "dual": "relevance",
    "vlm": "integrated_gradients",
    "lm": "integrated_gradients",
    "classifier": "integrated_gradients",
    "embedding": "integrated_gradients",
}
"""``method=None`` by kind of model: two-tower similarity models (``"dual"``: CLIP, SigLIP), language models
given an image (``"vlm"``), language models (``"lm"``), classifiers, bare encoders (``"embedding"``). Chosen by
``mmviz.evaluate`` on the teaching models (``docs/faithfulness.md``), the model-randomisation check included:
the teaching CLIP's phrase relevance points at the named object and passes it, while integrated gradients from
zero embeddings and zero pixels points at chance; for the teaching VLM, integrated gradients over the image
tokens its language model reads, from zero vectors (``DEFAULT_VLM_SOURCES``), points at the named object more
often than relevance or attention and passes it, while over the prompt and the pixels from zeros it points
below chance."""

DEFAULT_VLM_SOURCES = ("image_embeddings",)
"""``sources`` of a VLM's call with neither ``method=`` nor ``sources=``: the image tokens as the language model
reads them. The prompt's words score 0 (explain them with ``sources=["text"]``): on the teaching VLM, one path
through the words and the image tokens together pointed less often at the named object and failed the sanity
check over the words."""

VLM_FALLBACK_METHOD = "relevance"
"""``method=None`` for a VLM whose image tokens cannot be attributed as its language model reads them (no
``language_model`` called with ``inputs_embeds``, or no image placeholder id): relevance, which passes the sanity
check on the teaching VLM."""

DEFAULT_BASELINES = {"lm": "pad", "vlm": "pad"}
"""Integrated gradients' ``baseline=None`` by kind of model (other kinds and methods: ``"zeros"``).

``"pad"`` (pad-token embeddings) falls back to ``"zeros"`` when the tokenizer and the config name no pad token.
On the teaching VLM's question tokens, integrated gradients from zero embeddings fails the model-randomisation
check (a random model's map ranks the tokens alike) and points less often at the words that decide the answer;
from pad embeddings it passes (``docs/faithfulness.md``)."""


def _default_method(model: Any, inputs: Any, kind: str, sources: Any) -> tuple[str, Any]:
    """``method=None``: the kind's method; a VLM's image tokens as its language model reads them where it can."""
    method = DEFAULT_METHODS.get(kind, "integrated_gradients")
    if kind == "vlm" and sources is None:
        from mmviz.attribution._image_embeddings import supported

        if supported(model, inputs):
            return method, DEFAULT_VLM_SOURCES
        return VLM_FALLBACK_METHOD, sources
    return method, sources


def _kind(model: Any, inputs: Any) -> str:
    """The kind ``DEFAULT_METHODS`` and ``DEFAULT_BASELINES`` are keyed by.

    ``model_kind``, with a language model given ``pixel_values`` counted as ``"vlm"``.
    """
    from mmviz.attribution._targets import model_kind

    kind = model_kind(model)
    pixels = inputs.get("pixel_values") if hasattr(inputs, "get") else None
    return "vlm" if kind == "lm" and pixels is not None else kind


def _method(name: str) -> Callable[..., dict[str, Any]]:
    import importlib

    if name not in METHODS:
        raise ValueError(f"unknown attribution method {name!r}; use one of {', '.join(METHODS)}")
    module = importlib.import_module(f"mmviz.attribution.{name}")
    fn: Callable[..., dict[str, Any]] = getattr(module, name)
    return fn


def attribute(
    model: Any,
    inputs: Any,
    *,
    method: str | None = None,
    target: Any = None,
    processor: Any = None,
    baseline: Any = None,
    steps: int = 50,
    batch_size: int = 8,
    progress: bool = True,
    per_token: bool = False,
    sources: Sequence[str] | None = None,
    rule: str = "gausslegendre",
) -> Any:
    """Scores every input position (and pixel) of one example for a target.

    Example::

        inputs = processor(images=image, text="USER: <image> What shape? ASSISTANT:", return_tensors="pt")
        attr = mmviz.attribute(model, inputs, processor=processor, method="integrated_gradients", target=" square")
        attr.scores            # [targets, positions]
        attr.pixels            # [targets, H, W]
        attr.show()

    Args:
        model: a transformers model: a causal LM or VLM (GPT-2, Llama, Qwen2, LLaVA, Qwen2-VL, PaliGemma,
            ...), a classifier (BERT, ViT, ...), a two-tower model (CLIP, SigLIP) or a bare encoder
            (``BertModel``, a sentence-embedding model).
        inputs: the processor's output for **one** example (a dict or ``BatchEncoding``).
        method: ``"saliency"``, ``"input_x_gradient"``, ``"integrated_gradients"``,
            ``"attention_rollout"``, ``"relevance"`` or ``"occlusion"``. Default (``None``): the method
            that passes ``mmviz.evaluate``'s checks (the model-randomisation sanity check included) on the
            teaching models for this kind of model (``DEFAULT_METHODS``): ``"relevance"`` for two-tower models
            (CLIP, SigLIP) and for VLMs given an image, whose integrated gradients from zero inputs point at
            chance; ``"integrated_gradients"`` for language models, classifiers and encoders.
        target: what to explain.

            * ``None``: the model's own prediction (next token, top class, the first caption).
            * ``int``: a token id's logit at the last position (language models) or a class logit.
            * ``str``: an answer appended to the prompt, explained by the sum of its tokens' log-probs
              (``per_token=True``: one row per answer token, a ``[generated, source]`` matrix); a label
              name for classifiers; a caption whose similarity to the image is explained for CLIP/SigLIP.
            * ``(a, b)``: a contrast, ``f(a) − f(b)`` (e.g. ``("red", "blue")``).
            * ``mmviz.similarity_to(reference)``: the similarity of the input's pooled embedding to a
              reference text or embedding (bare encoders and sentence-embedding models; there a plain
              text or embedding means the same).
            * a function ``f(outputs) → [batch]``: any differentiable scalar of the model's outputs, one
              per row of the batch (the methods run several copies of the input at once).
        processor: the processor or tokenizer (token texts, answers, captions, image layout).
        baseline: integrated gradients' and occlusion's reference: ``"zeros"``, ``"pad"`` (pad-token
            embeddings, zero pixels), a tensor shaped like the embeddings ``[1, tokens, dim]`` or the
            pixels, or ``{"text": ..., "image": ..., "image_embeddings": ...}``. Default (``None``): for
            integrated gradients on language models and VLMs ``"pad"`` where a pad token exists
            (``DEFAULT_BASELINES``), else ``"zeros"``.
        steps: integrated gradients' points on the path.
        batch_size: path points (or occluded copies) per forward pass; bounds memory.
        progress: ``tqdm.auto`` progress bar for the multi-pass methods.
        per_token: one score row per answer token.
        sources: attribute ``"text"`` and/or ``"image"`` (default: both when present); the other input is
            held as given. A VLM attributed over ``["image"]`` keeps the prompt's positions (text scores 0).
            ``"image_embeddings"`` (VLMs): the image tokens the language model reads (the projector's outputs
            in its ``inputs_embeds``) instead of the pixels, one score per image token; with integrated
            gradients the path runs from the image tokens of ``baseline={"image": pixel_values}`` (e.g. a
            blank image; or ``{"image_embeddings": tensor}``, default zero vectors), and completeness holds
            over them. Cannot be combined with ``"image"``.
        rule: integrated gradients' integration rule (``"gausslegendre"``, ``"riemann_trapezoid"``, ...).

    Returns:
        An ``Attribution``.

    Raises:
        ValueError: an unknown method or target, a token id out of range, an answer with a word the
            tokenizer does not know (the message lists the nearest tokens), ``steps``/``batch_size`` that
            are not whole numbers ≥ 1, a batch of several examples, nothing to attribute, a bare model
            without a target, or a target function whose value is not ``[batch]``.
        TypeError: ``inputs`` is not the processor's output (a dict of tensors).
    """
    import torch

    from mmviz.attribution._checks import check_count, check_inputs
    from mmviz.attribution._problem import Problem, prepared
    from mmviz.data import Attribution

    inputs = check_inputs(inputs)
    kind = _kind(model, inputs)
    if method is None:
        method, sources = _default_method(model, inputs, kind, sources)
    fn = _method(method)
    steps = check_count(steps, "steps", "integrated gradients' points on the path, e.g. steps=50")
    batch_size = check_count(batch_size, "batch_size", "inputs per forward pass, e.g. batch_size=8")
    with prepared(model), torch.no_grad():
        problem = Problem(
            model, inputs, processor, target, per_token=per_token, sources=None if sources is None else tuple(sources)
        )
        if baseline is None:
            baseline = DEFAULT_BASELINES.get(kind, "zeros") if method == "integrated_gradients" else "zeros"
            if baseline == "pad" and (problem.x_embed is None or problem.pad_token_id() is None):
                baseline = "zeros"
        result = fn(problem, baseline=baseline, steps=steps, batch_size=batch_size, progress=progress, rule=rule)
    info = {"model": type(model).__name__, "model_type": getattr(model.config, "model_type", "")}
    info.update(result.get("info", {}))
    info["call"] = _call_record(method, target, baseline, steps, per_token, sources, rule)
    return Attribution(
        scores=result["scores"],
        tokens=problem.table,
        method=method,
        targets=tuple(problem.plan.labels),
        target=problem.plan.description,
        pixel_maps=result.get("pixel_maps", ()),
        delta=result.get("delta"),
        info=info,
    )


def _call_record(
    method: str, target: Any, baseline: Any, steps: int, per_token: bool, sources: Any, rule: str
) -> dict[str, Any]:
    """The arguments of an ``attribute`` call as JSON, so that the map can be recomputed (``mmviz.evaluate``).

    A target or baseline that JSON cannot hold (a tensor, a callable) is recorded as ``None`` under
    ``"target"``/``"baseline"`` with ``"<kind>_given": True``: recomputing then needs it passed again.
    """

    def plain(value: Any) -> Any:
        if value is None or isinstance(value, (str, int, float, bool)):
            return value
        if isinstance(value, (tuple, list)) and all(isinstance(v, (str, int, float)) for v in value):
            return list(value)
        return None

    record: dict[str, Any] = {"method": method, "steps": steps, "per_token": per_token, "rule": rule}
    record["sources"] = None if sources is None else list(sources)
    for name, value in (("target", target), ("baseline", baseline)):
        record[name] = plain(value)
        if value is not None and record[name] is None:
            record[f"{name}_given"] = True
    return record


def __getattr__(name: str) -> Any:
    if name == "explained":  # torch is imported by the module: only when asked for
        from mmviz.attribution.perturbed import explained

        return explained
    raise AttributeError(f"module 'mmviz.attribution' has no attribute {name!r}")
