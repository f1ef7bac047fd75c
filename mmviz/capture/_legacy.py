"""Capture for attention modules that compute attention themselves instead of calling the attention interface.

Older transformers models (BLOOM, GPT-Neo, DeBERTa, XLNet, FSMT, LED, BLIP, Data2Vec-Vision, ...) keep
their attention in a module of their own. They do not call ``mmviz_record``, but their eager path
hands the probabilities back when the forward call is given ``output_attentions=True``. For such a
model a capture:

* switches the configs that only these modules read to ``"eager"`` (the configs of modules that do call
  the interface stay on ``mmviz_record``);
* forces ``output_attentions=True`` on every forward call of the captured model and of its sub-models
  (``return_dict=True`` too, so that the attentions can be found by name; ``generate`` may call a
  sub-model only);
* notes, with a forward hook on every submodule, which module first returned each tensor (the attention
  module itself; the layers and the model only pass it on, or views of it), which names its stack and
  layer;
* after each such call, hands each probability tensor among the outputs' ``*attentions`` to the
  recorder (once, however many models pass it on), so traces are built by the same code as for the
  interface path;
* gives the caller the outputs of the uncaptured call: attentions are removed unless the caller asked
  for them, and a tuple is returned where the caller asked for one.

Everything is undone on exit, also when the block raises. Probabilities are kept densely: such a module
computes the whole matrix anyway, so ``store="qk"`` cannot apply (see ``docs/capture.md``).
"""

from __future__ import annotations

import functools
import inspect
import re
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from mmviz.errors import CaptureError

if TYPE_CHECKING:
    from mmviz.capture._recorder import Recorder

_ATTENTION_CLASS = re.compile(r"attention|attn", re.IGNORECASE)
_COMPUTES = ("softmax", "scaled_dot_product_attention", "flash_attn")
_INTERFACE = "all_attention_functions"
_source_kind: dict[type, str | None] = {}


def _kind(cls: type) -> str | None:
    """``"legacy"``, ``"interface"`` or ``None`` (not an attention class) for an attention module's class.

    A class named like an attention module whose source computes attention (a softmax, a fused kernel)
    without going through ``ALL_ATTENTION_FUNCTIONS`` is a legacy module; classes that only wrap others
    (``BertAttention`` around ``BertSelfAttention``) compute nothing themselves and are neither.
    """
    if cls in _source_kind:
        return _source_kind[cls]
    kind = None
    if _ATTENTION_CLASS.search(cls.__name__) and cls.__module__.split(".")[0] != "torch":
        try:
            source = inspect.getsource(cls).lower()
        except (OSError, TypeError):
            source = ""
        if _INTERFACE in source:
            kind = "interface"
        elif any(word in source for word in _COMPUTES):
            kind = "legacy"
    _source_kind[cls] = kind
    return kind


def computes_attention(module: torch.nn.Module) -> bool:
    """Whether ``module`` is an attention module that computes its attention itself (not through the interface)."""
    return _kind(type(module)) == "legacy"


def _owning_models(model: torch.nn.Module) -> Iterator[tuple[torch.nn.Module, torch.nn.Module]]:
    """``(module, the model it belongs to)`` for ``model`` and every submodule.

    The model a module belongs to is the nearest enclosing transformers model; a (sub-)model belongs to itself.
    """
    owners: dict[str, torch.nn.Module] = {}
    for path, sub in model.named_modules():
        parent = path.rsplit(".", 1)[0] if "." in path else ""
        is_model = sub is model or (hasattr(sub, "config") and hasattr(sub, "_can_set_attn_implementation"))
        owner = sub if is_model else owners.get(parent, model)
        owners[path] = owner
        yield sub, owner


def legacy_configs(model: torch.nn.Module) -> list[Any] | None:
    """The configs to switch to ``"eager"`` if ``model`` has legacy attention modules, else ``None``.

    A model has legacy attention when one of its attention classes computes attention itself, or when
    transformers says that one of its (sub-)models cannot set its attention implementation. The configs
    returned are those of the (sub-)models that hold legacy modules and no interface modules.
    """
    legacy: dict[int, Any] = {}
    interface: set[int] = set()
    found = False
    for sub, owner in _owning_models(model):
        config = getattr(owner, "config", None)
        kind = _kind(type(sub))
        can_set = getattr(sub, "_can_set_attn_implementation", None)
        if kind == "legacy" or (sub is owner and can_set is not None and not can_set()):
            found = True
            if config is not None:
                legacy[id(config)] = config
        elif kind == "interface" and config is not None:
            interface.add(id(config))
    if not found:
        return None
    return [c for key, c in legacy.items() if key not in interface and hasattr(c, "_attn_implementation_internal")]


