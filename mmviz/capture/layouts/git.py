"""GIT: the projected vision tower's outputs are a prefix of the text decoder's sequence.

GIT's text decoder (stack ``encoder``, a BERT-like stack with a causal text part) attends over
``[image tokens, text]``: the vision tower's whole output (``[CLS]`` then the patch grid, row-major) is
projected and put before the text embeddings, once per image (frames of a video follow one another).
Image tokens are laid out as the tower's own positions, so the decoder's attention to an image token
lights up that patch. The tower (``image_encoder``) is a CLIP vision model: ``[CLS]`` then the grid.
"""

from __future__ import annotations

from mmviz._hf.tokens import patch_table
from mmviz.capture.layouts import LayoutContext, register_layout
from mmviz.data import TokenTable

__all__ = ["git"]

DECODER = "encoder"
TOWER = "image_encoder"


@register_layout("git")
def git(ctx: LayoutContext) -> None:
    """Lays out the tower and puts ``[CLS] + grid`` per image before the text of the decoder's table."""
    grid = ctx.vision_grid()
    if grid is None:
        return
    ctx.add_vision_tower(TOWER, grid, prefix=1)
    if DECODER not in ctx.shapes or "text" not in ctx.tables:
        return
    batch, q_len, k_len = ctx.shapes[DECODER]
    texts = ctx.tables["text"]
    per_image = 1 + grid[0] * grid[1]
    extra = q_len - len(texts[0])
    if q_len != k_len or extra <= 0 or extra % per_image or len(texts) != batch:
        return
    images = extra // per_image
    tables = []
    for b, text in enumerate(texts):
        prefix: TokenTable | None = None
        for i in range(images):
            tower = patch_table(
                per_image, grid, ctx.image(b * images + i), [f"<image {i} CLS>" if images > 1 else "[CLS]"]
            )
            prefix = tower if prefix is None else prefix.concat(tower)
        assert prefix is not None
        tables.append(prefix.concat(text))
    ctx.tables["decoder_sequence"] = tables
    ctx.module_tables[DECODER] = ("decoder_sequence", "decoder_sequence")
