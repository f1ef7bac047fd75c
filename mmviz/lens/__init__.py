"""The logit lens: what each layer's hidden state would predict if the model stopped there.

``mmviz.logit_lens(model, inputs, processor, tokens=[" red"])`` reads every layer's residual stream at every
position (text and image tokens) through the model's own final norm and output embedding, and returns a
``LensTrace`` (numpy only) with the top-k tokens, their probabilities, the entropy and the named tokens'
probabilities per ``[layer, position]``. For CLIP and SigLIP it is the *text lens* of the vision tower: each
layer's patch and pooled states through the tower's final norm and projection, scored against captions
(``texts=[...]``). Token tables come from ``mmviz.capture``, so lenses link to attention traces by position
and by ``(image, row, col)``. The model is left as it was found (hooks removed, train/eval mode restored).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["logit_lens"]


def _inputs(model: Any, inputs: Any) -> dict[str, Any]:
    import torch

    if isinstance(inputs, torch.Tensor):
        inputs = {"input_ids": inputs}
    if not isinstance(inputs, Mapping):
        raise TypeError(
            f"inputs must be the processor's or tokenizer's output (a dict of tensors), not {type(inputs).__name__}"
        )
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    out = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in dict(inputs).items()}
    out.pop("labels", None)
    return out


def logit_lens(
    model: Any,
    inputs: Any,
    processor: Any = None,
    *,
    tokens: Sequence[str | int] | None = None,
    texts: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    top_k: int = 10,
    generate: bool | dict[str, Any] | None = None,
    chunk: int | None = None,
    max_steps: int | None = None,
) -> Any:
    """Reads every layer's hidden state at every position through the model's own output layer.

    Example::

        inputs = processor(images=image, text="USER: <image> What colour is the circle? ASSISTANT:",
                           return_tensors="pt")
        lens = mmviz.logit_lens(model, inputs, processor, tokens=[" red", " blue"])
        lens.prob(" red")          # [layers, positions]: when does " red" become the answer, and where?
        lens.top(-1, -1)           # the model's own top-10 next tokens at the last position
        lens.show()

    Args:
        model: a transformers model with an output layer: a causal LM (GPT-2, Llama, Qwen, Gemma, ...), a VLM
            (LLaVA, Qwen2-VL, PaliGemma, the teaching VLM: the lens of its language model, image tokens
            included), a masked LM (BERT-like ``...ForMaskedLM``), or a CLIP/SigLIP model (the text lens of its
            vision tower, which needs ``texts``).
        inputs: the processor's or tokenizer's output (a dict of tensors; a batch lenses every item), or a
            tensor of input ids.
        processor: the processor or tokenizer: token texts, named tokens, image layout, captions.
        tokens: tokens whose probability is kept at every layer and position: texts that are one token each
            (``" red"``, mind the leading space) or ids. Read them with ``lens.prob(token)``.
        texts: captions for the text lens of a CLIP/SigLIP vision tower (each is a named output).
        layers: hidden states to lens: 0 is the first block's input (the embeddings), ``l`` the output of
            block ``l - 1``; negative counts from the end (``-1``: the last block, whose lens is the model's own
            output). Default: all.
        positions: sequence positions to lens (negative counts from the end). Default: all.
        top_k: how many of the most probable outputs to keep per layer and position.
        generate: ``True`` or ``model.generate`` keyword arguments (``{"max_new_tokens": 8}``): run generation
            and lens the prompt and every generated position (the last generated token is never fed back, so
            it has no hidden state).
        chunk: rows of the ``[rows, vocabulary]`` logits held at once (default: 8 M logits' worth).
        max_steps: the Diffusion Lens's budget of denoising steps, layers × steps (default
            ``mmviz.lens.diffusion.MAX_STEPS``, 400).

    A diffusers pipeline with one text encoder (Stable Diffusion 1.x/2.x, the teaching pipeline) gets the
    *Diffusion Lens*: ``inputs`` is the prompt, and each text-encoder layer's hidden state (through the
    encoder's final norm) conditions the denoiser in place of the last layer's, from the same noise: one image
    per layer. ``generate`` holds the pipeline's arguments (``num_inference_steps``, ``guidance_scale``, and
    ``seed``, default 0). It returns a ``DiffusionLensTrace`` (``images [layers, H, W, 3]``, ``figure()``).

    Returns:
        A ``LensTrace``: ``top_ids`` / ``top_probs`` ``[batch, layers, positions, k]``, ``entropy``,
        ``named_probs`` ``[batch, layers, positions, named]``; ``prob``, ``top``, ``show``, ``save``.
    """
    if hasattr(model, "components") and callable(model):  # a diffusers pipeline
        from mmviz.lens.diffusion import diffusion_lens

        if tokens is not None or texts is not None or positions is not None:
            raise ValueError("the Diffusion Lens draws images: it takes layers=, generate= and max_steps= only")
        pipeline_options = {} if not generate or generate is True else dict(generate)
        return diffusion_lens(model, inputs, layers=layers, options=pipeline_options, max_steps=max_steps)
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, not {top_k!r}")
    if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be a positive number of rows, not {chunk!r}")
    prepared = _inputs(model, inputs)
    if hasattr(model, "logit_scale") and hasattr(model, "vision_model"):
        from mmviz.lens.text import text_lens

        if tokens is not None or generate:
            raise ValueError("a CLIP/SigLIP text lens scores captions: pass texts=[...], not tokens= or generate=")
        return text_lens(model, prepared, processor, texts=texts, layers=layers, positions=positions, top_k=top_k)
    if texts is not None:
        raise ValueError(
            f"texts= is for the text lens of CLIP/SigLIP models; {type(model).__name__} reads out tokens: "
            "pass tokens=[...]"
        )
    if "input_ids" not in prepared and "inputs_embeds" not in prepared:
        raise ValueError("inputs hold no input_ids: pass the tokenizer's or processor's output")
    from mmviz.lens.logit import logit_lens_of_lm

    options = None if not generate else ({} if generate is True else dict(generate))
    return logit_lens_of_lm(
        model,
        prepared,
        processor,
        tokens=tokens,
        layers=layers,
        positions=positions,
        top_k=top_k,
        generate=options,
        chunk=chunk,
    )
