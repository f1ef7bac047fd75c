"""The function every gradient and perturbation method explains, and the positions it is explained on.

A ``Problem`` holds one example's inputs, the resolved target and the two kinds of attributed
input:

* **text**: the output of the model's input-embedding module (``[1, tokens, dim]``), replaced through a
  forward hook so that scaled or occluded embeddings flow through the unchanged model (for VLMs the
  image placeholders' embeddings are overwritten by image features inside the model, so their
  contribution arrives through the pixels);
* **image**: ``pixel_values``, in whatever layout the processor produced (see ``PixelLayout``).

Positions come from ``mmviz.capture``'s token tables (one short forward, first layer only), so
image tokens carry the same ``(image, row, col)`` layout as attention traces.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from mmviz._hf.run import prepared
from mmviz.attribution._checks import check_target
from mmviz.attribution._pixels import PixelLayout, cell_sums
from mmviz.attribution._targets import TEXT_KEYS, Plan, plan_target
from mmviz.data import TokenTable

__all__ = ["Problem", "prepared"]

SOURCES = ("text", "image")


def input_embeddings(model: Any) -> torch.nn.Module | None:
    """The module that turns token ids into embeddings (text tower's for CLIP/SigLIP), or ``None``."""
    for owner in (model, getattr(model, "text_model", None), getattr(model, "language_model", None)):
        if owner is None or not hasattr(owner, "get_input_embeddings"):
            continue
        try:
            module = owner.get_input_embeddings()
        except (NotImplementedError, AttributeError):
            continue
        if isinstance(module, torch.nn.Module):
            return module
    return None


def _device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


class Problem:
    """One example, one target: ``f(text embeddings, pixels) → [k, targets]`` and its positions.

    Args:
        model: a transformers model.
        inputs: the processor's output for one example (batch size 1).
        processor: processor or tokenizer (token texts, answers, captions, image means).
        target: see ``mmviz.attribute``.
        per_token: one row per answer token.
        sources: ``"text"`` and/or ``"image"``: the inputs attributed (default: both when present).
    """

    def __init__(
        self,
        model: Any,
        inputs: dict[str, Any],
        processor: Any,
        target: Any,
        per_token: bool = False,
        sources: tuple[str, ...] | None = None,
        build_table: bool = True,
    ) -> None:
        from mmviz._hf.tokens import tokenizer_of

        self.model = model
        self.processor = processor
        self.tokenizer = tokenizer_of(processor)
        self.device = _device(model)
        inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in dict(inputs).items()}
        inputs.pop("labels", None)
        ids = inputs.get("input_ids")
        two_tower = hasattr(model, "logit_scale") and "pixel_values" in inputs  # CLIP: captions pick a row
        if isinstance(ids, torch.Tensor) and ids.ndim == 2 and ids.shape[0] != 1 and not two_tower:
            raise ValueError(
                f"mmviz.attribute explains one example at a time: input_ids has batch size {ids.shape[0]}; "
                "pass one example (inputs sliced to [0:1])"
            )
        pixels = inputs.get("pixel_values")
        if isinstance(pixels, torch.Tensor) and pixels.ndim == 4 and pixels.shape[0] != 1 and ids is None:
            raise ValueError(
                f"mmviz.attribute explains one example at a time: pixel_values holds {pixels.shape[0]} images; "
                "pass one (pixel_values[0:1])"
            )
        check_target(model, self.tokenizer, target)
        self.plan: Plan = plan_target(model, inputs, self.tokenizer, target, per_token)
        wanted = set(SOURCES if sources is None else sources)
        unknown = wanted - set(SOURCES)
        if unknown:
            raise ValueError(f"unknown source(s) {sorted(unknown)}; use 'text' and/or 'image'")
        first = self.plan.variants[0].inputs
        self.embed = input_embeddings(model) if "text" in wanted and self.plan.attribute_text else None
        self.n_embed = self.plan.shared if self.embed is not None and "input_ids" in first else 0
        if self.n_embed == 0:
            self.embed = None
        self.x_embed: torch.Tensor | None = None
        if self.embed is not None:
            with torch.no_grad():
                self.x_embed = self.embed(first["input_ids"][:, : self.n_embed]).detach()
        self.x_pixels: torch.Tensor | None = None
        self.layout: PixelLayout | None = None
        if "image" in wanted and isinstance(first.get("pixel_values"), torch.Tensor):
            self.x_pixels = first["pixel_values"].detach()
            if not self.x_pixels.is_floating_point():
                raise ValueError("pixel_values must be floating point to be attributed")
            self.layout = PixelLayout(self.x_pixels.cpu(), first, model)
        if self.x_embed is None and self.x_pixels is None:
            raise ValueError("nothing to attribute: the inputs hold neither token embeddings nor pixel_values")
        self.n_text = self.n_embed
        if not self.n_text and not two_tower and isinstance(first.get("input_ids"), torch.Tensor):
            # pixels only, in one sequence with the prompt (a VLM): the table keeps the prompt's positions, so
            # the image tokens are scored where they sit and the text positions (held as given) score 0
            self.n_text = self.plan.shared
        self.vision_start: int | None = None
        self.stack_tables: dict[str, str] = {}
        self.table_offsets: dict[str, int] = {}
        self._reference: torch.Tensor | None = None
        self.table = self._table() if build_table else TokenTable.build([])
        self.fast = self._check_fast()

    # -- positions -------------------------------------------------------------------------------
    def _table(self) -> TokenTable:
        """Token table of the attributed positions: the text sequence, then a separate vision tower's patches."""
        from mmviz._hf.tokens import images_from_pixels, patch_table, text_table

        inputs = self.plan.variants[0].inputs
        from mmviz.capture import token_tables

        variant = self.plan.variants[0]
        with torch.no_grad(), token_tables(self.model, self.processor) as run:
            self._reference = variant.objective(self.model(**inputs, **variant.kwargs))
        tables = run.tables
        self.stack_tables = run.key_tables
        parts: list[TokenTable] = []
        if self.n_text:
            text = tables.get("text", [None])[0]
            if text is None or len(text) < self.n_text:
                mask = inputs.get("attention_mask")
                text = text_table(inputs["input_ids"][0].cpu(), None if mask is None else mask[0].cpu(), self.tokenizer)
            text = text.select(np.arange(self.n_text))
            if self.plan.generated_from is not None:
                gen = np.arange(len(text)) >= self.plan.generated_from
                text = dataclasses.replace(text, generated=gen)
            parts.append(text)
            self.table_offsets["text"] = 0
        has_images = any(len(p.images) for p in parts)
        if self.x_pixels is not None and not has_images:
            vision = [k for k in tables if k.endswith(".patches")]
            if vision:
                self.vision_start = sum(len(p) for p in parts)
                self.table_offsets[vision[0]] = self.vision_start
                parts.append(tables[vision[0]][0])
            elif self.x_pixels.ndim == 4:
                grid = _grid(self.model)
                image = images_from_pixels(self.x_pixels.cpu(), self.processor)[0]
                if grid is not None:
                    self.vision_start = sum(len(p) for p in parts)
                    parts.append(patch_table(grid[0] * grid[1], grid, image, prefix_names=[]))
        if not parts:
            return TokenTable.build([])
        table = parts[0]
        for extra in parts[1:]:
            table = table.concat(extra)
        return table

    def _check_fast(self) -> bool:
        """Whether every variant's shortcut reproduces its objective on the real input (checked once)."""
        variants = self.plan.variants
        if not variants or any(v.fast is None for v in variants):
            return False
        try:
            with torch.no_grad():
                for i, v in enumerate(variants):
                    assert v.fast is not None
                    reference = self._reference if i == 0 and self._reference is not None else None
                    if reference is None:
                        reference = v.objective(self.model(**v.inputs, **v.kwargs))
                    if not torch.allclose(v.fast(v.inputs), reference, rtol=1e-4, atol=1e-5):
                        return False
        except Exception:  # a model whose base model cannot run on these inputs: use the full model
            return False
        return True

    # -- running ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _embedding_hook(self, emb: torch.Tensor | None) -> Iterator[None]:
        if emb is None or self.embed is None:
            yield
            return
        n = self.n_embed

        def replace(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
            if output.ndim != 3 or output.shape[1] < n:
                return output
            if output.shape[0] != emb.shape[0]:
                return output
            return torch.cat([emb.to(output.dtype), output[:, n:]], dim=1)

        handle = self.embed.register_forward_hook(replace)
        try:
            yield
        finally:
            handle.remove()

    def run(
        self, emb: torch.Tensor | None = None, pix: torch.Tensor | None = None, k: int | None = None
    ) -> torch.Tensor:
        """The explained function on ``k`` copies of the input with replaced embeddings and/or pixels.

        Args:
            emb: ``[k, n_embed, dim]`` text embeddings (``None``: the real ones).
            pix: ``[k, *pixel_values.shape]`` pixels (``None``: the real ones).
            k: number of copies when both are ``None``.

        Returns:
            ``[k, targets]`` values ``Σ weight · objective``.
        """
        if k is None:
            k = emb.shape[0] if emb is not None else pix.shape[0] if pix is not None else 1
        total: torch.Tensor | None = None
        # a caption whose embeddings stay as they are goes through its tower once, not k times
        one_caption = emb is None and self.fast and self.plan.kind == "dual"
        for variant in self.plan.variants:
            batch = {
                key: value.repeat(k, *([1] * (value.ndim - 1)))
                if isinstance(value, torch.Tensor) and not (one_caption and key in TEXT_KEYS)
                else value
                for key, value in variant.inputs.items()
            }
            if pix is not None:
                batch["pixel_values"] = pix.reshape(k * pix.shape[1], *pix.shape[2:])
            with self._embedding_hook(emb):
                if self.fast and variant.fast is not None:
                    value = variant.weight * variant.fast(batch)
                else:
                    value = variant.weight * variant.objective(self.model(**batch, **variant.kwargs))
            total = value if total is None else total + value
        assert total is not None
        return total

    # -- baselines -------------------------------------------------------------------------------
    def baselines(self, baseline: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Baseline embeddings ``[1, n_embed, dim]`` and pixels for ``"zeros"``, ``"pad"``, a tensor or a dict."""
        emb_b: Any = None
        pix_b: Any = None
        if isinstance(baseline, dict):
            emb_b, pix_b = baseline.get("text"), baseline.get("image")
        elif isinstance(baseline, torch.Tensor):
            if self.x_embed is not None and baseline.numel() == self.x_embed.numel():
                emb_b = baseline
            elif self.x_pixels is not None and baseline.numel() == self.x_pixels.numel():
                pix_b = baseline
            else:
                raise ValueError(
                    f"a baseline tensor of shape {tuple(baseline.shape)} matches neither the embeddings "
                    f"{None if self.x_embed is None else tuple(self.x_embed.shape)} nor the pixels "
                    f"{None if self.x_pixels is None else tuple(self.x_pixels.shape)}; pass a dict "
                    "{'text': ..., 'image': ...} to give both"
                )
        elif baseline in ("zeros", "pad"):
            emb_b = pix_b = baseline
        else:
            raise ValueError(f"baseline must be 'zeros', 'pad', a tensor or a dict, not {baseline!r}")
        emb = None
        if self.x_embed is not None:
            if emb_b is None or (isinstance(emb_b, str) and emb_b == "zeros"):
                emb = torch.zeros_like(self.x_embed)
            elif isinstance(emb_b, str) and emb_b == "pad":
                emb = self._pad_embeddings()
            else:
                emb = torch.as_tensor(emb_b).to(self.x_embed).reshape(self.x_embed.shape)
        pix = None
        if self.x_pixels is not None:
            if pix_b is None or isinstance(pix_b, str):
                pix = torch.zeros_like(self.x_pixels)
            else:
                pix = torch.as_tensor(pix_b).to(self.x_pixels).reshape(self.x_pixels.shape)
        return emb, pix

    def _pad_embeddings(self) -> torch.Tensor:
        assert self.embed is not None and self.x_embed is not None
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            config = self.model.config
            pad = getattr(config, "pad_token_id", None) or getattr(
                getattr(config, "text_config", None), "pad_token_id", None
            )
        if pad is None:
            raise ValueError(
                "baseline='pad' needs a pad token: the tokenizer and the config have none. Set "
                "tokenizer.pad_token (e.g. to the EOS token) or use baseline='zeros'"
            )
        ids = torch.full((1, self.n_embed), int(pad), dtype=torch.long, device=self.device)
        with torch.no_grad():
            return self.embed(ids).detach()

    # -- scores ----------------------------------------------------------------------------------
    def scores(
        self, emb_attr: torch.Tensor | None, pix_attr: torch.Tensor | None, norm: bool
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """Per-position scores and pixel maps from element-wise attributions.

        Args:
            emb_attr: ``[targets, n_embed, dim]`` (``None``: text not attributed).
            pix_attr: ``[targets, *pixel_values.shape]`` (``None``: pixels not attributed).
            norm: ``True``: L2 norm over the embedding dimension, over channels per pixel and over the
                pixels of a patch (saliency); ``False``: sums (signed methods).

        Returns:
            ``[targets, positions]`` float32 scores and one ``[targets, H, W]`` map per table image.
        """
        n_targets = len(self.plan.labels)
        scores = np.zeros((n_targets, len(self.table)), dtype=np.float64)
        if emb_attr is not None:
            e = emb_attr.detach().to("cpu", torch.float64)
            text = e.pow(2).sum(-1).numpy() if norm else e.sum(-1).numpy()
            scores[:, : self.n_embed] += text
        maps: list[np.ndarray] = []
        if pix_attr is not None and self.layout is not None:
            p = pix_attr.detach().to("cpu", torch.float64)
            per_target = [self.layout.maps(p[t].pow(2) if norm else p[t]) for t in range(n_targets)]
            n_images = len(self.layout.sizes)
            for image in range(n_images):
                stack = np.stack([per_target[t][image] for t in range(n_targets)])
                if image < len(self.table.images):
                    grid = self.table.grids[image]
                    positions = self.table.image_positions(image)
                    held = positions >= 0
                    for t in range(n_targets):
                        scores[t, positions[held]] += cell_sums(stack[t], grid)[held]
                    maps.append(np.sqrt(stack) if norm else stack)
        if norm:
            scores = np.sqrt(scores)
        return scores.astype(np.float32), tuple(m.astype(np.float32) for m in maps)


def _grid(model: Any) -> tuple[int, int] | None:
    vc = getattr(model.config, "vision_config", None) or model.config
    size, patch = getattr(vc, "image_size", None), getattr(vc, "patch_size", None)
    if not size or not patch:
        return None
    size = size if isinstance(size, int) else size[0]
    patch = patch if isinstance(patch, int) else patch[0]
    return int(size) // int(patch), int(size) // int(patch)