_FAST_KERNEL = re.compile(r"sdpa|flash", re.IGNORECASE)


def _eager_base(cls: type) -> type | None:
    """The eager class a legacy sdpa/flash attention class derives from (``XSdpaSelfAttention(XSelfAttention)``)."""
    if not _FAST_KERNEL.search(cls.__name__):
        return None
    base = cls.__bases__[0] if cls.__bases__ else None
    if base is None or _FAST_KERNEL.search(base.__name__) or _kind(base) != "legacy":
        return None
    return base


def use_eager_classes(model: torch.nn.Module) -> Callable[[], None]:
    """Turns legacy sdpa/flash attention modules into their eager base class (same parameters); returns the undo.

    Older models pick their attention class when they are built (``DATA2VEC_VISION_SELF_ATTENTION_CLASSES
    [config._attn_implementation]``); the sdpa class cannot return probabilities, its eager base computes
    the same outputs and returns them.
    """
    swapped: list[tuple[torch.nn.Module, type]] = []
    for sub in model.modules():
        base = _eager_base(type(sub))
        if base is not None:
            swapped.append((sub, type(sub)))
            sub.__class__ = base

    def undo() -> None:
        for sub, cls in reversed(swapped):
            sub.__class__ = cls

    return undo


def _keyword_slot(forward: Callable[..., Any], name: str) -> int | None:
    """How many positional arguments may come before keyword ``name`` can be added to a call.

    ``None`` if ``forward`` takes no such argument (nor ``**kwargs``).
    """
    try:
        parameters = list(inspect.signature(forward).parameters.values())
    except (TypeError, ValueError):
        return None
    for i, p in enumerate(parameters):
        if p.name == name:
            return i if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) else len(parameters)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return len(parameters)
    return None


def _tensors(value: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    """The tensors of a module's output: itself, or the items of a tuple, list or ``ModelOutput``."""
    if isinstance(value, torch.Tensor):
        yield value
    elif depth < 2 and isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item, depth + 1)
    elif depth < 2 and hasattr(value, "values") and hasattr(value, "to_tuple"):
        for item in value.values():
            yield from _tensors(item, depth + 1)


def _attention_outputs(out: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """``(field, tensor)`` for every tensor under a ``*attentions`` field of a model output, in order.

    Nested outputs (a dual-tower model's ``vision_model_output``) are included.
    """
    if not hasattr(out, "items") or not hasattr(out, "to_tuple"):
        return
    for key, value in out.items():
        if key.endswith("attentions") and isinstance(value, (tuple, list)):
            for item in value:
                if isinstance(item, torch.Tensor):
                    yield key, item
                elif isinstance(item, (tuple, list)):  # pairs per layer
                    yield from ((key, t) for t in item if isinstance(t, torch.Tensor))
        elif hasattr(value, "to_tuple"):
            yield from _attention_outputs(value)


_PLAIN_FIELD_WORDS = {"", "encoder", "decoder", "cross", "text", "vision", "image", "self"}


def _stream(field: str) -> str | None:
    """The extra name of a field holding another attention stream, or ``None`` for the usual fields.

    ``decoder_ngram_attentions`` → ``"ngram"``; ``attentions``, ``encoder_attentions``, ``cross_attentions``
    → ``None``.
    """
    words = [w for w in field.removesuffix("attentions").split("_") if w not in _PLAIN_FIELD_WORDS]
    return "_".join(words) or None


_HEAD_COUNTS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "heads", "num_attn_heads")


def _fold(emitter: torch.nn.Module, tensor: torch.Tensor) -> torch.Tensor | None:
    """``[batch, heads, X, query, key]`` or ``[batch, X, heads, query, key]`` → ``[batch · X, heads, query, key]``.

    Three axes, ``[batch · heads, query, key]``, are split into ``[batch, heads, query, key]``.

    Windows (Hiera's mask units) or streams (ProphetNet's n-grams) go to the batch axis, as Swin's windows
    do; the heads axis is the one whose size is the module's head count. ``None`` where that is ambiguous.
    """
    heads = next((v for a in _HEAD_COUNTS if isinstance(v := getattr(emitter, a, None), int)), None)
    if tensor.ndim == 3:  # [batch · heads, query, key] (SAM's vision attention)
        return tensor.reshape(-1, heads, *tensor.shape[1:]) if heads and tensor.shape[0] % heads == 0 else None
    axes = [a for a in (1, 2) if tensor.shape[a] == heads]
    if len(axes) == 2 and getattr(emitter, "ngram", None) == tensor.shape[1]:
        axes = [2]  # ProphetNet: [batch, ngram, heads, ...]
    if len(axes) != 1:
        return None
    other = 3 - axes[0]
    moved = tensor.movedim(other, 1)
    return moved.reshape(-1, *moved.shape[2:])


