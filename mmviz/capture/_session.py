"""The ``with mmviz.capture(model) as cap:`` context manager for transformers models."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch

from mmviz._hf.modules import all_configs
from mmviz.capture import DEFAULT_QK_THRESHOLD, _interface
from mmviz.capture._legacy import LegacyHooks, legacy_configs, use_eager_classes
from mmviz.capture._recorder import Recorder, Run
from mmviz.data import AttentionTrace
from mmviz.errors import CaptureError

_INPUT_NAMES = (
    "input_ids",
    "attention_mask",
    "pixel_values",
    "image_grid_thw",
    "token_type_ids",
    "mm_token_type_ids",
    "decoder_input_ids",
    "decoder_attention_mask",
    "image_sizes",
    "inputs_embeds",
    # what vision-language models need besides the pixels (the derived image layout runs them again)
    "aspect_ratio_ids",
    "aspect_ratio_mask",
    "batch_num_images",
    "cross_attention_mask",
    "flattened_patches",
    "image_attention_mask",
    "image_embeds_position_mask",
    "image_grid_hw",
    "image_num_crops",
    "image_position_ids",
    "image_patches_indices",
    "num_local_patches",
    "patch_attention_mask",
    "pixel_attention_mask",
    "pixel_mask",
    "pixel_values_images",
    "pixel_values_local",
    "spatial_shapes",
    "vision_aspect_ratio",
)


def _cpu_inputs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v.detach().to("cpu") if isinstance(v, torch.Tensor) else v
        for k, v in kwargs.items()
        if k in _INPUT_NAMES and v is not None
    }


class Capture:
    """Records attention of a transformers model while it runs inside the ``with`` block.

    Use ``mmviz.capture``; see its docstring for the arguments.
    """

    def __init__(
        self,
        model: Any,
        processor: Any = None,
        layers: Sequence[int] | dict[str, Sequence[int]] | None = None,
        heads: Sequence[int] | None = None,
        modules: Sequence[str] | None = None,
        store: str = "auto",
        qk_threshold: int = DEFAULT_QK_THRESHOLD,
    ) -> None:
        if store not in ("auto", "dense", "qk"):
            raise ValueError(f"store must be 'auto', 'dense' or 'qk', not {store!r}")
        if not hasattr(model, "config") or not hasattr(model.config, "_attn_implementation_internal"):
            raise CaptureError(
                f"{type(model).__name__} is not a transformers model (no config with an attention implementation). "
                "mmviz.capture records models whose attention goes through transformers' AttentionInterface, "
                "and diffusers pipelines."
            )
        self.model = model
        self.processor = processor
        self._options = {
            "layers": layers,
            "heads": heads,
            "modules": modules,
            "store": store,
            "qk_threshold": qk_threshold,
        }
        self.recorder: Recorder | None = None
        self._restore: list[Callable[[], None]] = []
        self._traces: list[AttentionTrace] | None = None
        self._in_generate = False
        self._legacy: list[Any] | None = None

    # -- entering and leaving ------------------------------------------------------------------
    def __enter__(self) -> Capture:
        if self.recorder is not None:
            raise CaptureError("this capture is already active; start a new `with mmviz.capture(...)` block instead")
        _interface.register()
        model = self.model
        configs = all_configs(model)
        original = {id(c): c._attn_implementation_internal for c in configs}
        top = model.config._attn_implementation_internal or "sdpa"
        self.recorder = Recorder(model, original, top, **self._options)  # type: ignore[arg-type]
        self._traces = None
        try:
            for config in configs:
                self._restore.append(
                    functools.partial(
                        setattr, config, "_attn_implementation_internal", config._attn_implementation_internal
                    )
                )
                config._attn_implementation_internal = _interface.IMPLEMENTATION
            self._legacy = legacy_configs(model)
            for config in self._legacy or ():  # modules computing attention themselves read "eager"
                self._restore.append(
                    functools.partial(
                        setattr, config, "_attn_implementation_internal", config._attn_implementation_internal
                    )
                )
                config._attn_implementation_internal = "eager"
            handle = model.register_forward_pre_hook(self._on_forward, with_kwargs=True)
            self._restore.append(handle.remove)
            self._wrap_generate()
            if self._legacy is not None:
                self._restore.append(use_eager_classes(model))
                self._restore.append(LegacyHooks.attach(model, self.recorder))
            stack = list(_interface.ACTIVE.get() or [])
            token = _interface.ACTIVE.set([*stack, self.recorder])
            self._restore.append(functools.partial(_interface.ACTIVE.reset, token))
        except BaseException:
            self._undo()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._undo()
        if exc_type is None and self.recorder is not None and self.recorder.runs and not self._recorded_anything():
            raise CaptureError(self._nothing_recorded_message())

    def _undo(self) -> None:
        while self._restore:
            undo = self._restore.pop()
            undo()

    def _wrap_generate(self) -> None:
        model = self.model
        original = model.__dict__.get("generate")
        bound = model.generate if hasattr(model, "generate") else None
        if bound is None:
            return

        @functools.wraps(bound)
        def generate(*args: Any, **kwargs: Any) -> Any:
            assert self.recorder is not None
            _refuse_beam_search(model, kwargs)
            run = self.recorder.begin_run(generate=True)
            run.calls.append(_cpu_inputs(kwargs))
            self._in_generate = True
            try:
                out = bound(*args, **kwargs)
            finally:
                self._in_generate = False
            sequences = getattr(out, "sequences", out)
            if isinstance(sequences, torch.Tensor):
                run.sequences = sequences.detach().to("cpu")
            return out

        model.generate = generate
        if original is None:
            self._restore.append(lambda: model.__dict__.pop("generate", None))
        else:
            self._restore.append(functools.partial(setattr, model, "generate", original))

    def _on_forward(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        assert self.recorder is not None
        if not self._in_generate:
            self.recorder.begin_run()
        inputs = _cpu_inputs(kwargs)
        if args and isinstance(args[0], torch.Tensor) and "input_ids" not in inputs:
            first = "pixel_values" if args[0].is_floating_point() else "input_ids"
            inputs[first] = args[0].detach().to("cpu")
        self.recorder.current.calls.append(inputs)

    # -- results ---------------------------------------------------------------------------------
    def _recorded_anything(self) -> bool:
        assert self.recorder is not None
        return any(run.dense or run.qk for run in self.recorder.runs)

    def _nothing_recorded_message(self) -> str:
        assert self.recorder is not None
        name = type(self.model).__name__
        if self.recorder.calls_seen == 0 and self._legacy is not None:
            return (
                f"{name} computes attention in modules of its own (not through transformers' AttentionInterface) "
                "and they returned no attention probabilities with output_attentions=True (flash-only kernels, "
                "state-space or custom blocks), so mmviz cannot record it."
            )
        if self.recorder.calls_seen == 0:
            return (
                f"the model ran but no attention went through transformers' AttentionInterface: {name} computes "
                "attention in a module of its own, so mmviz cannot record it. Load the model with "
                "attn_implementation='eager' and use output_attentions=True instead."
            )
        return (
            f"{name} ran but none of its attention modules matched layers=/heads=/modules= "
            f"(modules seen: {sorted(self.recorder.groups_seen)})"
        )

    @property
    def traces(self) -> list[AttentionTrace]:
        """One ``AttentionTrace`` per forward call (or per ``generate`` call) in the block."""
        if self.recorder is None or not self.recorder.runs:
            raise CaptureError("nothing was captured: call the model (or model.generate) inside the `with` block")
        if self._traces is None:
            from mmviz.capture._build import build_trace

            runs: list[Run] = [r for r in self.recorder.runs if r.dense or r.qk]
            if not runs:
                raise CaptureError(self._nothing_recorded_message())
            self._traces = [build_trace(run, self.model, self.processor, self.recorder.heads) for run in runs]
        return self._traces

    @property
    def attention(self) -> AttentionTrace:
        """The ``AttentionTrace`` of the last forward (or ``generate``) call in the block."""
        return self.traces[-1]


def _refuse_beam_search(model: torch.nn.Module, kwargs: dict[str, Any]) -> None:
    """Raises before anything runs when ``generate`` would search beams (their cache is reordered each step)."""
    config = kwargs.get("generation_config") or getattr(model, "generation_config", None)
    beams = kwargs.get("num_beams", getattr(config, "num_beams", 1)) or 1
    if int(beams) > 1:
        raise CaptureError(
            f"mmviz.capture assembles greedy and sampled generation, not beam search (num_beams={beams}): beams "
            "reorder their cache at every step. Run generate outside the capture, then capture one forward pass "
            "over the sequence it returned, which records the same attention teacher-forced:\n"
            "    sequences = model.generate(**inputs, num_beams=...)\n"
            "    with mmviz.capture(model, processor=processor) as cap:\n"
            "        model(input_ids=sequences)"
        )
