"""Collects what the recording attention function sees, grouped by module stack and layer.

The recorder names each attention module after its place in the model (``language_model``,
``vision_tower``, ``qformer.cross_attention``, ``decoder.cross_attention``, ...), keeps only the
layers and heads asked for, and moves every tensor to CPU as soon as it is recorded, so accelerator
memory does not grow with the number of layers. Raw tensors only: reductions happen in ``mmviz.data``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mmviz._hf.attention import causal_without_mask
from mmviz._hf.modules import named_stacks
from mmviz.capture import DEFAULT_QK_THRESHOLD
from mmviz.capture._budget import Budget
from mmviz.errors import CaptureError


@dataclass(frozen=True)
class Target:
    """One recorded layer: the module stack's name and the layer index within it."""

    group: str
    layer: int


@dataclass
class Run:
    """Everything recorded during one forward call, or one ``generate`` call."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    dense: dict[Target, list[torch.Tensor]] = field(default_factory=dict)
    qk: dict[Target, list[dict[str, Any]]] = field(default_factory=dict)
    generate: bool = False
    sequences: torch.Tensor | None = None
    buffers: dict[str, np.ndarray] = field(default_factory=dict)
    """Per stack, ``[batch, layers, heads, query, key]`` float16 written in place as layers run."""
    slots: dict[str, list[Target]] = field(default_factory=dict)
    """Per stack, the layer written into each slot of its buffer, in call order."""
    pieces: dict[Target, list[bool]] = field(default_factory=dict)
    """Per layer and stored dense call, whether the call is the next piece of the previous call's sequence
    (see ``Recorder.continues``)."""
    partial: dict[Target, torch.Tensor] = field(default_factory=dict)
    """Per layer, the float16 block of the call whose query rows are arriving in chunks."""
    complete: bool = False
    """Whether the forward (or ``generate``) call returned; ``False`` while it runs and after it raised."""


class Recorder:
    """Receives tensors from the recording attention function during a capture.

    Args:
        model: the model being captured.
        original: original attention implementation per config id (``"sdpa"``, ``"eager"``, ...).
        default_implementation: implementation for modules without a known config.
        layers: layer indices to record (per stack), or a dict of stack name → indices, or ``None`` for all.
        heads: head indices to store, or ``None`` for all.
        modules: stack names to record, or ``None`` for all.
        store: ``"dense"``, ``"qk"`` or ``"auto"``.
        qk_threshold: key length from which ``"auto"`` chooses ``"qk"``.
        budget: bytes of dense probabilities the capture may hold (charged as stores are allocated).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        original: dict[int, str],
        default_implementation: str,
        layers: Sequence[int] | dict[str, Sequence[int]] | None,
        heads: Sequence[int] | None,
        modules: Sequence[str] | None,
        store: str,
        qk_threshold: int = DEFAULT_QK_THRESHOLD,
        budget: Budget | None = None,
    ) -> None:
        self.names: dict[int, tuple[str, Target]] = {}
        for path, sub, (group, layer) in named_stacks(model):
            self.names[id(sub)] = (path, Target(group, layer))
        self.original = original
        self.default_implementation = default_implementation
        self.layers = layers
        self.heads = None if heads is None else sorted({int(h) for h in heads})
        self.modules = None if modules is None else set(modules)
        self.store = store
        self.qk_threshold = qk_threshold
        self.budget = budget if budget is not None else Budget(None)
        self.thread = threading.get_ident()
        self.closed = False
        """Set when the capture closes: a recorder left in some context's list records nothing more."""
        self._qk: bool | None = {"dense": False, "qk": True}.get(store)
        self.runs: list[Run] = []
        self._expected: dict[str, int] = {}
        self.calls_seen = 0
        self.groups_seen: set[str] = set()
        self._interface_modules: set[int] = set()
        self._last_query: dict[Target, weakref.ref[torch.Tensor]] = {}
        self._piece_end: dict[Target, tuple[weakref.ref[torch.Tensor], tuple[int, ...]]] = {}
        self.warned_dense = False
        """Whether a legacy module was stored densely under ``store="qk"`` (warned once per capture)."""

    # -- decisions ---------------------------------------------------------------------------------
    def owns(self, module: torch.nn.Module) -> bool:
        """Whether ``module`` belongs to the captured model."""
        return id(module) in self.names

    def original_implementation(self, module: torch.nn.Module) -> str:
        """The implementation this module's config had before the capture."""
        config = getattr(module, "config", None)
        impl = self.original.get(id(config), self.default_implementation) if config is not None else None
        impl = impl or self.default_implementation
        return impl if impl in ("eager", "sdpa") else "sdpa"

    def used_interface(self, module: torch.nn.Module) -> bool:
        """Whether ``module`` called the recording attention function during this capture."""
        return id(module) in self._interface_modules

    def target(self, module: torch.nn.Module, interface: bool = True) -> Target | None:
        """Where to record this module's call, or ``None`` if it is not wanted or not part of this model.

        Args:
            module: the attention module.
            interface: whether the call came through the attention interface (``False``: a legacy module's
                returned probabilities, see ``mmviz.capture._legacy``).

        Only calls made in the thread that opened the capture, while it is open, are recorded.
        """
        if self.closed or threading.get_ident() != self.thread:
            return None
        self.calls_seen += 1
        if interface:
            self._interface_modules.add(id(module))
        entry = self.names.get(id(module))
        if entry is None:
            return None
        target = entry[1]
        self.groups_seen.add(target.group)
        if self.modules is not None and target.group not in self.modules:
            return None
        wanted = self.layers.get(target.group) if isinstance(self.layers, dict) else self.layers
        if isinstance(self.layers, dict) and target.group not in self.layers:
            wanted = None
        if wanted is not None and target.layer not in wanted:
            return None
        return target

    def wants_qk(self, key_length: int) -> bool:
        """Whether this capture keeps queries and keys (decided once, on the first call)."""
        if self._qk is None:
            self._qk = int(key_length) >= self.qk_threshold
        return self._qk

    def continues(self, target: Target, query: torch.Tensor) -> bool:
        """Whether this call's queries are the next piece of the previous call's sequence.

        Some attention modules split one sequence into pieces and call the attention function once per
        piece (Qwen2-VL's vision tower once per image, Qwen2.5-VL's once per window of patches, both through
        ``cu_seqlens``). The pieces are views of one query tensor, one after the other along the sequence
        axis, and all alive during the module's call; a decoding step or another application of the layer
        brings a query tensor of its own. The calls of one module call are joined into one block-diagonal
        matrix when the trace is built.
        """
        step, start = int(query.stride(2)), int(query.storage_offset())
        here = (query.untyped_storage().data_ptr(), step, int(query.shape[0]), int(query.shape[1]))
        previous = self._piece_end.get(target)
        self._piece_end[target] = (weakref.ref(query), (*here, start + int(query.shape[2]) * step))
        if previous is None or previous[0]() is None:
            return False
        return previous[1] == (*here, start)

    # -- runs --------------------------------------------------------------------------------------
    def begin_run(self, generate: bool = False) -> Run:
        """Starts a new run (a forward call outside generation, or a whole ``generate`` call)."""
        run = Run(generate=generate)
        self.runs.append(run)
        return run

    @property
    def current(self) -> Run:
        """The run being recorded (one is started if a module is called outside any forward hook)."""
        return self.runs[-1] if self.runs else self.begin_run()

    def _heads(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.heads is None:
            return tensor
        if max(self.heads) >= tensor.shape[1]:
            raise CaptureError(
                f"heads={self.heads} asks for head {max(self.heads)}, but the model has {tensor.shape[1]}"
            )
        return tensor[:, self.heads]

    def add_dense(
        self,
        target: Target,
        probs: torch.Tensor | None,
        rows: tuple[int, int, int] | None = None,
        query: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Stores ``[batch, heads, query, key]`` probabilities as float16 on CPU.

        Args:
            target: the layer.
            probs: the call's probabilities, or a block of its query rows.
            rows: ``(start, stop, total)`` when ``probs`` holds query rows ``start:stop`` of ``total``; the
                blocks of one call arrive in order.
            query: the queries of the call (the whole call's, also for a block). A call with the very
                queries of the layer's previous call computes the same probabilities again (DiffLlama
                attends twice, to two value halves) and is not stored twice; a layer applied again
                (shared or looped layers) brings new queries and is stored as another application.

        Returns:
            The float16 store of the call (filled up to ``stop``).
        """
        if probs is None:
            raise CaptureError(
                f"the eager attention of {target.group!r} layer {target.layer} returned no probabilities"
            )
        kept = self._heads(probs.detach())
        run = self.current
        calls = run.dense.setdefault(target, [])
        start, stop, total = rows if rows is not None else (0, kept.shape[2], kept.shape[2])
        if query is not None:
            previous = self._last_query.get(target)
            if calls and target not in run.partial and previous is not None and previous() is query:
                return calls[-1]  # the same probabilities, computed again for other values
            self._last_query[target] = weakref.ref(query)
        if start == 0:
            run.pieces.setdefault(target, []).append(query is not None and self.continues(target, query))
            shape = (kept.shape[0], kept.shape[1], total, kept.shape[3])
            slot = None if run.generate or calls else self._buffer_slot(run, target, shape)
            if slot is None:
                self.budget.charge(2 * int(np.prod(shape)), _recording(target), 1, shape[1], shape[3])
            run.partial[target] = slot if slot is not None else torch.empty(shape, dtype=torch.float16)
        store = run.partial[target]
        store[:, :, start:stop].copy_(kept)  # to CPU and to float16 in one pass
        if stop == total:
            calls.append(run.partial.pop(target))
        return store

    def _buffer_slot(self, run: Run, target: Target, shape: tuple[int, ...]) -> torch.Tensor | None:
        """The slot of one layer in its stack's ``[batch, layers, heads, query, key]`` array (a view).

        The stack's array is allocated at its first layer, sized by the layers the model has in that stack,
        so the trace needs no second copy of the probabilities. ``None`` where the call does not fit
        (another shape, more calls than layers): it is then stored on its own.
        """
        group = target.group
        buffer = run.buffers.get(group)
        if buffer is None:
            capacity = self._expected_layers(group)
            if capacity < 1:
                return None
            nbytes = 2 * capacity * int(np.prod(shape))
            self.budget.charge(nbytes, _recording(target), capacity, shape[1], shape[3])
            buffer = np.empty((shape[0], capacity, *shape[1:]), dtype=np.float16)
            run.buffers[group] = buffer
        slots = run.slots.setdefault(group, [])
        if len(slots) >= buffer.shape[1] or (buffer.shape[0], *buffer.shape[2:]) != tuple(shape):
            return None
        slots.append(target)
        return torch.from_numpy(buffer[:, len(slots) - 1])

    def _expected_layers(self, group: str) -> int:
        """How many layers of a stack this capture records (from the model's module names and filters)."""
        if group not in self._expected:
            layers = {t.layer for _, t in self.names.values() if t.group == group}
            wanted = self.layers.get(group) if isinstance(self.layers, dict) else self.layers
            if wanted is not None:
                layers &= {int(x) for x in wanted}
            self._expected[group] = len(layers)
        return self._expected[group]

    def add_qk(
        self,
        target: Target,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        mask: torch.Tensor | None,
        kwargs: dict[str, Any],
    ) -> None:
        """Stores post-position-encoding queries and keys, and the mask, for exact recomputation.

        Each call adds a step ``{"query": [batch, heads, query, dim], "key": [batch, kv_heads, key, dim],
        "mask": [batch, query, key] bool or None, ...}`` (CPU tensors in the model's dtype). A decoding
        step whose keys are the previous step's keys plus its own (a growing KV cache) keeps only its new
        keys, in ``"key_new"``, and its ``"key"`` is a placeholder of the right shape that holds no memory,
        so a long generation stores every key once (``_stack_qk`` joins them).
        """
        for unsupported in ("position_bias", "s_aux", "sinks"):
            if kwargs.get(unsupported) is not None:
                raise CaptureError(
                    f"store='qk' cannot recompute attention with {unsupported!r} ({target.group!r}); "
                    "capture with store='dense' and fewer layers=/heads= instead"
                )
        q_len, k_len = query.shape[2], key.shape[2]
        if mask is not None and mask.dtype != torch.bool:
            mask = mask > torch.finfo(mask.dtype).min / 2
        causal = mask is None and causal_without_mask(module, query, kwargs)
        sliding = kwargs.get("sliding_window")
        if sliding is not None and mask is None and k_len > int(sliding):
            raise CaptureError(
                "store='qk' needs an explicit mask for sliding-window attention; capture with store='dense'"
            )
        if mask is not None:
            mask = _cpu_mask(mask[:, 0, :, :k_len].expand(query.shape[0], -1, -1))
        steps = self.current.qk.setdefault(target, [])
        previous = steps[-1] if steps else None
        step: dict[str, Any] = {
            "query": _cpu_copy(self._heads(query.detach())),
            "mask": mask,
            "scaling": float(kwargs["scaling"]) if kwargs.get("scaling") is not None else query.shape[-1] ** -0.5,
            "softcap": kwargs.get("softcap"),
            "causal": causal,
            "heads": query.shape[1],
            "piece": self.continues(target, query),
        }
        total = previous["key"].shape[2] + q_len if previous is not None else k_len
        # a growing cache adds this step's keys; a sliding-window cache also dropped its oldest keys
        if previous is not None and q_len < k_len <= total:
            if k_len < total:
                step["mask"] = _slid_mask(mask, query.shape[0], q_len, k_len, total)
            step["key"] = _placeholder(key, total)
            step["key_new"] = _cpu_copy(key.detach()[:, :, k_len - q_len :])
        else:
            step["key"] = _cpu_copy(key.detach())
        steps.append(step)


def _recording(target: Target) -> str:
    return f"recording {target.group!r} layer {target.layer}"


_masks_on_cpu: dict[int, tuple[weakref.ref[torch.Tensor], torch.Tensor]] = {}


def _cpu_mask(mask: torch.Tensor) -> torch.Tensor:
    """The mask on CPU, copied once however many layers share it (a model builds one mask per call)."""
    if mask.device.type == "cpu":
        return mask
    base = mask._base if mask._base is not None else mask
    for dead in [k for k, (ref, _) in _masks_on_cpu.items() if ref() is None]:
        del _masks_on_cpu[dead]
    entry = _masks_on_cpu.get(id(base))
    if entry is not None and entry[0]() is base and entry[1].shape == mask.shape:
        return entry[1]
    cpu = mask.to("cpu")
    _masks_on_cpu[id(base)] = (weakref.ref(base), cpu)
    return cpu


def _cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU tensor with its own storage: a view of a bigger tensor (fused QKV) would keep that alive."""
    if tensor.device.type != "cpu":
        return tensor.to("cpu")
    if tensor.untyped_storage().nbytes() > tensor.numel() * tensor.element_size():
        return tensor.clone(memory_format=torch.contiguous_format)
    return tensor


def _placeholder(like: torch.Tensor, length: int | None = None) -> torch.Tensor:
    """A tensor of ``like``'s shape (``length`` keys) and dtype without memory (for keys stored elsewhere)."""
    shape = like.shape if length is None else (*like.shape[:2], length, *like.shape[3:])
    return torch.zeros((), dtype=like.dtype).expand(shape)


def _slid_mask(mask: torch.Tensor | None, batch: int, q_len: int, k_len: int, total: int) -> torch.Tensor:
    """``[batch, query, total]`` mask of a step whose cache kept only the last ``k_len`` of ``total`` keys.

    The kept keys end at the step's last query; the dropped keys before them are masked out.
    """
    if mask is None:  # causal over the kept keys
        mask = (torch.arange(k_len)[None, :] <= torch.arange(q_len)[:, None] + k_len - q_len).expand(batch, -1, -1)
    dropped = torch.zeros(batch, q_len, total - k_len, dtype=torch.bool)
    return torch.cat([dropped, mask.to("cpu", torch.bool)], dim=-1)


def assemble_dense(steps: list[torch.Tensor]) -> np.ndarray:
    """Joins the calls of one layer into one ``[batch, heads, query, key]`` float16 matrix.

    A single call is returned as is. During generation with a KV cache each call adds query rows and
    keys; rows are placed at their offsets and keys beyond a step's cache length stay zero (causal). A
    sliding-window cache (Gemma 3's local layers) keeps only the last keys: a step's keys then end at its
    own position, and the keys that left the cache stay zero.
    """
    if len(steps) == 1:
        return steps[0].numpy()
    b, h = steps[0].shape[:2]
    total_q = sum(s.shape[2] for s in steps)
    ends = np.cumsum([s.shape[2] for s in steps])
    # a prefill (queries = keys) and cached steps whose keys never reach past their own position
    cached = steps[0].shape[2] == steps[0].shape[3] and all(
        s.shape[2] < s.shape[3] <= end for s, end in zip(steps[1:], ends[1:])
    )
    total_k = total_q if cached else max(s.shape[3] for s in steps)
    out = np.zeros((b, h, total_q, total_k), dtype=np.float16)
    row = 0
    for s, end in zip(steps, ends):
        first = int(end) - s.shape[3] if cached else 0
        out[:, :, row : row + s.shape[2], first : first + s.shape[3]] = s.numpy()
        row += s.shape[2]
    return out
