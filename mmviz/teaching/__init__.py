"""Offline teaching kit: a shapes world and tiny trained models shipped as package data.

Everything loads offline from ``mmviz/teaching/weights/`` (safetensors, float16
storage, loaded as float32), in eval mode, with the default attention
implementation::

    import mmviz.teaching as teaching

    clip, processor = teaching.load_clip()      # transformers CLIPModel + CLIPProcessor
    vlm, processor = teaching.load_vlm()        # LlavaForConditionalGeneration + LlavaProcessor
    pipe = teaching.load_diffusion()            # diffusers pipeline (pixel space, 32 px)
    sae = teaching.load_sae()                   # sparse autoencoder of the VLM's vision tower (SAE_SITE)
    scenes = teaching.make_scenes(8, seed=1)    # images, masks, captions, questions

`import mmviz.teaching` needs only numpy; torch, transformers and diffusers are
imported inside the loaders. See `mmviz.teaching.evaluate` for the faithfulness
figures (pointing game against the object-area baseline), `mmviz.teaching.naming`
for the SAE's nameable features, and the ``train_*`` modules for how the weights were made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mmviz.teaching._common import WEIGHTS_DIR, quiet_loading
from mmviz.teaching.naming import SAE_SITE
from mmviz.teaching.shapes import (
    COLOURS,
    RELATIONS,
    SHAPES,
    Scene,
    ShapeObject,
    caption_for,
    make_scenes,
    random_scene,
    vocabulary,
)

if TYPE_CHECKING:
    from transformers import CLIPModel, CLIPProcessor, LlavaForConditionalGeneration, LlavaProcessor

    from mmviz.features import SAE

__all__ = [
    "COLOURS",
    "RELATIONS",
    "SAE_SITE",
    "SHAPES",
    "WEIGHTS_DIR",
    "Scene",
    "ShapeObject",
    "caption_for",
    "load_clip",
    "load_diffusion",
    "load_sae",
    "load_tokenizer",
    "load_vlm",
    "make_scenes",
    "random_scene",
    "vocabulary",
]


def _require(name: str) -> Any:
    path = WEIGHTS_DIR / name
    if not path.is_dir():
        raise FileNotFoundError(
            f"teaching weights {path} are missing; they ship with mmviz, or rebuild them with "
            f"`python -m mmviz.teaching.train_{name}`"
        )
    return path


def load_tokenizer(flavour: str = "clip") -> Any:
    """The teaching word-level tokenizer (``"clip"``: ends with ``<eos>``; ``"vlm"``: does not).

    Args:
        flavour: ``"clip"`` or ``"vlm"``.

    Returns:
        A `PreTrainedTokenizerFast`.
    """
    from mmviz.teaching._tokenizer import load_tokenizer as _load

    return _load(_require("clip" if flavour == "clip" else "vlm"), flavour)  # type: ignore[arg-type]


def load_clip() -> tuple[CLIPModel, CLIPProcessor]:
    """The tiny teaching CLIP and its processor.

    Returns:
        ``(model, processor)``: a `CLIPModel` (vision 32 px, patch 2, so 16x16 patches
        plus CLS; text: word-level, EOS-pooled) in eval mode, and a `CLIPProcessor`
        (PIL image processor + word-level tokenizer).
    """
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from mmviz.teaching._common import image_processor

    path = _require("clip")
    with quiet_loading():
        model = CLIPModel.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()
    processor = CLIPProcessor(image_processor=image_processor(), tokenizer=load_tokenizer("clip"))
    return model, processor


def load_vlm() -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """The tiny teaching LLaVA and its processor.

    Prompts look like ``"<image> what colour is the square ?"``; the model answers
    with one word (``"blue"``) followed by ``<eos>``. The image becomes 64 image
    tokens (8x8 patches, row-major) right after ``<bos>``.

    Returns:
        ``(model, processor)``: a `LlavaForConditionalGeneration` (CLIP vision tower +
        small Llama) in eval mode, and a `LlavaProcessor`.
    """
    import torch
    from transformers import LlavaForConditionalGeneration

    from mmviz.teaching._vlm import vlm_processor

    path = _require("vlm")
    with quiet_loading():
        model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    model.eval()
    return model, vlm_processor(load_tokenizer("vlm"))


def load_sae() -> SAE:
    """The teaching sparse autoencoder of the VLM's vision tower (SAELens layout, read by `mmviz.load_sae`).

    It reads `SAE_SITE` (``model.vision_tower.encoder.layers.1``, width 64) at the image patches: 64
    top-k features (4 active per patch), among them features that fire on one colour only and features that
    fire on one shape only, whatever its colour (see
    `mmviz.teaching.naming` and `mmviz.teaching.train_sae`)::

        vlm, processor = teaching.load_vlm()
        ft = mmviz.features(vlm, inputs, teaching.load_sae(), processor, site=teaching.SAE_SITE)

    Returns:
        An `mmviz.features.SAE`.
    """
    from mmviz.features import load_sae as _load_sae

    return _load_sae(_require("sae"))


def load_diffusion() -> Any:
    """The tiny teaching text-to-image pipeline (pixel space, 32x32, DDIM).

    Returns:
        A `ShapesDiffusionPipeline` (a `diffusers.DiffusionPipeline` with ``unet``,
        ``text_encoder``, ``tokenizer``, ``scheduler``); call it like any diffusers
        pipeline: ``pipe("a red circle left of a blue square").images[0]``.
    """
    import torch
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    from mmviz.teaching._pipeline import ShapesDiffusionPipeline
    from mmviz.teaching._tokenizer import load_tokenizer as _load

    path = _require("diffusion")
    with quiet_loading():
        unet = UNet2DConditionModel.from_pretrained(path / "unet", dtype=torch.float32).eval()
        text_encoder = CLIPTextModel.from_pretrained(
            path / "text_encoder", dtype=torch.float32, local_files_only=True
        ).eval()
    scheduler = DDIMScheduler.from_pretrained(path / "scheduler")
    tokenizer = _load(path / "tokenizer", "clip")
    pipe: Any = ShapesDiffusionPipeline(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe
