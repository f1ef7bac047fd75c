"""Where a model keeps its residual stream, and how it reads a hidden state out (logit lens, patching).

Hidden states are numbered as transformers' ``output_hidden_states`` numbers them: state 0 is the input of
the first block (embeddings, image features merged in), state ``l`` (1 … L) is the output of block ``l - 1``.
Unlike ``output_hidden_states`` (whose last entry some models hand back after their final norm), every state
recorded here is the raw residual stream, so one readout — final norm, then unembedding — applies to all.

* ``find_readout(model)`` — a language model's blocks, final norm and output head (decoder LMs, the language
  model of a VLM, masked-LM encoders), as a ``Readout`` whose ``logits(hidden)`` maps states to logits;
* ``find_vision_readout(model)`` — a CLIP/SigLIP vision tower's blocks, post-norm, pooling head and
  projection into the joint embedding space, as a ``VisionReadout``;
* ``find_blocks(module)`` — the stack of blocks of any module (a diffusion pipeline's text encoder, ...);
* ``record_residual(blocks, states)`` — records chosen hidden states while the model runs (also across the
  steps of ``generate``);
* ``edit_residual(blocks, state, fn)`` — replaces one hidden state by ``fn(state)`` while the model runs;
* ``block_hidden`` / ``with_block_hidden`` — read and replace the hidden state in a block's output;
* ``evaluating(model)`` — evaluation mode without gradients for a block, the model's modes restored after.

Nothing here is public API.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "Readout",
    "VisionReadout",
    "block_hidden",
    "edit_residual",
    "evaluating",
    "find_blocks",
    "find_readout",
    "find_vision_readout",
    "record_residual",
    "with_block_hidden",
]

_HIDDEN_ARG = "hidden_states"


# -- blocks ---------------------------------------------------------------------------------------------
def block_hidden(output: Any) -> torch.Tensor:
    """The hidden state ``[batch, positions, dim]`` in what a block returned (a tensor or a tuple)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"a transformer block returned {type(output).__name__}, not a hidden-state tensor or tuple")


def with_block_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """``output`` with its hidden state replaced by ``hidden`` (same structure as the block returned)."""
    if isinstance(output, torch.Tensor):
        return hidden
    return type(output)((hidden, *output[1:])) if isinstance(output, tuple) else [hidden, *output[1:]]


def _block_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    value = kwargs.get(_HIDDEN_ARG)
    if isinstance(value, torch.Tensor):
        return value
    raise TypeError("the first transformer block was called without a hidden-state tensor")


def _with_block_input(
    args: tuple[Any, ...], kwargs: dict[str, Any], hidden: torch.Tensor
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if args and isinstance(args[0], torch.Tensor):
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, _HIDDEN_ARG: hidden}


def _layer_lists(root: torch.nn.Module) -> list[tuple[str, torch.nn.ModuleList]]:
    """ModuleLists of repeated blocks under ``root`` that are not inside another such list."""
    found: list[tuple[str, torch.nn.ModuleList]] = []
    for path, module in root.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) != 1 or not any(True for _ in module[0].parameters()):
            continue
        if any(path.startswith(f"{p}.") for p, _ in found):
            continue
        found.append((path, module))
    return found


