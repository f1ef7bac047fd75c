"""The ``with mmviz.capture(model) as cap:`` context manager for transformers models."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from mmviz.capture import DEFAULT_QK_THRESHOLD, _interface, _shared
from mmviz.capture._arguments import DenseEstimate, check_selection
from mmviz.capture._budget import Budget, sequence_length
from mmviz.capture._legacy import LegacyHooks
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


def _call_inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The inputs of a forward call that name its positions, on the CPU (a first positional tensor included)."""
    inputs = _cpu_inputs(kwargs)
    if args and isinstance(args[0], torch.Tensor) and "input_ids" not in inputs:
        first = "pixel_values" if args[0].is_floating_point() else "input_ids"
        inputs[first] = args[0].detach().to("cpu")
    return inputs


def _entry_points(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Sub-models a user may call directly: the model's children and grandchildren that take inputs.

    Containers (``ModuleList``, ``ModuleDict``) and parameter-only leaves are left out: they are never called
    with a model's inputs.
    """
    found: list[torch.nn.Module] = []
    for child in model.children():
        for sub in (child, *child.children()):
            if isinstance(sub, (torch.nn.ModuleList, torch.nn.ModuleDict)) or not any(True for _ in sub.children()):
                continue
            found.append(sub)
    return found


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
        max_bytes: int | None = None,
    ) -> None:
        if store not in ("auto", "dense", "qk"):
            raise ValueError(f"store must be 'auto', 'dense' or 'qk', not {store!r}")
        if not hasattr(model, "config") or not hasattr(model.config, "_attn_implementation_internal"):
            raise CaptureError(
                f"{type(model).__name__} is not a transformers model (no config with an attention implementation). "
                "mmviz.capture records models whose attention goes through transformers' AttentionInterface, "
                "and diffusers pipelines."
            )
        if isinstance(qk_threshold, bool) or not isinstance(qk_threshold, int) or qk_threshold < 1:
            raise ValueError(f"qk_threshold must be a positive number of keys, not {qk_threshold!r}")
        picked, kept, names = check_selection(model, layers, heads, modules)
        self.budget = Budget(max_bytes)
        self._estimate = DenseEstimate(model, picked, kept, names)
        self.model = model
        self.processor = processor
        self._options: dict[str, Any] = {
            "layers": picked,
            "heads": kept,
            "modules": names,
            "store": store,
            "qk_threshold": qk_threshold,
            "budget": self.budget,
        }
        self.recorder: Recorder | None = None
        self._restore: list[Callable[[], None]] = []
        self._traces: list[AttentionTrace] | None = None
        self._in_generate = False
        self._entered: torch.nn.Module | None = None
        self.thread = threading.get_ident()
        self._foreign_calls = 0
        self._legacy: list[Any] | None = None

    # -- entering and leaving ------------------------------------------------------------------
    def __enter__(self) -> Capture:
        if self.recorder is not None:
            raise CaptureError("this capture is already active; start a new `with mmviz.capture(...)` block instead")
        _interface.register()
        model = self.model
        self.thread = threading.get_ident()
        self._foreign_calls = 0
        state = _shared.join(model, self, _interface.IMPLEMENTATION)  # the first capture switches the model
        self._restore.append(functools.partial(_shared.leave, model, self))
        try:
            original = {id(c): value for c, value in state.originals}
            top = original.get(id(model.config)) or "sdpa"
            self.recorder = Recorder(model, original, top, **self._options)
            self._traces = None
            handle = model.register_forward_pre_hook(self._on_forward, with_kwargs=True)
            self._restore.append(handle.remove)
            handle = model.register_forward_hook(self._on_forward_end, always_call=True)
            self._restore.append(handle.remove)
            self._entered = None
            for entry in _entry_points(model):  # get_image_features(), model.vision_model(...), ...
                handle = entry.register_forward_pre_hook(self._on_entry, with_kwargs=True)
                self._restore.append(handle.remove)
                handle = entry.register_forward_hook(self._on_entry_end, always_call=True)
                self._restore.append(handle.remove)
            self._legacy = state.legacy
            if self._legacy is not None:  # modules computing attention themselves: their own hooks
                self._restore.append(LegacyHooks.attach(model, self.recorder))
            _interface.ACTIVE.set([*(_interface.ACTIVE.get() or []), self.recorder])
            self._restore.append(self._deactivate)
        except BaseException:
            self._undo()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._undo()
        if exc_type is None and self.recorder is not None and self.recorder.runs and not self._recorded_anything():
            raise CaptureError(self._nothing_recorded_message())
        if exc_type is None and self._foreign_calls and (self.recorder is None or not self.recorder.runs):
            raise CaptureError(self._other_thread_message())

    def _undo(self) -> None:
        while self._restore:
            undo = self._restore.pop()
            undo()

    def _deactivate(self) -> None:
        """Stops the recorder and takes it off the active list (also when captures close out of order)."""
        assert self.recorder is not None
        self.recorder.closed = True
        _interface.ACTIVE.set([r for r in _interface.ACTIVE.get() or [] if r is not self.recorder])

    def _other_thread_message(self) -> str:
        return (
            f"{type(self.model).__name__} ran {self._foreign_calls} time(s) in another thread than the one that "
            "opened the capture, and mmviz records only the calls made in the thread of the `with` block (other "
            "threads' calls run unrecorded, at full speed). Call the model in that thread, or open the capture "
            "inside the worker thread."
        )

    # -- generate ----------------------------------------------------------------------------------
    def begin_generate(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Run:
        """Starts the run of a ``generate`` call (called by the model's shared ``generate`` wrapper)."""
        assert self.recorder is not None
        _refuse_beam_search(self.model, kwargs)
        self._check_budget(kwargs, args, "before generate", generated=_new_tokens(self.model, kwargs))
        run = self.recorder.begin_run(generate=True)
        run.calls.append(_cpu_inputs(kwargs))
        self._in_generate = True
        return run

    def end_generate(self, run: Run, output: Any) -> None:
        """Ends the run of a ``generate`` call; ``output`` is ``None`` when it raised (the run stays partial)."""
        self._in_generate = False
        if output is None:
            return
        run.complete = True
        sequences = getattr(output, "sequences", output)
        if isinstance(sequences, torch.Tensor):
            run.sequences = sequences.detach().to("cpu")

    def _on_forward(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        assert self.recorder is not None
        if threading.get_ident() != self.thread:  # another thread's call: it runs unrecorded
            self._foreign_calls += 1
            return
        if not self._in_generate:
            self._check_budget(kwargs, args, "before the forward")
            self.recorder.begin_run()
        self._entered = module
        self.recorder.current.calls.append(_call_inputs(args, kwargs))

    def _on_forward_end(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if threading.get_ident() != self.thread:
            return
        self._entered = None
        if output is None:  # the forward raised: its run stays partial
            return
        if not self._in_generate and self.recorder is not None and self.recorder.runs:
            self.recorder.runs[-1].complete = True

    def _on_entry(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """A sub-model called directly (``get_image_features``, ``model.vision_model(...)``) starts a run.

        Inside a forward of the model or another entry point, or during ``generate``, it is part of that run.
        """
        assert self.recorder is not None
        if threading.get_ident() != self.thread or self._in_generate or self._entered is not None:
            return
        self._check_budget(kwargs, args, "before the forward")
        self.recorder.begin_run()
        self._entered = module
        self.recorder.current.calls.append(_call_inputs(args, kwargs))

    def _on_entry_end(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if threading.get_ident() != self.thread or self._entered is not module:
            return
        self._entered = None
        if output is not None and self.recorder is not None and self.recorder.runs:  # None: it raised
            self.recorder.runs[-1].complete = True

    def _check_budget(self, kwargs: dict[str, Any], args: tuple[Any, ...], what: str, generated: int = 0) -> None:
        """Raises ``BudgetError`` before the model runs if its dense probabilities would pass the budget."""
        found = sequence_length(kwargs, args)
        store = self._options["store"]
        if found is None or store == "qk":
            return
        batch, length = found
        keys = length + generated + _cached_length(kwargs.get("past_key_values"))
        if store == "auto" and keys >= self._options["qk_threshold"]:
            return
        estimate = self._estimate.bytes(batch, length + generated, keys)
        if estimate is not None:
            nbytes, layers, heads = estimate
            self.budget.check(nbytes, what, layers, heads, keys)

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
            self._traces = []
            for run in runs:
                trace = build_trace(run, self.model, self.processor, self.recorder.heads)
                trace.complete = run.complete  # False: the call raised or was interrupted
                self._traces.append(trace)
        return self._traces

    @property
    def attention(self) -> AttentionTrace:
        """The ``AttentionTrace`` of the last forward (or ``generate``) call in the block."""
        return self.traces[-1]


def _new_tokens(model: torch.nn.Module, kwargs: dict[str, Any]) -> int:
    """How many tokens ``generate`` may add at most (``max_new_tokens``, else ``max_length`` less the prompt)."""
    config = kwargs.get("generation_config") or getattr(model, "generation_config", None)
    new = kwargs.get("max_new_tokens", getattr(config, "max_new_tokens", None))
    if new is not None:
        return int(new)
    longest = kwargs.get("max_length", getattr(config, "max_length", None))
    found = sequence_length(kwargs, ())
    return max(int(longest) - found[1], 0) if longest is not None and found is not None else 0


def _cached_length(cache: Any) -> int:
    """Tokens already in a KV cache handed to the forward (0 without one)."""
    length = getattr(cache, "get_seq_length", None)
    try:
        return int(length()) if callable(length) else 0
    except (TypeError, ValueError, IndexError, AttributeError):
        return 0


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
