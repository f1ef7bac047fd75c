"""What a patching sweep runs on: the two inputs, the corruption, the metric and the grid's columns.

* ``Runs`` holds the clean and corrupted inputs (batch size 1) and tiles them into batches;
* ``corrupt_pixels`` builds the corrupted input of ``corrupt="mask"`` (chosen image patches set to the
  processor's mean colour);
* ``NoiseHook`` adds causal tracing's Gaussian noise to the residual stream entering the first block;
* ``Metric`` turns a model's outputs into one number per batch row;
* ``columns`` resolves ``positions`` and ``region`` into the groups of positions restored together.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from mmviz.data import TokenTable

__all__ = ["Metric", "NoiseHook", "Runs", "columns", "corrupt_pixels", "select_positions"]


def as_dict(inputs: Any, what: str) -> dict[str, Any]:
    """A processor's output (``BatchEncoding`` or dict) as a plain dict, ``labels`` dropped."""
    if hasattr(inputs, "data") and not isinstance(inputs, dict):
        inputs = inputs.data
    if not isinstance(inputs, dict):
        raise TypeError(
            f"mmviz.patch: {what} must be the processor's output (a dict of tensors), got {type(inputs).__name__}"
        )
    out = dict(inputs)
    out.pop("labels", None)
    return out


def _batch_size(inputs: dict[str, Any]) -> int:
    """Examples in an input: the rows of its ids (or embeddings), else its images (a vision model's input)."""
    for key in ("input_ids", "inputs_embeds", "pixel_values"):
        value = inputs.get(key)
        if isinstance(value, torch.Tensor):
            return int(value.shape[0])
    return 1


class Runs:
    """The clean and corrupted inputs of one example, and batches of copies of the corrupted one.

    Args:
        clean: the clean input (batch size 1).
        corrupt: the corrupted input, same keys and shapes.
        device: the model's device.
    """

    def __init__(self, clean: dict[str, Any], corrupt: dict[str, Any], device: torch.device) -> None:
        ids = clean.get("input_ids")
        if isinstance(ids, torch.Tensor) and ids.ndim == 2 and ids.shape[0] != 1:
            raise ValueError(
                f"mmviz.patch explains one example at a time: input_ids has batch size {ids.shape[0]}; "
                "pass one example (inputs sliced to [0:1]); the sweep batches its runs itself"
            )
        if _batch_size(clean) != 1:
            raise ValueError("mmviz.patch explains one example at a time: pass batch size 1")
        if set(clean) != set(corrupt):
            raise ValueError(
                f"mmviz.patch: clean and corrupt inputs must have the same keys; clean has {sorted(clean)}, "
                f"corrupt has {sorted(corrupt)}"
            )
        for key, value in clean.items():
            other = corrupt[key]
            if isinstance(value, torch.Tensor) != isinstance(other, torch.Tensor) or (
                isinstance(value, torch.Tensor) and value.shape != other.shape
            ):
                raise ValueError(
                    f"mmviz.patch: clean and corrupt inputs must share one layout (same positions), but "
                    f"{key!r} is {getattr(value, 'shape', value)} in clean and {getattr(other, 'shape', other)} "
                    "in corrupt; pad both prompts to one length, or use corrupt='noise' / 'mask'"
                )
        self.clean = _to(clean, device)
        self.corrupt = _to(corrupt, device)
        self._tiled: dict[int, dict[str, Any]] = {}

    def corrupt_batch(self, n: int) -> dict[str, Any]:
        """``n`` copies of the corrupted input, stacked along the batch axis (every tensor tiled on axis 0)."""
        if n not in self._tiled:
            self._tiled = {n: {k: _tile(v, n) for k, v in self.corrupt.items()}}
        return self._tiled[n]


