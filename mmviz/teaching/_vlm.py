"""Config, processor and batches of the teaching LLaVA (CLIP vision tower + small Llama)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from mmviz.teaching._common import IMAGE_SIZE, PATCH_SIZE, clip_config_dict, image_processor, pixels
from mmviz.teaching._tokenizer import vocab

if TYPE_CHECKING:
    import torch
    from transformers import LlavaProcessor

from mmviz.teaching.shapes import Scene

IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
"""Image tokens per image (8x8 patches, CLS dropped)."""


def vlm_config_dict() -> dict[str, Any]:
    """Config of the teaching `LlavaForConditionalGeneration`."""
    ids = vocab()
    vision = dict(clip_config_dict(PATCH_SIZE)["vision_config"], model_type="clip_vision_model")
    text = {
        "model_type": "llama",
        "vocab_size": len(ids),
        "hidden_size": 96,
        "intermediate_size": 192,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 128,
        "pad_token_id": ids["<pad>"],
        "bos_token_id": ids["<bos>"],
        "eos_token_id": ids["<eos>"],
        "tie_word_embeddings": True,
    }
    return {
        "vision_config": vision,
        "text_config": text,
        "image_token_index": ids["<image>"],
        "image_seq_length": IMAGE_TOKENS,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "projector_hidden_act": "gelu",
        "pad_token_id": ids["<pad>"],
        "tie_word_embeddings": True,
    }


def vlm_processor(tokenizer: Any) -> LlavaProcessor:
    """The `LlavaProcessor` of the teaching VLM.

    Args:
        tokenizer: the ``vlm`` flavour tokenizer (no ``<eos>`` appended).

    Returns:
        A processor that expands ``<image>`` into 64 image tokens.
    """
    from transformers import LlavaProcessor

    return LlavaProcessor(
        image_processor=image_processor(),
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
    )


def prompt(question: str) -> str:
    """The text prompt for a question (the processor expands ``<image>``)."""
    return f"<image> {question}"


def make_batch(scenes: list[Scene], choices: list[int], tok: Any, with_answer: bool = True) -> dict[str, torch.Tensor]:
    """Build a training/eval batch without the processor (same ids, much faster).

    Each row is ``<bos> <image>x64 question... [answer <eos>]`` padded on the right.

    Args:
        scenes: scenes.
        choices: index into each scene's ``qa``.
        tok: the ``vlm`` tokenizer.
        with_answer: append the answer and ``<eos>`` and return ``labels``
            (-100 everywhere except the answer and ``<eos>``).

    Returns:
        ``input_ids``, ``attention_mask``, ``pixel_values`` and, with answers, ``labels``.
    """
    import torch

    ids = vocab()
    rows, labels = [], []
    for scene, k in zip(scenes, choices):
        question, answer, _ = scene.qa[k]
        q = tok(question, add_special_tokens=False)["input_ids"]
        row = [ids["<bos>"]] + [ids["<image>"]] * IMAGE_TOKENS + q
        lab = [-100] * len(row)
        if with_answer:
            row += [ids[answer], ids["<eos>"]]
            lab += [ids[answer], ids["<eos>"]]
        rows.append(row)
        labels.append(lab)
    n = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), n), ids["<pad>"], dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    lab_t = torch.full((len(rows), n), -100, dtype=torch.long)
    for i, (r, lab) in enumerate(zip(rows, labels)):
        input_ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        lab_t[i, : len(lab)] = torch.tensor(lab)
    batch = {
        "input_ids": input_ids,
        "attention_mask": mask,
        "pixel_values": pixels(np.stack([s.image for s in scenes])),
    }
    if with_answer:
        batch["labels"] = lab_t
    return batch