def find_blocks(root: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The longest stack of repeated transformer blocks under ``root``: its dotted path and the list.

    Raises:
        ValueError: ``root`` holds no stack of blocks.
    """
    lists = _layer_lists(root)
    if not lists:
        raise ValueError(f"found no stack of transformer blocks in {type(root).__name__}")
    return max(lists, key=lambda item: len(item[1]))


def _path_of(root: torch.nn.Module, target: torch.nn.Module) -> str:
    for path, module in root.named_modules():
        if module is target:
            return path
    raise ValueError(f"{type(target).__name__} is not a submodule of {type(root).__name__}")


def _is_norm(module: torch.nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


def _norm_after(owner: torch.nn.Module, blocks: torch.nn.Module) -> torch.nn.Module | None:
    """The first norm-like child of ``owner`` registered after the child holding ``blocks``."""
    after = False
    for child in owner.children():
        if child is blocks or any(m is blocks for m in child.modules()):
            after = True
            continue
        if after and _is_norm(child):
            return child
    return None


# -- language models ------------------------------------------------------------------------------------
@dataclass(eq=False)
class Readout:
    """How a language model turns its residual stream into logits.

    Attributes:
        blocks: the transformer blocks, in order (hidden state ``l`` is block ``l - 1``'s output).
        blocks_path: their dotted name in ``model.named_modules()`` (e.g. ``model.language_model.layers``).
        norm: the final norm after the last block (``None``: the model has none, e.g. BERT).
        head: the module from normed states to logits: the output embedding, or the prediction head that holds
            it (BERT's ``cls``: dense, activation, norm, decoder).
        output: the output embedding itself (``model.get_output_embeddings()``; ``head`` or inside it).
        softcap: final logit soft-capping ``cap · tanh(logits / cap)`` (Gemma 2), or ``None``.
        scale: factor the model multiplies its logits by (Cohere's ``logit_scale``; Granite divides), or ``None``.
    """

    blocks: torch.nn.ModuleList
    blocks_path: str
    norm: torch.nn.Module | None
    head: torch.nn.Module
    output: torch.nn.Module
    softcap: float | None = None
    scale: float | None = None

    @property
    def n_states(self) -> int:
        """Number of hidden states: blocks + 1 (the input of the first block)."""
        return len(self.blocks) + 1

    @property
    def vocab_size(self) -> int:
        """Number of logits: rows of the output embedding's ``[vocab, dim]`` weight."""
        weight = getattr(self.output, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise ValueError(f"the output embedding {type(self.output).__name__} has no weight matrix")
        return int(weight.shape[0])

    def normed(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., dim]`` hidden states through the final norm (unchanged when there is none)."""
        return hidden if self.norm is None else self.norm(hidden)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., dim]`` raw hidden states → ``[..., vocab]`` logits, as the model computes its own output."""
        out = self.head(self.normed(hidden))
        if self.scale is not None:
            out = out * self.scale
        if self.softcap is not None:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out


def _config_value(model: Any, name: str) -> Any:
    config = getattr(model, "config", None)
    for c in (config, getattr(config, "text_config", None)):
        value = getattr(c, name, None)
        if value is not None:
            return value
    return None


def find_readout(model: Any) -> Readout:
    """The blocks, final norm and output head of a language model (or of a VLM's language model).

    Works for decoder LMs (``...ForCausalLM``: GPT-2, Llama, Qwen, Gemma, ...), VLMs
    (``...ForConditionalGeneration``: their language model) and masked-LM encoders (``...ForMaskedLM``).

    Args:
        model: a transformers model with an output embedding.

    Raises:
        ValueError: the model has no output embedding (a base model or a classifier), or no stack of blocks.
    """
    head_leaf = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head_leaf, torch.nn.Module):
        raise ValueError(
            f"{type(model).__name__} has no output embedding (no language-model head): the logit lens reads hidden "
            "states through it. Load the model with its head, e.g. AutoModelForCausalLM, AutoModelForMaskedLM or "
            "AutoModelForImageTextToText, not AutoModel"
        )
    trunk: torch.nn.Module | None = None
    with contextlib.suppress(AttributeError, NotImplementedError, TypeError):
        trunk = model.get_decoder()
    if not isinstance(trunk, torch.nn.Module):
        trunk = getattr(model, getattr(model, "base_model_prefix", "") or "model", None)
    if not isinstance(trunk, torch.nn.Module):
        trunk = model
    rel, blocks = find_blocks(trunk)
    trunk_path = _path_of(model, trunk)
    blocks_path = f"{trunk_path}.{rel}" if trunk_path else rel
    parent = trunk.get_submodule(rel.rsplit(".", 1)[0]) if "." in rel else trunk
    norm = _norm_after(parent, blocks) or (None if parent is trunk else _norm_after(trunk, blocks))
    head = head_leaf
    for child in model.children():  # BERT-like: the prediction head holding the decoder
        if child is not trunk and child is not head_leaf and any(m is head_leaf for m in child.modules()):
            head = child
    scale = _config_value(model, "logit_scale")
    granite = _config_value(model, "logits_scaling")
    if granite is not None:
        scale = 1.0 / float(granite)
    softcap = _config_value(model, "final_logit_softcapping")
    return Readout(
        blocks=blocks,
        blocks_path=blocks_path,
        norm=norm,
        head=head,
        output=head_leaf,
        softcap=None if softcap is None else float(softcap),
        scale=None if scale is None or isinstance(scale, torch.Tensor) else float(scale),
    )


# -- vision towers --------------------------------------------------------------------------------------
@dataclass(eq=False)
class VisionReadout:
    """How a CLIP/SigLIP vision tower turns its residual stream into the joint image-text embedding space.

    Attributes:
        blocks: the tower's blocks (hidden state ``l`` is block ``l - 1``'s output; state 0 their input).
        blocks_path: their dotted name in ``model.named_modules()``.
        norm: the tower's final norm (``post_layernorm``), or ``None``.
        pool: the attention-pooling head applied to the normed sequence (SigLIP's ``head``), or ``None``
            (CLIP pools by taking the CLS position).
        projection: the linear map into the joint space (CLIP's ``visual_projection``), or ``None``.
        n_prefix: positions before the patches (1: CLIP's CLS; 0: SigLIP).
    """

    blocks: torch.nn.ModuleList
    blocks_path: str
    norm: torch.nn.Module | None
    pool: torch.nn.Module | None
    projection: torch.nn.Module | None
    n_prefix: int

    @property
    def n_states(self) -> int:
        """Number of hidden states: blocks + 1."""
        return len(self.blocks) + 1

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., dim]`` hidden states → ``[..., embed]`` per-position embeddings (norm, then projection)."""
        out = hidden if self.norm is None else self.norm(hidden)
        return out if self.projection is None else self.projection(out)

    def pooled(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[batch, positions, dim]`` hidden states → ``[batch, embed]`` image embedding, as the model pools."""
        normed = hidden if self.norm is None else self.norm(hidden)
        if self.pool is not None:
            out = self.pool(normed)
            out = out if isinstance(out, torch.Tensor) else out[0]
        else:
            out = normed[:, 0]
        return out if self.projection is None else self.projection(out)


def find_vision_readout(model: Any) -> VisionReadout:
    """The vision tower of a CLIP or SigLIP model (``CLIPModel``, ``SiglipModel``, their vision models).

    Raises:
        ValueError: the model has no CLIP/SigLIP-style vision tower.
    """
    tower = getattr(model, "vision_model", None)
    if not isinstance(tower, torch.nn.Module) or not hasattr(tower, "encoder"):
        raise ValueError(
            f"{type(model).__name__} has no CLIP/SigLIP vision tower (a `vision_model` with an `encoder`): the "
            "text lens needs a two-tower model such as CLIPModel or SiglipModel"
        )
    encoder = tower.encoder
    lists = _layer_lists(encoder) if isinstance(encoder, torch.nn.Module) else []
    if not lists:
        raise ValueError(f"found no stack of blocks in {type(model).__name__}.vision_model.encoder")
    rel, blocks = lists[0]
    norm = getattr(tower, "post_layernorm", None)
    pool = getattr(tower, "head", None)
    projection = getattr(model, "visual_projection", None)
    embeddings = getattr(tower, "embeddings", None)
    n_prefix = 1 if isinstance(getattr(embeddings, "class_embedding", None), torch.Tensor) else 0
    return VisionReadout(
        blocks=blocks,
        blocks_path=f"{_path_of(model, tower)}.encoder.{rel}",
        norm=norm if isinstance(norm, torch.nn.Module) else None,
        pool=pool if isinstance(pool, torch.nn.Module) else None,
        projection=projection if isinstance(projection, torch.nn.Module) else None,
        n_prefix=n_prefix,
    )


# -- recording and editing ------------------------------------------------------------------------------
@contextlib.contextmanager
def record_residual(blocks: torch.nn.ModuleList, states: list[int]) -> Iterator[dict[int, list[torch.Tensor]]]:
    """Records hidden states while the model runs in the block.

    Yields:
        state index → the ``[batch, positions, dim]`` tensors seen, one per forward call (``generate``
        appends one per step; concatenate them along positions). Filled as the model runs.
    """
    n = len(blocks)
    bad = [s for s in states if not 0 <= s <= n]
    if bad:
        raise ValueError(f"hidden states {bad} do not exist: this stack has states 0 … {n}")
    seen: dict[int, list[torch.Tensor]] = {s: [] for s in states}
    handles = []
    if 0 in seen:

        def before(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            seen[0].append(_block_input(args, kwargs).detach())

        handles.append(blocks[0].register_forward_pre_hook(before, with_kwargs=True))
    for state in sorted(s for s in seen if s > 0):

        def after(module: Any, args: Any, output: Any, state: int = state) -> None:
            seen[state].append(block_hidden(output).detach())

        handles.append(blocks[state - 1].register_forward_hook(after))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def edit_residual(
    blocks: torch.nn.ModuleList, state: int, fn: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """Replaces hidden state ``state`` by ``fn(hidden)`` (``[batch, positions, dim]``) while the model runs.

    State 0 is edited as the input of the first block, state ``l ≥ 1`` as the output of block ``l - 1``. The
    edit runs before any other hook of the block, so what transformers records from it (``hidden_states``,
    which LLaVA-like models read their image features from) is the edited state; edits nested on the same
    state apply in the order they were opened (the outer block's first). Removed when the block ends, also on
    errors.
    """
    n = len(blocks)
    if not 0 <= state <= n:
        raise ValueError(f"hidden state {state} does not exist: this stack has states 0 … {n}")
    if state == 0:
        chain = _chain(blocks[0], "input")
    else:
        chain = _chain(blocks[state - 1], "output")
    chain.edits.append(fn)
    try:
        yield
    finally:
        chain.remove(fn)


class _EditChain:
    """The edits of one block's input or output, applied in order by one hook registered ahead of the others."""

    def __init__(self, module: torch.nn.Module, where: str) -> None:
        self.module, self.where = module, where
        self.edits: list[Callable[[torch.Tensor], torch.Tensor]] = []
        if where == "input":
            self.handle = module.register_forward_pre_hook(self._before, with_kwargs=True, prepend=True)
        else:
            self.handle = module.register_forward_hook(self._after, prepend=True)

    def _apply(self, hidden: torch.Tensor) -> torch.Tensor:
        for fn in list(self.edits):
            hidden = fn(hidden)
        return hidden

    def _before(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return _with_block_input(args, kwargs, self._apply(_block_input(args, kwargs)))

    def _after(self, module: Any, args: Any, output: Any) -> Any:
        return with_block_hidden(output, self._apply(block_hidden(output)))

    def remove(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Takes the last ``fn`` off the chain; the hook goes with the last edit.

        By identity, one occurrence: the same edit nested twice stays on once when the inner block ends.
        """
        last = max(i for i, f in enumerate(self.edits) if f is fn)
        del self.edits[last]
        if not self.edits:
            self.handle.remove()
            _CHAINS.pop((id(self.module), self.where), None)


_CHAINS: dict[tuple[int, str], _EditChain] = {}


def _chain(module: torch.nn.Module, where: str) -> _EditChain:
    chain = _CHAINS.get((id(module), where))
    if chain is None or chain.module is not module:
        chain = _CHAINS[(id(module), where)] = _EditChain(module, where)
    return chain


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Evaluation mode (no dropout) and no gradients for the block; each module's mode restored, also on errors."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            yield
    finally:
        for module, mode in modes:
            module.training = mode
