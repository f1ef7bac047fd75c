"""Capture attention while models run: transformers models (text, vision, VLMs) and diffusers pipelines.

``with mmviz.capture(model, processor=processor) as cap:`` switches the model to a recording attention
implementation registered in transformers' AttentionInterface (attention modules that compute attention
themselves are switched to eager and their returned weights collected), and switches it back on exit,
also when the block raises. ``cap.attention`` is an ``AttentionTrace`` (numpy only).

``with mmviz.capture(pipe) as cap:`` around a diffusers pipeline (or its UNet / transformer) records the
cross-attention maps of every denoising step: ``cap.cross_attention`` is a
``CrossAttentionTrace``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, overload

from mmviz.capture._tables import RunTables, has_images, token_tables

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline
    from diffusers.models.modeling_utils import ModelMixin

    from mmviz.capture._diffusers import DiffusionCapture
    from mmviz.capture._session import Capture

__all__ = ["DEFAULT_QK_THRESHOLD", "RunTables", "capture", "has_images", "token_tables"]

DEFAULT_QK_THRESHOLD = 4096
"""``store="auto"`` keeps queries and keys instead of probabilities from this many keys on."""


@overload
def capture(
    model: DiffusionPipeline | ModelMixin,
    processor: Any = None,
    layers: Sequence[int | str] | None = None,
    heads: bool = False,
    **diffusion_options: Any,
) -> DiffusionCapture: ...


@overload
def capture(
    model: Any,
    processor: Any = None,
    layers: Sequence[int] | dict[str, Sequence[int]] | None = None,
    heads: Sequence[int] | None = None,
    modules: Sequence[str] | None = None,
    store: str = "auto",
    qk_threshold: int = DEFAULT_QK_THRESHOLD,
    max_bytes: int | None = None,
) -> Capture: ...


def capture(
    model: Any,
    processor: Any = None,
    layers: Any = None,
    heads: Any = None,
    modules: Sequence[str] | None = None,
    store: str = "auto",
    qk_threshold: int = DEFAULT_QK_THRESHOLD,
    max_bytes: int | None = None,
    **diffusion_options: Any,
) -> Capture | DiffusionCapture:
    """Records attention of ``model`` while it runs inside a ``with`` block.

    Example::

        with mmviz.capture(model, processor=processor, layers=[5]) as cap:
            model(**inputs)                    # or model.generate(**inputs)
        cap.attention.probs(layers=[5])        # [layers, heads, query, key]

    Outputs are those of the uncaptured model; recorded probabilities are those of
    ``attn_implementation="eager"`` with ``output_attentions=True``. Layers that are not recorded run
    with the model's own implementation (sdpa by default).

    Args:
        model: a transformers ``PreTrainedModel`` (text, vision, vision-language, encoder-decoder).
        processor: its processor or tokenizer, for token texts and image layout (optional).
        layers: layer indices to record in every stack, or ``{"language_model": [...], ...}``; ``None``: all.
        heads: head indices to keep; ``None``: all.
        modules: stack names to record (e.g. ``["language_model"]``); ``None``: all.
        store: ``"dense"`` keeps float16 probabilities; ``"qk"`` keeps queries, keys and the mask and
            recomputes probabilities on demand (for long sequences); ``"auto"`` picks ``"qk"`` from
            ``qk_threshold`` keys on.
        qk_threshold: sequence length from which ``store="auto"`` keeps queries and keys.
        max_bytes: most bytes of dense probabilities the capture may hold (default: half the machine's
            memory, or ``$MMVIZ_MAX_CAPTURE_BYTES``); a run that would pass it raises ``BudgetError``
            before the model runs, naming ``store="qk"``, ``layers=`` and ``heads=``. For diffusers
            pipelines: the budget of the recorded maps (1 GiB by default).
        **diffusion_options: for diffusers pipelines only: ``tokens``, ``branch``, ``cfg``, ``max_bytes``,
            ``previews``, ``concepts`` (see below).

    Returns:
        A ``Capture``; after the block, ``cap.attention`` is the trace of the last forward or
        ``generate`` call, ``cap.traces`` holds one trace per call.

    Diffusers pipelines (SD 1.x/2.x, SDXL, PixArt, SD3, Flux) or their bare UNet / transformer::

        with mmviz.capture(pipe) as cap:
            image = pipe("a red circle left of a blue square", num_inference_steps=30).images[0]
        cap.cross_attention.heatmap("circle")  # [H, W] DAAM map; cap.cross_attention.show()

    record the image → prompt attention of every text-conditioned layer at every step; the output is the
    uncaptured one. Arguments for them: ``layers`` (indices, names or parts of names, e.g.
    ``["up_blocks"]``), ``heads`` (``True`` keeps every head; default: mean over heads), and keywords
    ``tokens="prompt"`` (drop padding; ``"all"`` keeps it), ``branch="cond"`` (or ``"uncond"``: the
    classifier-free-guidance branch recorded), ``cfg=None`` (auto-detect a doubled CFG batch),
    ``max_bytes`` (budget of recorded maps; ``BudgetError`` before the run otherwise),
    ``previews=False`` (``True`` also keeps the predicted image of every step, decoded with the VAE),
    ``concepts=None`` (SD3, Flux and PixArt: a list of 2–32 words, e.g. ``["cat", "sky", "background"]``,
    whose ConceptAttention maps are recorded beside the word maps: ``cap.cross_attention.concept_heatmap("cat")``;
    see ``mmviz.capture._concepts`` and the diffusion docs).

    Raises:
        CaptureError: the model hands back no attention at all (neither through transformers'
            AttentionInterface nor, for modules that compute attention themselves, as eager
            ``output_attentions=True`` weights), or ``layers=``/``heads=``/``modules=`` name layers,
            heads or stacks the model does not have (indices are the model's own, from 0; negative
            indices are refused).
        BudgetError: (when the model runs) dense probabilities past ``max_bytes``.
    """
    if not isinstance(model, type) and _is_diffusers(model):
        from mmviz.capture._diffusers import DiffusionCapture

        if processor is not None or modules is not None or store != "auto":
            raise TypeError("processor=, modules= and store= apply to transformers models, not to diffusers pipelines")
        if max_bytes is not None:
            diffusion_options["max_bytes"] = max_bytes
        return DiffusionCapture(model, layers=layers, heads=False if heads is None else heads, **diffusion_options)
    if "concepts" in diffusion_options:
        raise TypeError("concepts= is for diffusion transformer pipelines (SD3, Flux, PixArt), not transformers models")
    if diffusion_options:
        raise TypeError(f"unexpected arguments for a transformers capture: {sorted(diffusion_options)}")
    from mmviz.capture._session import Capture

    return Capture(
        model,
        processor,
        layers=layers,
        heads=heads,
        modules=modules,
        store=store,
        qk_threshold=qk_threshold,
        max_bytes=max_bytes,
    )


def _is_diffusers(obj: Any) -> bool:
    """A diffusers pipeline or model, recognised without importing diffusers."""
    return any(cls.__module__.split(".")[0] == "diffusers" for cls in type(obj).__mro__)
