"""Cross-attention recording for the diffusion model's training probe (plain diffusers processors).

Used by ``mmviz.teaching.train_diffusion`` while it trains, on a bare UNet call (no pipeline, so no
``mmviz.capture``):

- `CrossAttentionRecorder`: a diffusers attention processor for ``attn2`` modules that sums head-mean
  cross-attention maps over calls;
- `install_recorder`: puts one on every ``attn2`` of a UNet;
- `peak_pixel`: the pixel of a map's maximum after bilinear upsampling.

The published figures of the kit come from the public API (``mmviz.teaching.faithfulness``), not from here.
"""

from __future__ import annotations

from typing import Any

import torch


class CrossAttentionRecorder:
    """Diffusers attention processor that records cross-attention maps.

    Install it on the ``attn2`` modules only; it computes exactly what the classic
    `AttnProcessor` computes and adds the head-mean probabilities of every call to
    a running sum.

    Attributes:
        total: running sum `[batch, tokens, h, w]` (batch as seen by the UNet, i.e.
            ``[uncond; cond]`` under classifier-free guidance), or ``None``.
        calls: number of calls summed.
        shape: ``(h, w)`` of the latent grid, set by the caller before running.
    """

    def __init__(self, shape: tuple[int, int]) -> None:
        self.shape = shape
        self.total: torch.Tensor | None = None
        self.calls = 0

    def reset(self) -> None:
        """Drop the recorded maps."""
        self.total = None
        self.calls = 0

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Run attention like `AttnProcessor` and record the probabilities."""
        if encoder_hidden_states is None or hidden_states.ndim != 3:
            raise ValueError("CrossAttentionRecorder expects cross-attention on flattened tokens")
        residual = hidden_states
        batch, n, _ = hidden_states.shape
        tokens = encoder_hidden_states.shape[1]
        attention_mask = attn.prepare_attention_mask(attention_mask, tokens, batch)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, attention_mask)  # [batch*heads, n, tokens]
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        out = out / attn.rescale_output_factor

        h, w = self.shape
        scale = round((h * w / n) ** 0.5)
        maps = probs.detach().float().reshape(batch, attn.heads, n, tokens).mean(1)
        maps = maps.transpose(1, 2).reshape(batch, tokens, h // scale, w // scale)
        if maps.shape[-2:] != (h, w):
            maps = torch.nn.functional.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False)
        self.total = maps if self.total is None else self.total + maps
        self.calls += 1
        return out


def install_recorder(unet: Any, shape: tuple[int, int]) -> CrossAttentionRecorder:
    """Put one `CrossAttentionRecorder` on every ``attn2`` of a UNet (others: `AttnProcessor`).

    Args:
        unet: a `UNet2DConditionModel`.
        shape: latent ``(h, w)``; maps are brought to this size.

    Returns:
        The recorder (shared by all ``attn2`` modules).
    """
    from diffusers.models.attention_processor import AttnProcessor2_0

    recorder = CrossAttentionRecorder(shape)
    procs = {
        name: (recorder if name.endswith("attn2.processor") else AttnProcessor2_0()) for name in unet.attn_processors
    }
    unet.set_attn_processor(procs)
    return recorder


def peak_pixel(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel of each map's maximum after bilinear upsampling to the image size.

    Args:
        maps: `[batch, h, w]`.
        size: image height and width.

    Returns:
        `[batch, 2]` (row, col) long.
    """
    up = torch.nn.functional.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)
    flat = up.flatten(1).argmax(-1)
    return torch.stack([flat // size, flat % size], -1)