def _without_attentions(out: Any) -> Any:
    """A copy of a model output without its ``*attentions`` fields (nested outputs too), as an uncaptured call."""
    if not hasattr(out, "items") or not hasattr(out, "to_tuple"):
        return out
    fields = {k: _without_attentions(v) for k, v in out.items() if not k.endswith("attentions")}
    if len(fields) == len(out) and all(fields[k] is v for k, v in out.items()):
        return out
    return type(out)(**fields)


def _storage(tensor: torch.Tensor) -> int:
    return int(tensor.untyped_storage().data_ptr())


def is_probabilities(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is ``[batch, heads, query, key]`` softmax rows (summing to 1, less where masked).

    Five axes: windows or streams beside the heads; three: batch and heads in one axis (see ``_fold``).
    """
    if tensor.ndim not in (3, 4, 5) or not tensor.is_floating_point() or tensor.numel() == 0:
        return False
    sums = tensor.detach().float().sum(-1)
    return bool(tensor.min() >= 0) and bool(sums.max() <= 1 + 1e-3)


def unband(probs: torch.Tensor, window: int) -> torch.Tensor:
    """Sliding-window probabilities (Longformer, LED's encoder) laid out over key positions.

    Args:
        probs: ``[batch, heads, query, 2 · window + 1]``: the attention of query ``i`` to keys
            ``i - window … i + window``.
        window: keys on each side of the query.

    Returns:
        ``[batch, heads, query, query]`` with every probability at its key's position (keys beyond the
        sequence ends, which the model masks, are dropped).
    """
    b, h, n, band = probs.shape
    offsets = torch.arange(n, device=probs.device)[:, None] + torch.arange(band, device=probs.device)[None, :]
    padded = probs.new_zeros((b, h, n, n + 2 * window))
    padded.scatter_(-1, offsets.expand(b, h, n, band), probs)
    return padded[..., window : window + n].clone()


class LegacyHooks:
    """The hooks on one model that collect the attention its legacy modules return, for every active capture.

    One set of hooks per model however many captures of it are nested; each capture's recorder gets
    every collected tensor (filtered by its own ``layers=``/``heads=``/``modules=``).
    """

    _by_model: ClassVar[weakref.WeakKeyDictionary[torch.nn.Module, LegacyHooks]] = weakref.WeakKeyDictionary()

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.recorders: list[Recorder] = []
        self._handles: list[Any] = []
        self._first: dict[int, tuple[torch.Tensor, torch.nn.Module]] = {}
        """Storage address → (the first tensor returned on it, the module that returned it), for one forward call.

        Keyed by storage, so that a view made further up (Longformer's encoder transposes each layer's
        probabilities) is still named after the attention module; the tensors are held until the call ends
        so that no address is reused meanwhile."""
        self._asked: list[tuple[bool, bool]] = []  # per forward call in flight: (attentions, tuple)
        self._slots: dict[int, tuple[int | None, int | None]] = {}
        """Per hooked (sub-)model: where ``output_attentions`` and ``return_dict`` may be added by keyword."""
        self._recorded: set[int] = set()
        """Storages recorded during the outermost call (a sub-model's attentions come back through its parent)."""

    # -- installing --------------------------------------------------------------------------------
    @classmethod
    def attach(cls, model: torch.nn.Module, recorder: Recorder) -> Callable[[], None]:
        """Adds ``recorder`` to the model's hooks (installing them first); returns the undo."""
        hooks = cls._by_model.get(model)
        if hooks is None:
            hooks = cls(model)
            hooks._install()
            cls._by_model[model] = hooks
        hooks.recorders.append(recorder)
        return functools.partial(hooks._detach, recorder)

    def _install(self) -> None:
        """Hooks the calls of every (sub-)model and notes what every other module returns.

        ``generate`` may call a sub-model only (BLIP's calls its text decoder's ``generate``).
        """
        try:
            for sub, owner in _owning_models(self.model):
                if sub is owner:
                    forward = sub.forward
                    self._slots[id(sub)] = (
                        _keyword_slot(forward, "output_attentions"),
                        _keyword_slot(forward, "return_dict"),
                    )
                    self._handles.append(sub.register_forward_pre_hook(self._before, with_kwargs=True))
                    self._handles.append(sub.register_forward_hook(self._after, with_kwargs=True))
                else:
                    self._handles.append(sub.register_forward_hook(self._note))
        except BaseException:
            self._remove()
            raise

    def _detach(self, recorder: Recorder) -> None:
        if recorder in self.recorders:
            self.recorders.remove(recorder)
        if not self.recorders:
            self._remove()
            if self._by_model.get(self.model) is self:
                del self._by_model[self.model]

    def _remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()
        self._first.clear()
        self._asked.clear()
        self._recorded.clear()

    # -- hooks ---------------------------------------------------------------------------------------
    def _before(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        config = getattr(module, "config", None)
        asked = kwargs.get("output_attentions")
        asked = bool(getattr(config, "output_attentions", False)) if asked is None else bool(asked)
        return_dict = kwargs.get("return_dict")
        wants_tuple = return_dict is False or (return_dict is None and getattr(config, "return_dict", True) is False)
        attentions_slot, return_dict_slot = self._slots.get(id(module), (None, None))
        set_return_dict = wants_tuple and return_dict_slot is not None and len(args) <= return_dict_slot
        self._asked.append((asked, set_return_dict))
        if len(self._asked) == 1:
            self._first.clear()
            self._recorded.clear()
        kwargs = dict(kwargs)
        if attentions_slot is not None and len(args) <= attentions_slot:
            kwargs["output_attentions"] = True
        if set_return_dict:
            kwargs["return_dict"] = True
        return args, kwargs

    def _note(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) or not self._asked:  # attention modules hand back tuples
            return
        three = _kind(type(module)) == "legacy"  # [batch · heads, query, key] only from attention modules
        for tensor in _tensors(output):
            if (tensor.ndim in (4, 5) or (three and tensor.ndim == 3)) and tensor.is_floating_point():
                self._first.setdefault(_storage(tensor), (tensor, module))

    def _after(self, module: torch.nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> Any:
        asked, wants_tuple = self._asked.pop() if self._asked else (True, False)
        for field, tensor in _attention_outputs(output):
            if _storage(tensor) not in self._recorded and is_probabilities(tensor):
                self._recorded.add(_storage(tensor))
                self._record(tensor, _stream(field))
        if not self._asked:
            self._first.clear()
            self._recorded.clear()
        if not asked:
            output = _without_attentions(output)
        if wants_tuple and hasattr(output, "to_tuple"):
            output = output.to_tuple()
        return output

    def _record(self, tensor: torch.Tensor, stream: str | None) -> None:
        entry = self._first.get(_storage(tensor))
        emitter = entry[1] if entry is not None else None
        if emitter is not None and tensor.ndim != 4:
            folded = _fold(emitter, tensor)
            if folded is None:
                return
            tensor = folded
        for recorder in self.recorders:
            if emitter is None or not recorder.owns(emitter) or recorder.used_interface(emitter):
                continue
            target = recorder.target(emitter, interface=False)
            if target is None:
                continue
            if stream is not None:  # another stream of the same module: a stack of its own
                target = type(target)(f"{target.group}.{stream}", target.layer)
            if recorder.store == "qk" and not recorder.warned_dense:
                recorder.warned_dense = True
                warnings.warn(
                    f"store='qk' cannot apply to {type(emitter).__name__}: it computes its attention in a module "
                    "of its own and returns the whole probability matrix, which mmviz stores densely (float16)",
                    stacklevel=2,
                )
            recorder.add_dense(target, self._over_positions(emitter, tensor))

    def _over_positions(self, emitter: torch.nn.Module, tensor: torch.Tensor) -> torch.Tensor:
        """The probabilities with keys at their positions (sliding-window modules return them per offset)."""
        window = getattr(emitter, "one_sided_attn_window_size", None)
        if not isinstance(window, int) or tensor.shape[-1] == tensor.shape[-2]:
            return tensor
        if tensor.shape[-1] != 2 * window + 1:
            raise CaptureError(
                f"{type(emitter).__name__} attended with global tokens: mmviz lays out its sliding-window "
                "attention, not the global part (returned separately as global_attentions). Capture without "
                "global_attention_mask, or read output_attentions=True yourself."
            )
        return unband(tensor, window)


__all__ = ["LegacyHooks", "computes_attention", "is_probabilities", "legacy_configs", "unband", "use_eager_classes"]
