"""``with mmviz.capture(pipe) as cap:`` for diffusers pipelines and their bare UNet or transformer.

While the block is active, recording processors (``mmviz.capture._diffusers_processors``) replace
the denoiser's text-conditioned attention processors; a forward pre-hook on the denoiser tracks the
denoising step and the classifier-free-guidance layout; pre-hooks on the text encoders note the prompt's
token ids; a wrapper around ``pipe.image_processor.postprocess`` keeps the generated images. Every
change is undone on exit, also when the block raises.

Maps are reduced as they arrive (head mean unless ``heads=True``, the recorded CFG branch only, padding
dropped) and kept per (step, layer) at the layer's own resolution. With ``concepts=[...]`` a
``ConceptStream`` (``mmviz.capture._concepts``) adds concept maps (ConceptAttention) beside the word maps.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mmviz.capture._concepts import ConceptStream, check_concepts
from mmviz.capture._diffusers_layers import find_layers, layer_grid, select_layers
from mmviz.capture._diffusers_processors import (
    CrossAttnRecorder,
    FluxAttnRecorder,
    JointAttnRecorder,
    WrappedCrossAttnRecorder,
)
from mmviz.capture._diffusers_prompt import EncoderCall, prompt_tables
from mmviz.data import TokenTable
from mmviz.data.cross_attention import CrossAttentionLayer, CrossAttentionTrace
from mmviz.errors import BudgetError, CaptureError

__all__ = ["DEFAULT_MAX_BYTES", "DiffusionCapture"]

DEFAULT_MAX_BYTES = 1 << 30
"""Bytes of maps a capture may hold (float32 while running) unless ``max_bytes=`` says otherwise."""

_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


@dataclass
class _Layer:
    name: str
    module: Any
    original: Any
    heads: int


@dataclass
class _Run:
    """State of one pipeline call."""

    calls: dict[str, list[EncoderCall]] = field(default_factory=dict)
    timesteps: list[float] = field(default_factory=list)
    configured: bool = False
    done: bool = False
    rows: slice = field(default_factory=lambda: slice(None))
    keep: torch.Tensor | None = None
    text_length: int = 0
    grid: tuple[int, int] | None = None
    tables: list[TokenTable] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    resolution: dict[int, tuple[int, int]] = field(default_factory=dict)
    maps: dict[int, dict[int, torch.Tensor]] = field(default_factory=dict)
    counts: dict[int, dict[int, int]] = field(default_factory=dict)
    concept_maps: dict[int, dict[int, torch.Tensor]] = field(default_factory=dict)
    concept_counts: dict[int, dict[int, int]] = field(default_factory=dict)
    images: np.ndarray | None = None
    step_bytes: int = 0
    previews: dict[int, torch.Tensor] = field(default_factory=dict)
    finished: int = 0
    """Steps whose denoiser call returned (the steps a failed run keeps)."""


class DiffusionCapture:
    """Records cross-attention maps of a diffusers pipeline (or bare denoiser) inside a ``with`` block.

    Use ``mmviz.capture``; see ``mmviz.capture`` for the arguments.
    """

    def __init__(
        self,
        target: Any,
        layers: Sequence[int | str] | None = None,
        heads: bool = False,
        tokens: str = "prompt",
        branch: str = "cond",
        cfg: bool | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        previews: bool = False,
        concepts: Sequence[str] | None = None,
    ) -> None:
        if tokens not in ("prompt", "all"):
            raise ValueError(f"tokens must be 'prompt' (padding dropped) or 'all', not {tokens!r}")
        if branch not in ("cond", "uncond"):
            raise ValueError(f"branch must be 'cond' or 'uncond', not {branch!r}")
        if not isinstance(heads, bool):
            raise TypeError("for diffusion captures heads= is True (keep every head) or False (mean over heads)")
        denoiser = None
        for attr in ("unet", "transformer"):
            if getattr(target, attr, None) is not None and hasattr(target, "components"):
                denoiser = getattr(target, attr)
                break
        self.pipe = target if denoiser is not None else None
        self.denoiser = denoiser if denoiser is not None else target
        if not isinstance(self.denoiser, torch.nn.Module):
            raise CaptureError(
                f"{type(target).__name__} is neither a diffusers pipeline with a `unet` or `transformer` nor a "
                "denoiser model; pass the pipeline, its UNet2DConditionModel or its transformer"
            )
        self.concepts = (
            ConceptStream(self, check_concepts(concepts), self.pipe, self.denoiser) if concepts is not None else None
        )
        self.heads = heads
        self._layer_filter = layers
        self._options = {"tokens": tokens, "branch": branch, "cfg": cfg, "heads": heads}
        self.max_bytes = int(max_bytes)
        self.previews = bool(previews)
        if self.previews and self.pipe is None:
            raise CaptureError("previews=True needs the pipeline (its scheduler and VAE), not a bare denoiser")
        self._layers: list[_Layer] = []
        self._recorded: set[int] = set()
        self._restore: list[Callable[[], None]] = []
        self._runs: list[_Run] = []
        self._active: _Run | None = None
        self._traces: list[CrossAttentionTrace] = []
        self._entered = False

    # -- entering and leaving ------------------------------------------------------------------------
    def __enter__(self) -> DiffusionCapture:
        if self._entered:
            raise CaptureError("this capture is already active; start a new `with mmviz.capture(...)` block instead")
        self._entered = True
        self._runs, self._traces, self._active, self._layers = [], [], None, []
        try:
            self._install_processors()
            pre = self.denoiser.register_forward_pre_hook(self._on_denoiser, with_kwargs=True)
            post = self.denoiser.register_forward_hook(self._after_denoiser)
            self._restore += [pre.remove, post.remove]
            if self.pipe is not None:
                for attr in _ENCODERS:
                    encoder = getattr(self.pipe, attr, None)
                    if isinstance(encoder, torch.nn.Module):
                        hook = functools.partial(self._on_encoder, attr)
                        self._restore.append(encoder.register_forward_pre_hook(hook, with_kwargs=True).remove)
                self._wrap_postprocess()
                if self.previews:
                    self._wrap_scheduler()
        except BaseException:
            self._undo()
            self._entered = False
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._undo()
        self._entered = False
        self._active = None
        if exc_type is None:
            self._traces = [self._finish(run) for run in self._runs if run.maps]
        else:  # keep what finished: earlier pipeline calls whole, the failing one up to its last full step
            self._traces = [trace for run in self._runs if (trace := self._salvage(run)) is not None]
        self._runs = []

    def _undo(self) -> None:
        while self._restore:
            undo = self._restore.pop()
            undo()

    def _install_processors(self) -> None:
        candidates = find_layers(self.denoiser)
        if not candidates:
            raise CaptureError(
                f"{type(self.denoiser).__name__} has no text-conditioned attention that mmviz can record (UNet or "
                "PixArt attn2, SD3 joint attention, Flux attention); class-conditional models such as DiT have none"
            )
        chosen = select_layers(candidates, self._layer_filter)
        installed = chosen
        if self.concepts is not None:  # the concept stream runs through every joint block, recorded or not
            installed = [c for c in candidates if c in chosen or self.concepts.maps_layer(*c)]
        self._recorded = {slot for slot, c in enumerate(installed) if c in chosen}
        if self.concepts is not None and not any(self.concepts.maps_layer(*c) for c in chosen):
            raise CaptureError(
                f"layers={self._layer_filter!r} keeps no layer with concept maps (joint-attention blocks, PixArt's "
                f"attn2 with diffusers' default processor); keep one of "
                f"{[n for n, m in candidates if self.concepts.maps_layer(n, m)]}"
            )
        for slot, (name, module) in enumerate(installed):
            original = module.processor
            kind = type(original).__name__
            if kind == "AttnProcessor2_0" and name.endswith("attn2"):
                recorder: Any = CrossAttnRecorder(self, slot)
            elif name.endswith("attn2") or kind in ("AttnProcessor", "AttnProcessor2_0"):
                recorder = WrappedCrossAttnRecorder(self, slot, original)
                # diffusers passes a processor only the keyword arguments its __call__ names: show the wrapped
                # processor's signature so that its own arguments (e.g. IP-Adapter masks) still reach it.
                recorder.__call__ = original.__call__
            elif kind == "JointAttnProcessor2_0":
                recorder = JointAttnRecorder(self, slot)
            elif kind == "FluxAttnProcessor":
                recorder = FluxAttnRecorder(self, slot, original)
            else:
                raise CaptureError(
                    f"layer {name!r} uses the attention processor {kind}, which mmviz cannot record; reset it with "
                    "`denoiser.set_attn_processor(...)` to the default processor, or leave the layer out with layers="
                )
            self._layers.append(_Layer(name, module, original, int(module.heads)))
            self._restore.append(functools.partial(module.set_processor, original))
            module.set_processor(recorder)
        if self.concepts is not None:
            self._restore += self.concepts.install(installed)

    def _wrap_postprocess(self) -> None:
        processor = getattr(self.pipe, "image_processor", None)
        if processor is None or not hasattr(processor, "postprocess"):
            return
        original = processor.postprocess
        had_own = "postprocess" in vars(processor)

        @functools.wraps(original)
        def postprocess(image: Any, *args: Any, **kwargs: Any) -> Any:
            self._on_images(image, processor, kwargs.get("do_denormalize"))
            return original(image, *args, **kwargs)

        processor.postprocess = postprocess
        if had_own:
            self._restore.append(functools.partial(setattr, processor, "postprocess", original))
        else:
            self._restore.append(lambda: vars(processor).pop("postprocess", None))

    def _wrap_scheduler(self) -> None:
        scheduler = getattr(self.pipe, "scheduler", None)
        if scheduler is None:
            raise CaptureError("previews=True needs a pipeline with a scheduler")
        original = scheduler.step
        had_own = "step" in vars(scheduler)

        @functools.wraps(original)
        def step(model_output: Any, timestep: Any, sample: Any, *args: Any, **kwargs: Any) -> Any:
            sigma = None
            if not hasattr(scheduler, "alphas_cumprod") and hasattr(scheduler, "sigmas"):
                if getattr(scheduler, "step_index", None) is None and hasattr(scheduler, "_init_step_index"):
                    scheduler._init_step_index(timestep)  # what step() does first; done here to read sigma
                index = getattr(scheduler, "step_index", None)
                sigma = scheduler.sigmas[index] if index is not None else None
            out = original(model_output, timestep, sample, *args, **kwargs)
            self._on_step(model_output, sample, out, sigma)
            return out

        scheduler.step = step
        if had_own:
            self._restore.append(functools.partial(setattr, scheduler, "step", original))
        else:
            self._restore.append(lambda: vars(scheduler).pop("step", None))

    def _on_step(self, model_output: Any, sample: Any, out: Any, sigma: Any) -> None:
        run = self._runs[-1] if self._runs else None
        if run is None or run.done or not run.timesteps:
            return
        x0 = getattr(out, "pred_original_sample", None)
        if x0 is None and isinstance(out, tuple) and len(out) > 1 and isinstance(out[1], torch.Tensor):
            x0 = out[1]
        if x0 is None and sigma is not None and isinstance(sample, torch.Tensor):
            x0 = sample - sigma.to(sample.device, sample.dtype) * model_output  # flow matching: x0 = x_t - σ v
        if isinstance(x0, torch.Tensor):
            run.previews.setdefault(len(run.timesteps) - 1, x0.detach().to("cpu", torch.float32))

    def _decode_previews(self, run: _Run, n_items: int) -> np.ndarray | None:
        """``uint8 [batch, steps, h, w, 3]`` x0 predictions decoded with the pipeline's VAE (≤ 128 px)."""
        vae = getattr(self.pipe, "vae", None)
        if vae is None or not run.previews or len(run.previews) != len(run.timesteps):
            return None
        config = vae.config
        scale = float(getattr(config, "scaling_factor", 1.0) or 1.0)
        shift = float(getattr(config, "shift_factor", 0.0) or 0.0)
        size = run.info.get("image_size")
        frames = []
        with torch.no_grad():
            for step in range(len(run.timesteps)):
                latents = run.previews[step][:n_items]
                pipe: Any = self.pipe
                if latents.ndim == 3 and size and hasattr(pipe, "_unpack_latents"):
                    latents = pipe._unpack_latents(latents, size[0], size[1], pipe.vae_scale_factor)
                param = next(vae.parameters())
                image = vae.decode(latents.to(param.device, param.dtype) / scale + shift).sample
                image = (image.float() / 2 + 0.5).clamp(0, 1)
                side = max(image.shape[-2:])
                if side > 128:
                    image = torch.nn.functional.interpolate(image, scale_factor=128 / side, mode="area")
                frames.append((image * 255).round().to("cpu", torch.uint8).permute(0, 2, 3, 1).numpy())
        run.previews.clear()
        return np.ascontiguousarray(np.stack(frames, axis=1))

    # -- hooks -----------------------------------------------------------------------------------------
    def _current_run(self, new_if: Callable[[_Run], bool]) -> _Run:
        run = self._runs[-1] if self._runs else None
        if run is None or run.done or new_if(run):
            run = _Run()
            self._runs.append(run)
        return run

    def _on_encoder(self, attr: str, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.concepts is not None and self.concepts.encoding:
            return  # the concepts' own encoding, not the prompt's
        run = self._current_run(lambda r: bool(r.timesteps))
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not isinstance(ids, torch.Tensor):
            return
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        mask = mask.detach().to("cpu") if isinstance(mask, torch.Tensor) else None
        run.calls.setdefault(attr, []).append((ids.detach().to("cpu"), mask))

    def _on_denoiser(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._active = None
        sample = kwargs.get("sample", kwargs.get("hidden_states", args[0] if args else None))
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        context = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        if not isinstance(sample, torch.Tensor) or not isinstance(context, torch.Tensor):
            return
        run = self._current_run(lambda r: False)
        if isinstance(timestep, torch.Tensor):
            t = float(timestep.detach().flatten()[0]) if timestep.numel() else float(len(run.timesteps))
        elif timestep is None:
            t = float(len(run.timesteps))
        else:
            t = float(timestep)
        if run.timesteps and run.timesteps[-1] == t:
            return  # a second call at the same timestep (separate CFG pass, skip-layer guidance): not recorded
        if not run.configured:
            self._configure(run, sample, context, kwargs)
        elif run.step_bytes * (len(run.timesteps) + 1) > self.max_bytes:
            raise BudgetError(self._budget_message(run, len(run.timesteps) + 1))
        run.timesteps.append(t)
        self._active = run
        if self.concepts is not None:
            self.concepts.start(len(run.timesteps) == 1, run.rows, context)

    def _after_denoiser(self, module: Any, args: Any, output: Any) -> None:
        if self._active is not None:
            self._active.finished = len(self._active.timesteps)
        self._active = None
        if self.concepts is not None:
            self.concepts.stop()

    def _on_images(self, image: Any, processor: Any, do_denormalize: Any) -> None:
        run = self._runs[-1] if self._runs else None
        if run is None or run.done or not run.timesteps or not isinstance(image, torch.Tensor) or image.ndim != 4:
            return
        x = image.detach().to("cpu", torch.float32)
        if getattr(getattr(processor, "config", None), "do_normalize", True):
            flags = do_denormalize if do_denormalize is not None else [True] * x.shape[0]
            x = torch.stack([(xi / 2 + 0.5) if f else xi for xi, f in zip(x, flags)])
        arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        if arr.shape[3] == 1:
            arr = np.repeat(arr, 3, axis=3)
        run.images = np.ascontiguousarray(arr[..., :3])
        run.done = True

    # -- the first step of a run -----------------------------------------------------------------------
    def _cfg(self, sample: torch.Tensor, context: torch.Tensor) -> bool:
        if self._options["cfg"] is not None:
            return bool(self._options["cfg"])
        b = sample.shape[0]
        if self.pipe is not None and hasattr(type(self.pipe), "do_classifier_free_guidance"):
            try:
                return bool(self.pipe.do_classifier_free_guidance) and b % 2 == 0
            except (AttributeError, TypeError):
                pass
        if b % 2 or sample.ndim < 3:
            return False
        half = b // 2
        return bool(torch.equal(sample[:half], sample[half:])) and not torch.equal(context[:half], context[half:])

    def _configure(self, run: _Run, sample: torch.Tensor, context: torch.Tensor, kwargs: dict[str, Any]) -> None:
        run.configured = True
        b = sample.shape[0]
        cfg = self._cfg(sample, context)
        negative = self._options["branch"] == "uncond"
        if negative and not cfg:
            raise CaptureError("branch='uncond' needs classifier-free guidance in one batch (guidance_scale > 1)")
        run.rows = (slice(0, b // 2) if negative else slice(b // 2, b)) if cfg else slice(0, b)
        n_items = len(range(b)[run.rows])
        run.text_length = int(context.shape[1])
        if sample.ndim == 4:
            run.grid = (int(sample.shape[2]), int(sample.shape[3]))
        elif isinstance(kwargs.get("img_ids"), torch.Tensor):
            ids = kwargs["img_ids"].reshape(-1, kwargs["img_ids"].shape[-1])
            run.grid = (int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1)
        full = prompt_tables(self.pipe, self.denoiser, run.calls, run.text_length, n_items, negative)
        if self._options["tokens"] == "all":
            keep = np.arange(run.text_length)
        else:
            keep = np.flatnonzero(np.any([t.kind != "pad" for t in full], axis=0))
        run.keep = torch.as_tensor(keep, dtype=torch.long, device=sample.device)
        run.tables = [t.select(keep) for t in full]
        run.info["positions"] = [int(i) for i in keep]
        scale = int(getattr(self.pipe, "vae_scale_factor", 0) or 0)
        if run.grid is not None and scale:
            packed = 2 if sample.ndim == 3 else 1
            run.info["image_size"] = [run.grid[0] * scale * packed, run.grid[1] * scale * packed]
        run.info.update(
            self._options,
            pipeline=type(self.pipe).__name__ if self.pipe is not None else None,
            denoiser=type(self.denoiser).__name__,
            cfg=cfg,
        )
        n_concepts = len(self.concepts.concepts) if self.concepts is not None else 0
        run.step_bytes = sum(
            n_items * h * w * 4 * (len(keep) * (layer.heads if self.heads else 1) + n_concepts * self._concept(slot))
            for slot, (layer, (h, w)) in enumerate(zip(self._layers, self._predicted_resolutions(run)))
            if slot in self._recorded
        )
        if self.concepts is not None:
            run.info["concept_encoding"] = self.concepts.info
        planned = getattr(getattr(self.pipe, "scheduler", None), "timesteps", None)
        expected = max(1, len(planned)) if planned is not None else 1
        run.info["estimated_bytes"] = run.step_bytes * expected
        if run.step_bytes * expected > self.max_bytes:
            raise BudgetError(self._budget_message(run, expected))

    def _predicted_resolutions(self, run: _Run) -> list[tuple[int, int]]:
        grid = run.grid or (1, 1)
        down = getattr(self.denoiser, "down_blocks", None)
        patch = int(getattr(getattr(self.denoiser, "config", None), "patch_size", None) or 1)
        out = []
        for layer in self._layers:
            factor = 1
            if down is not None:
                n = len(down)
                m = re.match(r"(down|up)_blocks\.(\d+)\.", layer.name)
                if m:
                    factor = 2 ** int(m.group(2)) if m.group(1) == "down" else 2 ** (n - 1 - int(m.group(2)))
                elif layer.name.startswith("mid_block"):
                    factor = 2 ** (n - 1)
            elif run.grid is not None and len(grid) == 2 and self.denoiser.__class__.__name__.startswith("Flux"):
                factor = 1
            else:
                factor = patch
            out.append((math.ceil(grid[0] / factor), math.ceil(grid[1] / factor)))
        return out

    def _budget_message(self, run: _Run, steps: int) -> str:
        need = run.step_bytes * steps
        tokens = run.keep.numel() if run.keep is not None else 0
        return (
            f"recording {steps} steps × {len(self._recorded)} layers × {tokens} "
            f"tokens would hold {need / 2**20:.1f} MiB of maps{' (every head kept)' if self.heads else ''}, over the "
            f"budget of {self.max_bytes / 2**20:.1f} MiB. Raise it with mmviz.capture(pipe, max_bytes=...), record "
            "fewer layers with layers=[...] (e.g. layers=['up_blocks']), use heads=False, tokens='prompt', or fewer "
            "num_inference_steps"
        )

    # -- called by the processors ----------------------------------------------------------------------
    @property
    def text_length(self) -> int | None:
        """Context length of the running denoiser call (``None`` outside a recorded call)."""
        return self._active.text_length if self._active is not None else None

    def records(self, slot: int) -> bool:
        """Whether layer ``slot``'s maps are kept (a layer may run only to carry the concept stream)."""
        return slot in self._recorded

    def _concept(self, slot: int) -> bool:
        layer = self._layers[slot]
        return self.concepts is not None and self.concepts.maps_layer(layer.name, layer.module)

    def request(self, slot: int, n_text: int) -> tuple[slice, torch.Tensor] | None:
        """``(batch rows, kept token indices)`` when this call of layer ``slot`` is to be recorded."""
        run = self._active
        if run is None or run.keep is None or n_text != run.text_length or slot not in self._recorded:
            return None
        return run.rows, run.keep

    def store(self, slot: int, probs: torch.Tensor, heads: int) -> None:
        """Adds one call's ``[batch, (heads,) tokens, image]`` probabilities to the running sums."""
        run = self._active
        if run is not None:
            self._add(run, run.maps, run.counts, slot, probs)

    def store_concepts(self, slot: int, maps: torch.Tensor) -> None:
        """Adds one call's ``[batch, concepts, image]`` concept maps to the running sums."""
        run = self._active
        if run is not None and slot in self._recorded:
            self._add(run, run.concept_maps, run.concept_counts, slot, maps)

    def _add(
        self,
        run: _Run,
        store: dict[int, dict[int, torch.Tensor]],
        tally: dict[int, dict[int, int]],
        slot: int,
        probs: torch.Tensor,
    ) -> None:
        n = int(probs.shape[-1])
        if slot not in run.resolution:
            run.resolution[slot] = layer_grid(run.grid, n, self._layers[slot].name)
        h, w = run.resolution[slot]
        maps = probs.detach().reshape(*probs.shape[:-1], h, w)
        step = len(run.timesteps) - 1
        layer_maps = store.setdefault(slot, {})
        counts = tally.setdefault(slot, {})
        if step in layer_maps:
            layer_maps[step] += maps
            counts[step] += 1
        else:
            layer_maps[step] = maps
            counts[step] = 1

    # -- results ---------------------------------------------------------------------------------------
    def _finish(self, run: _Run) -> CrossAttentionTrace:
        steps = len(run.timesteps)
        maps = []
        concept_maps: list[np.ndarray | None] = []
        layers = []
        for slot, layer in enumerate(self._layers):
            if not run.maps.get(slot):
                continue
            maps.append(_stack(run.maps[slot], run.counts[slot], steps))
            concepts = run.concept_maps.get(slot)
            concept_maps.append(_stack(concepts, run.concept_counts[slot], steps) if concepts else None)
            layers.append(CrossAttentionLayer(layer.name, run.resolution[slot], layer.heads))
        images = run.images if run.images is not None and run.images.shape[0] == len(run.tables) else None
        previews = self._decode_previews(run, len(run.tables)) if self.previews else None
        names = self.concepts.concepts if self.concepts is not None else ()
        return CrossAttentionTrace(
            maps, layers, run.tables, run.timesteps, images, run.info, previews,
            concepts=names, concept_maps=concept_maps if names else None,
        )  # fmt: skip

    def _salvage(self, run: _Run) -> CrossAttentionTrace | None:
        """The trace of a run after the block raised: whole if its images were made, else its finished steps.

        ``None`` when no step finished; a trace that cannot be built is dropped, so the block's own
        exception is the one the user sees.
        """
        if not run.done:
            del run.timesteps[run.finished :]
            for per_step in [*run.maps.values(), *run.concept_maps.values()]:
                for step in [s for s in per_step if s >= run.finished]:
                    del per_step[step]
            run.previews.clear()
        if not any(run.maps.values()):
            return None
        try:
            trace = self._finish(run)
        except (ValueError, CaptureError, RuntimeError):
            return None
        trace.complete = run.done
        return trace

    @property
    def traces(self) -> list[CrossAttentionTrace]:
        """One ``CrossAttentionTrace`` per pipeline call in the block (after an error: what finished)."""
        if self._entered:
            raise CaptureError("the traces are ready when the `with` block ends")
        if not self._traces:
            raise CaptureError(
                "nothing was captured: call the pipeline (or the denoiser) inside the `with mmviz.capture(pipe)` block"
            )
        return self._traces

    @property
    def cross_attention(self) -> CrossAttentionTrace:
        """The ``CrossAttentionTrace`` of the last pipeline call in the block."""
        return self.traces[-1]


def _stack(per_step: dict[int, torch.Tensor], counts: dict[int, int], steps: int) -> np.ndarray:
    """``float16 [batch, steps, ...]`` from one layer's running sums per step (emptied as they are read)."""
    first = next(iter(per_step.values()))
    out = np.zeros((first.shape[0], steps, *first.shape[1:]), dtype=np.float16)
    for step in sorted(per_step):
        tensor = per_step.pop(step) / counts[step]
        out[:, step] = tensor.to("cpu", torch.float32).numpy()
    return out
