"""LLaVA 1.5: each ``<image>`` placeholder expands to the patch grid, row-major; CLIP tower with CLS."""

from __future__ import annotations

from mmviz.capture.layouts import LayoutContext, register_layout


@register_layout("llava")
def llava(ctx: LayoutContext) -> None:
    """Image tokens are patch ``(k // cols, k % cols)``; the vision tower keeps its CLS first."""
    grid = ctx.vision_grid()
    image_token = getattr(ctx.config, "image_token_id", None)
    if image_token is None:
        image_token = getattr(ctx.config, "image_token_index", None)
    if grid is None or image_token is None or "text" not in ctx.tables:
        return
    ctx.mark_image_tokens(int(image_token), grid)
    for group in ctx.shapes:
        if group != "language_model":
            ctx.add_vision_tower(group, grid)
