"""Vision towers of ViT-style encoders (ViT, CLIP, SigLIP, DeiT, DINOv2, ...): leading specials, then patches."""

from __future__ import annotations

from mmviz.capture.layouts import LayoutContext, register_layout


@register_layout("clip", "siglip", "siglip2", "vit", "deit", "dinov2", "clip_vision_model", "siglip_vision_model")
def vision_encoder(ctx: LayoutContext) -> None:
    """Every stack whose sequence holds the patch grid gets a patch table (CLS and registers first)."""
    grid = ctx.vision_grid()
    if grid is None or not ctx.images:
        return
    for group, (batch, q_len, k_len) in ctx.shapes.items():
        is_text = "text" in group or ("text" in ctx.tables and len(ctx.tables["text"][0]) == q_len)
        if not is_text and q_len == k_len and q_len >= grid[0] * grid[1] and batch == len(ctx.images):
            ctx.add_vision_tower(group, grid)
