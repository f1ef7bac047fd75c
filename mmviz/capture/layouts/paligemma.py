"""PaliGemma: the image comes first, as a prefix of ``(S/P)²`` placeholders, row-major; SigLIP tower, no CLS.

The sequence is ``[<image>×N, <bos>, prompt…, newline, suffix…]``; attention over image and prompt is
bidirectional (prefix-LM, from ``token_type_ids``) and causal over the suffix. The recorded mask is the
model's own, so the prefix block shows up as a full square in the language model's attention.
"""

from __future__ import annotations

from mmviz.capture.layouts import LayoutContext, register_layout

__all__ = ["paligemma"]


@register_layout("paligemma")
def paligemma(ctx: LayoutContext) -> None:
    """The k-th image token of an image is patch ``(k // cols, k % cols)``; the tower is the bare grid."""
    grid = ctx.vision_grid()
    image_token = getattr(ctx.config, "image_token_id", None)
    if image_token is None:
        image_token = getattr(ctx.config, "image_token_index", None)
    if grid is None:
        return
    if image_token is not None and "text" in ctx.tables:
        ctx.mark_image_tokens(int(image_token), grid)
    for group in ctx.shapes:
        if group != "language_model":
            ctx.add_vision_tower(group, grid)
