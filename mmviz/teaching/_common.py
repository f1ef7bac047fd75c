"""Shared pieces of the teaching models: paths, configs, image preprocessing.

Imports torch and transformers lazily so that `mmviz.teaching` imports without them.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmviz.teaching._tokenizer import vocab

if TYPE_CHECKING:
    import torch
    from transformers import CLIPImageProcessorPil, CLIPTextModel

WEIGHTS_DIR = Path(__file__).parent / "weights"
"""Package data: one sub-folder per model (``clip``, ``vlm``, ``diffusion``)."""


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Hides transformers' and diffusers' per-file progress bars while the tiny teaching weights load.

    They load in well under a second, so the bars are noise (and ``mmviz demo`` prints its own progress);
    each library's setting is restored on exit.
    """
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    shown = [(lib, lib.is_progress_bar_enabled()) for lib in (transformers_logging, diffusers_logging)]
    for lib, _ in shown:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, was in shown:
            if was:
                lib.enable_progress_bar()


IMAGE_SIZE = 32
PATCH_SIZE = 4
"""Patch size of the VLM's vision tower (8x8 patches)."""
CLIP_PATCH_SIZE = 2
"""Patch size of the teaching CLIP (16x16 patches): with 4 px patches its relevance maps peaked on the
patches along object edges and missed the object in a fifth of the maps (see `mmviz.teaching.train_clip`)."""
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_config_dict(patch_size: int = CLIP_PATCH_SIZE) -> dict[str, Any]:
    """Config of the tiny teaching `CLIPModel` (about 0.2 M parameters).

    Args:
        patch_size: vision patch size in pixels (the VLM's tower uses `PATCH_SIZE`).
    """
    ids = vocab()
    return {
        "projection_dim": 64,
        "logit_scale_init_value": 2.6592,
        "text_config": {
            "vocab_size": len(ids),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 16,
            "pad_token_id": ids["<pad>"],
            "bos_token_id": ids["<bos>"],
            "eos_token_id": ids["<eos>"],
            "projection_dim": 64,
        },
        "vision_config": {
            "image_size": IMAGE_SIZE,
            "patch_size": patch_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "projection_dim": 64,
        },
    }


def random_text_encoder() -> CLIPTextModel:
    """A `CLIPTextModel` with the teaching CLIP's text config and fresh random weights, in eval mode.

    The diffusion model's text encoder starts from it (``train_diffusion --random-text-encoder``), and so
    does the untrained pipeline of ``mmviz demo --models random``.
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**clip_config_dict()["text_config"])).eval()


def image_processor() -> CLIPImageProcessorPil:
    """The PIL CLIP image processor of every teaching model (32 px, CLIP mean/std).

    Returns:
        A `CLIPImageProcessorPil` (no torchvision needed). Larger scenes (64 px) are
        resized to 32 px.
    """
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )


def pixels(images: np.ndarray | list[np.ndarray]) -> torch.Tensor:
    """Normalise uint8 images the way `image_processor` does (fast path for training).

    Args:
        images: `[batch, height, width, 3]` uint8 (height = width = 32).

    Returns:
        `[batch, 3, height, width]` float32 pixel values.
    """
    import torch

    x = torch.from_numpy(np.ascontiguousarray(np.stack(list(images)))).float().div_(255.0)
    x = x.permute(0, 3, 1, 2)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def save_fp16(model: torch.nn.Module, directory: Path) -> int:
    """Save a transformers model with float16 weights (safetensors + config.json).

    Args:
        model: the model (left unchanged).
        directory: target folder.

    Returns:
        Size of ``model.safetensors`` in bytes.
    """
    import copy

    import torch

    directory.mkdir(parents=True, exist_ok=True)
    half: Any = copy.deepcopy(model).to(torch.float16)
    half.save_pretrained(directory, safe_serialization=True)
    return (directory / "model.safetensors").stat().st_size


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write pretty JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


class Clock:
    """Wall-clock helper for training logs."""

    def __init__(self) -> None:
        self.start = time.time()

    def minutes(self) -> float:
        """Minutes since creation."""
        return (time.time() - self.start) / 60.0

    def __str__(self) -> str:
        return f"{time.time() - self.start:7.1f}s"
