"""mmviz: linked, offline views of attention, attributions and diffusion cross-attention.

The public API::

    import mmviz

    with mmviz.capture(model, processor=processor) as cap:   # record attention while the model runs
        out = model(**inputs)
    trace = cap.attention                                    # an AttentionTrace (numpy only)
    trace.probs(layers=[5])                                  # [layers, heads, query, key]
    trace.save("run.mmviz"); mmviz.load("run.mmviz")         # safe, versioned files

torch and transformers are optional: ``import mmviz`` and everything that reads, reduces and shows a
saved trace work without them; :func:`capture` imports them when called.
"""

from __future__ import annotations

from mmviz import capture
from mmviz.data import AttentionTrace, ModuleAttention, TokenTable, load
from mmviz.errors import BudgetError, CaptureError, MMVizError, TraceFileError

__version__ = "0.1.0"

__all__ = [
    "AttentionTrace",
    "BudgetError",
    "CaptureError",
    "MMVizError",
    "ModuleAttention",
    "TokenTable",
    "TraceFileError",
    "__version__",
    "capture",
    "load",
]
