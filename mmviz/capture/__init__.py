"""Capture attention while models run: transformers models (text, vision, VLMs).

``with mmviz.capture(model, processor=processor) as cap:`` switches the model to a recording attention
implementation registered in transformers' AttentionInterface, and switches it back on exit, also when
the block raises. ``cap.attention`` is an :class:`~mmviz.data.AttentionTrace` (numpy only).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmviz.capture._session import Capture

__all__ = ["DEFAULT_QK_THRESHOLD", "capture"]

DEFAULT_QK_THRESHOLD = 4096
"""``store="auto"`` keeps queries and keys instead of probabilities from this many keys on."""


def capture(
    model: Any,
    processor: Any = None,
    layers: Sequence[int] | dict[str, Sequence[int]] | None = None,
    heads: Sequence[int] | None = None,
    modules: Sequence[str] | None = None,
    store: str = "auto",
    qk_threshold: int = DEFAULT_QK_THRESHOLD,
) -> Capture:
    """Records attention of ``model`` while it runs inside a ``with`` block.

    Example::

        with mmviz.capture(model, processor=processor, layers=[5]) as cap:
            model(**inputs)                    # or model.generate(**inputs)
        cap.attention.probs(layers=[5])        # [layers, heads, query, key]

    Outputs are those of the uncaptured model; recorded probabilities are those of
    ``attn_implementation="eager"`` with ``output_attentions=True``. Layers that are not recorded run
    with the model's own implementation (sdpa by default).

    Args:
        model: a transformers ``PreTrainedModel`` (text, vision, vision-language, encoder-decoder).
        processor: its processor or tokenizer, for token texts and image layout (optional).
        layers: layer indices to record in every stack, or ``{"language_model": [...], ...}``; ``None``: all.
        heads: head indices to keep; ``None``: all.
        modules: stack names to record (e.g. ``["language_model"]``); ``None``: all.
        store: ``"dense"`` keeps float16 probabilities; ``"qk"`` keeps queries, keys and the mask and
            recomputes probabilities on demand (for long sequences); ``"auto"`` picks ``"qk"`` from
            ``qk_threshold`` keys on.
        qk_threshold: sequence length from which ``store="auto"`` keeps queries and keys.

    Returns:
        A :class:`Capture`; after the block, ``cap.attention`` is the trace of the last forward or
        ``generate`` call, ``cap.traces`` holds one trace per call.

    Raises:
        CaptureError: the model does not route attention through transformers' AttentionInterface.
    """
    from mmviz.capture._session import Capture

    return Capture(
        model, processor, layers=layers, heads=heads, modules=modules, store=store, qk_threshold=qk_threshold
    )


class _CallableModule(types.ModuleType):
    """Lets ``mmviz.capture(model)`` call :func:`capture` although ``mmviz.capture`` is this package."""

    def __call__(self, *args: Any, **kwargs: Any) -> Capture:
        return capture(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