def _to(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def _tile(value: Any, n: int) -> Any:
    if not isinstance(value, torch.Tensor) or value.ndim == 0 or n == 1:
        return value
    return value.repeat(n, *([1] * (value.ndim - 1)))


def select_positions(tokens: TokenTable, spec: Any, what: str) -> np.ndarray:
    """Positions named by a kind (``"image"``, ``"text"``), a list of ints, or ``None`` (every position)."""
    n = len(tokens)
    if spec is None:
        return np.arange(n)
    if isinstance(spec, str):
        if spec == "all":
            return np.arange(n)
        picked = tokens.positions(spec)
        if picked.size == 0:
            kinds = sorted(set(tokens.kind.tolist()))
            raise ValueError(f"mmviz.patch: {what}={spec!r} names no position; this input's kinds are {kinds}")
        return picked
    picked = np.asarray(list(spec), dtype=np.int64).reshape(-1)
    if picked.size == 0:
        raise ValueError(f"mmviz.patch: {what} is empty")
    if picked.min() < -n or picked.max() >= n:
        raise ValueError(f"mmviz.patch: {what} {picked.tolist()} reach outside the {n} positions of the input")
    return np.unique(picked % n)


def columns(tokens: TokenTable, positions: Any, region: tuple[int, int] | None) -> list[np.ndarray]:
    """The grid's columns: groups of positions restored together.

    Args:
        tokens: the patched sequence's table.
        positions: ``None`` (every position), a kind, a list of ints (one column each) or a list of lists
            (one column per inner list).
        region: ``(rows, cols)``: image positions among the chosen ones are grouped into blocks of that many
            patches of their image's grid (text positions stay one column each).
    """
    n = len(tokens)
    if positions is not None and not isinstance(positions, str):
        items = list(positions)
        if items and all(isinstance(p, (Sequence, np.ndarray)) and not isinstance(p, str) for p in items):
            groups = [select_positions(tokens, p, "a position group") for p in items]
            if region is not None:
                raise ValueError("mmviz.patch: give either groups of positions or region=, not both")
            return groups
    chosen = select_positions(tokens, positions, "positions")
    if region is None:
        return [np.asarray([p]) for p in chosen]
    r_size, c_size = (int(v) for v in region)
    if r_size < 1 or c_size < 1:
        raise ValueError(f"mmviz.patch: region must be (rows, cols) of at least one patch, got {region}")
    out: list[np.ndarray] = []
    blocks: dict[tuple[int, int, int], list[int]] = {}
    for p in chosen:
        if tokens.kind[p] == "image":
            key = (int(tokens.image_index[p]), int(tokens.patch_row[p]) // r_size, int(tokens.patch_col[p]) // c_size)
            if key not in blocks:
                blocks[key] = []
                out.append(np.zeros(0, dtype=np.int64))  # placeholder, filled below in first-seen order
            blocks[key].append(int(p))
        else:
            out.append(np.asarray([p]))
    if not blocks:
        raise ValueError(f"mmviz.patch: region={region} groups image patches, but no chosen position ({n}) is one")
    filled = iter(blocks.values())
    return [g if g.size else np.asarray(next(filled)) for g in out]


def corrupt_pixels(clean: dict[str, Any], tokens: TokenTable, positions: np.ndarray) -> dict[str, Any]:
    """The clean input with the pixels of the chosen image positions' patches set to 0 (the mean colour).

    Raises:
        ValueError: the input has no ``[images, 3, H, W]`` pixels, a chosen position is no image token, or
            the patch grid does not divide the image.
    """
    pixels = clean.get("pixel_values")
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4:
        raise ValueError(
            "mmviz.patch: corrupt='mask' blanks image patches of pixel_values shaped [images, 3, H, W]; this input "
            f"has {getattr(pixels, 'shape', None)}. Use corrupt='noise' (on the image tokens' embeddings) or pass "
            "a corrupted input"
        )
    not_image = positions[tokens.kind[positions] != "image"]
    if not_image.size:
        raise ValueError(
            f"mmviz.patch: corrupt='mask' blanks image patches, but positions {not_image.tolist()} are no image "
            "tokens; choose corrupt_positions among the image tokens (the default: all of them)"
        )
    out = pixels.clone()
    height, width = out.shape[-2:]
    for p in positions:
        image = int(tokens.image_index[p])
        rows, cols = tokens.grids[image]
        if height % rows or width % cols:
            raise ValueError(f"mmviz.patch: a {rows}×{cols} patch grid does not divide {height}×{width} pixels")
        h, w = height // rows, width // cols
        r, c = int(tokens.patch_row[p]), int(tokens.patch_col[p])
        out[image, :, r * h : (r + 1) * h, c * w : (c + 1) * w] = 0
    return {**clean, "pixel_values": out}


class NoiseHook:
    """Causal tracing's corruption: Gaussian noise added to the residual stream entering the first block.

    The noise is drawn once (seeded), so every corrupted run sees the same corruption; its standard deviation is
    ``scale`` times the standard deviation of the clean embeddings at the corrupted positions.

    Args:
        embeddings: ``[1, seq, dim]`` the clean residual stream entering the first block.
        positions: corrupted positions.
        scale: multiple of the embeddings' standard deviation.
        seed: seed of the noise.
    """

    def __init__(self, embeddings: torch.Tensor, positions: np.ndarray, scale: float, seed: int) -> None:
        index = torch.as_tensor(positions, device=embeddings.device)
        self.std = float(embeddings[0, index].float().std()) * scale
        generator = torch.Generator().manual_seed(seed)
        noise = torch.zeros(embeddings.shape[1:], dtype=torch.float32)
        noise[index.cpu()] = torch.randn((len(positions), embeddings.shape[-1]), generator=generator) * self.std
        self.noise = noise.to(embeddings.device, embeddings.dtype)

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any, point: Any) -> Any:
        """A pre-hook body: the block's input plus the noise."""
        hidden = point.read(args, kwargs, output)
        return point.write(args, kwargs, output, hidden + self.noise)


class Metric:
    """One number per batch row from a model's outputs.

    Args:
        spec: a token (string or id) whose log-probability is read, a pair ``(a, b)`` whose logit difference is
            read, or a callable ``f(outputs) -> [batch]``.
        model: the model (its forward's signature, its labels for classifiers).
        tokenizer: the tokenizer that turns token strings into ids.
        clean: the clean input (its attention mask picks the last real position).
        position: the position whose logits are read (default: the last real token).
    """

    def __init__(self, spec: Any, model: Any, tokenizer: Any, clean: dict[str, Any], position: int | None) -> None:
        self.kwargs: dict[str, Any] = {}
        self.fn: Callable[[Any], torch.Tensor] | None = None
        self.ids: tuple[int, ...] = ()
        if callable(spec):
            self.fn = spec
            self.description = getattr(spec, "__name__", "metric")
            self.position = -1
            return
        pair = isinstance(spec, (tuple, list))
        items = list(spec) if pair else [spec]
        if pair and len(items) != 2:
            raise ValueError(f"mmviz.patch: a metric pair is (token, other token), got {len(items)} items")
        self.ids = tuple(_token_id(t, model, tokenizer) for t in items)
        names = [repr(t) for t in items]
        self.description = f"logit({names[0]}) − logit({names[1]})" if pair else f"log p({names[0]})"
        ids = clean.get("input_ids")
        seq = int(ids.shape[1]) if isinstance(ids, torch.Tensor) and ids.ndim == 2 else None
        mask = clean.get("attention_mask")
        last = int(mask[0].nonzero().max()) if isinstance(mask, torch.Tensor) and mask.ndim == 2 else (seq or 1) - 1
        self.position = last if position is None else int(position)
        if seq is not None and not -seq <= self.position < seq:
            raise ValueError(f"mmviz.patch: position {position} is outside the {seq} positions of the input")
        if seq is not None and self.position % seq == seq - 1 and _accepts(model, "logits_to_keep"):
            self.kwargs["logits_to_keep"] = 1  # only the last position's logits: [batch, 1, vocab]
            self.position = -1

    def __call__(self, outputs: Any) -> torch.Tensor:
        """``[batch]`` float metric of each row."""
        if self.fn is not None:
            value = self.fn(outputs)
            if not isinstance(value, torch.Tensor) or value.ndim != 1:
                raise ValueError(
                    "mmviz.patch: the metric callable must return a [batch] tensor, got "
                    f"{getattr(value, 'shape', value)}"
                )
            return value.float()
        logits = outputs.logits if hasattr(outputs, "logits") else outputs[0]
        if logits.ndim == 3:
            logits = logits[:, self.position]
        logits = logits.float()
        if len(self.ids) == 2:
            return logits[:, self.ids[0]] - logits[:, self.ids[1]]
        return torch.log_softmax(logits, dim=-1)[:, self.ids[0]]


def _accepts(model: Any, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _token_id(token: Any, model: Any, tokenizer: Any) -> int:
    if isinstance(token, (int, np.integer)) and not isinstance(token, bool):
        return int(token)
    if not isinstance(token, str):
        raise TypeError(f"mmviz.patch: a metric token is a string or an id, got {type(token).__name__}")
    if "Classification" in type(model).__name__:
        id2label = getattr(model.config, "id2label", None) or {}
        labels = {str(name): int(i) for i, name in id2label.items()}
        if token not in labels:
            raise ValueError(
                f"mmviz.patch: {token!r} is not a label of this classifier; its labels are {sorted(labels)}"
            )
        return int(labels[token])
    if tokenizer is None:
        raise ValueError(f"mmviz.patch: metric={token!r} names a token; pass processor= so it can be looked up")
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ValueError(
            f"mmviz.patch: the metric token {token!r} is {len(ids)} tokens {pieces}; name one token (mind the "
            "leading space: ' red'), its id, or pass a callable metric"
        )
    return int(ids[0])
