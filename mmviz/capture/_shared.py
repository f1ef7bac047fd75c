"""What the open captures of one model share: its own attention implementation and one ``generate`` wrapper.

Captures of a model may be nested, and may even be exited out of order (two ``__enter__``/``__exit__``
pairs driven by hand, an ``ExitStack`` unwound oddly). The first capture to open switches the model's
configs to the recording implementation and wraps ``generate``; the last one to close puts back what the
model had before the first, whatever the order. Calls are dispatched to the captures opened in the calling
thread only.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from mmviz._hf.modules import all_configs
from mmviz.capture._legacy import legacy_configs, use_eager_classes

_LOCK = threading.Lock()


class GenerateListener(Protocol):
    """What a capture does around a ``generate`` call made in its thread."""

    thread: int

    def begin_generate(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Called before ``generate`` runs; returns a handle given back to ``end_generate``."""
        ...

    def end_generate(self, handle: Any, output: Any) -> None:
        """Called after ``generate`` ran; ``output`` is ``None`` when it raised."""
        ...


@dataclass
class ModelState:
    """The open captures of one model, and what to restore when the last one closes.

    Attributes:
        originals: each config with the implementation it had before the first capture.
        captures: the open captures, in the order they were opened.
        restore_generate: puts the model's own ``generate`` back (``None``: the model has none).
    """

    originals: list[tuple[Any, Any]]
    captures: list[GenerateListener] = field(default_factory=list)
    restore_generate: Callable[[], None] | None = None
    legacy: list[Any] | None = None
    """Configs of (sub-)models whose attention modules compute attention themselves (switched to eager)."""
    restore_classes: Callable[[], None] | None = None
    """Turns legacy modules switched to their eager class back (``_legacy.use_eager_classes``)."""


_STATES: dict[int, ModelState] = {}


def join(model: torch.nn.Module, capture: GenerateListener, implementation: str) -> ModelState:
    """Registers an opening capture; the first one switches ``model`` to ``implementation``.

    Returns:
        The model's shared state (``originals`` hold the implementations before any capture).
    """
    with _LOCK:
        state = _STATES.get(id(model))
        if state is None:
            configs = all_configs(model)
            state = ModelState([(c, c._attn_implementation_internal) for c in configs])
            try:
                for config in configs:
                    config._attn_implementation_internal = implementation
                state.legacy = legacy_configs(model)
                known = {id(c) for c, _ in state.originals}
                for config in state.legacy or ():  # modules computing attention themselves read "eager"
                    if id(config) not in known:
                        state.originals.append((config, config._attn_implementation_internal))
                    config._attn_implementation_internal = "eager"
                if state.legacy is not None:
                    state.restore_classes = use_eager_classes(model)
                state.restore_generate = _wrap_generate(model, state)
            except BaseException:
                _restore(model, state)
                raise
            _STATES[id(model)] = state
        state.captures.append(capture)
        return state


def leave(model: torch.nn.Module, capture: GenerateListener) -> None:
    """Unregisters a closing capture (in any order); the last one restores the model."""
    with _LOCK:
        state = _STATES.get(id(model))
        if state is None or capture not in state.captures:
            return
        state.captures.remove(capture)
        if not state.captures:
            del _STATES[id(model)]
            _restore(model, state)


def _restore(model: torch.nn.Module, state: ModelState) -> None:
    if state.restore_generate is not None:
        state.restore_generate()
    if state.restore_classes is not None:
        state.restore_classes()
    for config, value in state.originals:
        config._attn_implementation_internal = value


def _wrap_generate(model: torch.nn.Module, state: ModelState) -> Callable[[], None] | None:
    """Wraps ``model.generate`` once for all of its captures; returns what undoes it."""
    own = model.__dict__.get("generate")
    bound = getattr(model, "generate", None)
    if bound is None:
        return None

    @functools.wraps(bound)
    def generate(*args: Any, **kwargs: Any) -> Any:
        me = threading.get_ident()
        listeners = [c for c in list(state.captures) if c.thread == me]
        handles = []
        try:
            for listener in listeners:
                handles.append((listener, listener.begin_generate(args, kwargs)))
            out = bound(*args, **kwargs)
        except BaseException:
            for listener, handle in handles:
                listener.end_generate(handle, None)
            raise
        for listener, handle in handles:
            listener.end_generate(handle, out)
        return out

    model.generate = generate  # type: ignore[assignment]
    if own is None:
        return lambda: model.__dict__.pop("generate", None)
    return functools.partial(setattr, model, "generate", own)
