"""Token tables from a forward call's inputs and the processor/tokenizer."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmviz.data import TokenTable
from mmviz.data.display import patch_label


def tokenizer_of(processor: Any) -> Any:
    """The tokenizer inside a processor (or the processor itself when it is a tokenizer)."""
    if processor is None:
        return None
    if hasattr(processor, "convert_ids_to_tokens"):
        return processor
    return getattr(processor, "tokenizer", None)


def _special_ids(tokenizer: Any) -> set[int]:
    ids = getattr(tokenizer, "all_special_ids", None) or []
    return {int(i) for i in ids if i is not None}


def token_texts(ids: list[int], tokenizer: Any) -> tuple[list[str], list[bool]]:
    """Display text of each id and whether it starts a new word.

    The display text is the id decoded on its own (keeping its leading space); word starts follow the
    tokenizer's convention: ``##`` continues a WordPiece word, ``Ġ``/``▁`` start a BPE or SentencePiece word.
    """
    if tokenizer is None:
        return [f"#{i}" for i in ids], [True] * len(ids)
    raw = [str(t) for t in tokenizer.convert_ids_to_tokens(ids)]
    texts = []
    starts = []
    wordpiece = any(t.startswith("##") for t in raw)
    marked = any(t[:1] in ("Ġ", "▁") for t in raw)
    specials = _special_ids(tokenizer)
    for i, (tid, tok) in enumerate(zip(ids, raw)):
        if tid in specials:
            texts.append(tok)
            starts.append(True)
            continue
        text = tokenizer.decode([tid], clean_up_tokenization_spaces=False)
        if wordpiece:
            start = not tok.startswith("##")
            text = text if start else tok[2:]
        elif marked:
            start = tok[:1] in ("Ġ", "▁") or i == 0 or not texts[-1:] or ids[i - 1] in specials
        else:
            start = True
        texts.append(text if text else tok)
        starts.append(start)
    return texts, starts


def text_table(
    ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    tokenizer: Any,
    generated_from: int | None = None,
) -> TokenTable:
    """The table of one text sequence: token texts, special and padding marked, words grouped.

    Args:
        ids: ``[positions]`` token ids.
        attention_mask: ``[positions]`` 1 for real tokens, 0 for padding (or ``None``).
        tokenizer: a transformers tokenizer, or ``None`` (texts become ``#id``).
        generated_from: first position produced by ``generate`` (``None``: nothing generated).
    """
    id_list = [int(i) for i in ids.tolist()]
    texts, starts = token_texts(id_list, tokenizer)
    specials = _special_ids(tokenizer) if tokenizer is not None else set()
    kinds = ["special" if i in specials else "text" for i in id_list]
    if attention_mask is not None:
        for pos, keep in enumerate(attention_mask.tolist()):
            if not keep:
                kinds[pos] = "pad"
    word_id = np.cumsum([1 if s or k != "text" else 0 for s, k in zip(starts, kinds)]) - 1
    generated = np.zeros(len(id_list), dtype=bool)
    if generated_from is not None:
        generated[generated_from:] = True
    return TokenTable.build(texts, kind=kinds, word_id=np.maximum(word_id, 0), token_id=id_list, generated=generated)


def images_from_pixels(pixel_values: torch.Tensor, processor: Any) -> list[np.ndarray]:
    """``[images, 3, H, W]`` normalised pixels back to ``uint8 [H, W, 3]`` images for display.

    Uses the image processor's mean and std when known, else a per-image min-max stretch.
    """
    pixels = pixel_values.detach().to("cpu", torch.float32)
    if pixels.ndim == 5:  # [batch, images, 3, H, W]
        pixels = pixels.flatten(0, 1)
    image_processor = getattr(processor, "image_processor", processor)
    mean = getattr(image_processor, "image_mean", None)
    std = getattr(image_processor, "image_std", None)
    out = []
    for img in pixels:
        if mean is not None and std is not None and len(mean) == img.shape[0]:
            img = img * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
        else:
            img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-12)
        arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        out.append(np.ascontiguousarray(arr[:, :, :3]))
    return out


def patch_table(
    n_positions: int, grid: tuple[int, int], image: np.ndarray | None, prefix_names: list[str] | None = None
) -> TokenTable:
    """The table of a vision tower's sequence: leading special tokens (CLS, registers), then patches row-major.

    Args:
        n_positions: sequence length of the vision tower.
        grid: ``(rows, cols)`` patch grid.
        image: the ``uint8 [H, W, 3]`` image, or ``None`` when unknown.
        prefix_names: names of the leading non-patch tokens (default ``[CLS]``, ``[REG1]``, ...).
    """
    rows, cols = grid
    n_prefix = n_positions - rows * cols
    if n_prefix < 0:
        raise ValueError(f"a {rows}×{cols} patch grid does not fit {n_positions} positions")
    names = prefix_names or (["[CLS]"] + [f"[REG{i}]" for i in range(1, n_prefix)])[:n_prefix]
    k = np.arange(rows * cols)
    texts = names + [patch_label(0, r, c) for r, c in zip(k // cols, k % cols)]
    kinds = ["special"] * n_prefix + ["image"] * (rows * cols)
    image_ok = image is not None
    return TokenTable.build(
        texts,
        kind=kinds if image_ok else ["special"] * n_prefix + ["text"] * (rows * cols),
        image_index=[-1] * n_prefix + [0] * (rows * cols) if image_ok else None,
        patch_row=np.concatenate([np.full(n_prefix, -1), k // cols]) if image_ok else None,
        patch_col=np.concatenate([np.full(n_prefix, -1), k % cols]) if image_ok else None,
        images=[image] if image is not None else [],
        grids=[grid] if image_ok else [],
    )


def position_table(n: int) -> TokenTable:
    """A table of ``n`` anonymous positions (used when nothing else describes a sequence)."""
    return TokenTable.build([str(i) for i in range(n)])
