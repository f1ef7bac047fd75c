"""The teaching text-to-image pipeline: a pixel-space diffusers pipeline.

`ShapesDiffusionPipeline` is a `diffusers.DiffusionPipeline` with the usual
components (``unet``, ``text_encoder``, ``tokenizer``, ``scheduler``) and no VAE.
Its "latent" space is the image itself, folded by ``pixel_unshuffle``: a 32x32x3
image in [-1, 1] becomes a 12x16x16 tensor, and decoding is ``pixel_shuffle``. Like
every diffusers pipeline it converts its output with a `VaeImageProcessor`. The
`UNet2DConditionModel` has cross-attention at 8x8 only (one latent cell = 4x4
pixels), conditioned on the hidden states of a small `CLIPTextModel` (the teaching
CLIP's text config) trained jointly with it.
"""

from __future__ import annotations

from typing import Any

import diffusers
import numpy as np
import torch
from diffusers import ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor

_PipelineBase: Any = diffusers.DiffusionPipeline

FOLD = 2
"""Pixels per latent cell along each axis (``pixel_unshuffle`` factor)."""

GUIDANCE_SCALE = 1.5
"""Default classifier-free guidance weight. Chosen on validation captions (seed 70000):
from 1.25 to 1.75 the model draws nearly every object in its colour (95%); at 3 the
images get noisy and off-palette (drawn 85%), at 7.5 most objects are lost (44%)."""


def image_to_latents(images: torch.Tensor) -> torch.Tensor:
    """Fold images into latents.

    Args:
        images: `[batch, 3, height, width]` in [-1, 1].

    Returns:
        `[batch, 3 * FOLD**2, height / FOLD, width / FOLD]`.
    """
    return torch.nn.functional.pixel_unshuffle(images, FOLD)


def latents_to_image(latents: torch.Tensor) -> torch.Tensor:
    """Unfold latents into images (inverse of `image_to_latents`).

    Args:
        latents: `[batch, 3 * FOLD**2, h, w]`.

    Returns:
        `[batch, 3, h * FOLD, w * FOLD]`.
    """
    return torch.nn.functional.pixel_shuffle(latents, FOLD)


class ShapesDiffusionPipeline(_PipelineBase):
    """Text-to-image for the shapes world, in pixel space.

    Args:
        unet: `UNet2DConditionModel` over folded pixels (12 channels, 16x16).
        text_encoder: `CLIPTextModel` (teaching CLIP text config, trained with the UNet).
        tokenizer: the teaching word-level tokenizer (``clip`` flavour).
        scheduler: a diffusers scheduler (DDIM by default).
    """

    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, unet: Any, text_encoder: Any, tokenizer: Any, scheduler: Any) -> None:
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
        self.vae_scale_factor = FOLD
        self.image_processor = VaeImageProcessor(vae_scale_factor=FOLD)

    @torch.no_grad()
    def encode_prompt(self, prompt: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize (padded to the maximum length) and encode prompts.

        Args:
            prompt: one prompt or a list.

        Returns:
            ``(input_ids, hidden_states)``: `[batch, tokens]` and `[batch, tokens, 64]`.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        enc = self.tokenizer(
            prompts, padding="max_length", max_length=self.tokenizer.model_max_length, return_tensors="pt"
        )
        ids = enc["input_ids"].to(self.device)
        hidden = self.text_encoder(input_ids=ids).last_hidden_state
        return ids, hidden

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_inference_steps: int = 25,
        guidance_scale: float = GUIDANCE_SCALE,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple[Any]:
        """Draw scenes from captions.

        Args:
            prompt: caption(s), e.g. ``"a red circle left of a blue square"``.
            num_inference_steps: denoising steps.
            guidance_scale: classifier-free guidance weight (1 disables it; default `GUIDANCE_SCALE`).
            generator: torch generator for the initial noise.
            latents: optional initial noise, `[batch, 12, 16, 16]`.
            output_type: ``"pil"``, ``"np"`` (`[batch, H, W, 3]` float in [0, 1]) or ``"pt"``.
            return_dict: return an `ImagePipelineOutput` (else a tuple).

        Returns:
            The generated images.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        batch = len(prompts)
        _, cond = self.encode_prompt(prompts)
        do_cfg = guidance_scale > 1.0
        if do_cfg:
            _, uncond = self.encode_prompt([""] * batch)
            context = torch.cat([uncond, cond])
        else:
            context = cond
        size = self.unet.config.sample_size
        shape = (batch, self.unet.config.in_channels, size, size)
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=self.unet.dtype).to(self.device)
        latents = latents * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = torch.cat([latents] * 2) if do_cfg else latents
            model_in = self.scheduler.scale_model_input(model_in, t)
            noise = self.unet(model_in, t, encoder_hidden_states=context).sample
            if do_cfg:
                noise_uncond, noise_cond = noise.chunk(2)
                noise = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
            latents = self.scheduler.step(noise, t, latents).prev_sample
        # the image processor maps [-1, 1] to [0, 1] and converts, like every diffusers pipeline (and lets
        # mmviz.capture keep the generated images)
        result = self.image_processor.postprocess(latents_to_image(latents).clamp(-1, 1), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (result,)
        return ImagePipelineOutput(images=result)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Convert ``output_type="np"`` images (float in [0, 1]) to uint8."""
    return (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8)
