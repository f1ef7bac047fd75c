"""mmviz: linked, offline views of attention, attributions and diffusion cross-attention.

The public API::

    import mmviz

    with mmviz.capture(model, processor=processor) as cap:   # record attention while the model runs
        out = model(**inputs)
    trace = cap.attention                                    # an AttentionTrace (numpy only)
    trace.probs(layers=[5])                                  # [layers, heads, query, key]
    trace.save("run.mmviz"); mmviz.load("run.mmviz")         # safe, versioned files
    attr = mmviz.attribute(model, inputs, processor=processor, method="integrated_gradients", target=" red")
    view = trace.show(layer=5)                               # linked AttentionView widget
    mmviz.save_html([view], "report.html", title="...")     # one offline HTML file
    with mmviz.capture(pipe) as cap:                         # diffusers: SD, SDXL, PixArt, SD3, Flux
        image = pipe("a red circle left of a blue square").images[0]
    cap.cross_attention.heatmap("circle")                    # [H, W] DAAM map; .show() for the view
    with mmviz.capture(flux_pipe, concepts=["cat", "sky"]) as cap:   # ConceptAttention: SD3, Flux, PixArt
        flux_pipe("a cat on a lawn")
    cap.cross_attention.concept_heatmap("sky")               # [H, W] concept map, beside the word maps
    lens = mmviz.logit_lens(model, inputs, processor, tokens=[" red"])  # each layer read out as logits
    lens.prob(" red")                                        # [layers, positions]
    dec = mmviz.decompose(clip, inputs, processor, texts=["a red shape"])   # CLIP/SigLIP embedding by head, patch
    dec.scores("a red shape")                                # [layers, heads] shares of the similarity
    with mmviz.steer(vlm, direction, site="language_model.layers.3", alpha=4.0):   # add / ablate a direction
        vlm.generate(**inputs)
    sae = mmviz.load_sae("saes/layer3")                      # SAELens / dictionary-learning weights
    ft = mmviz.features(vlm, inputs, sae, processor, site="language_model.layers.3")   # a FeatureTrace
    ft.top(5); ft.activations(812)                           # top features at a position; a feature's row
    rep = mmviz.evaluate(attr, model, inputs, masks=mask)    # can this map be trusted? (FaithfulnessReport)

torch and transformers are optional: ``import mmviz`` and everything that reads, reduces and shows a
saved trace work without them; ``capture`` imports them when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mmviz.attribution import attribute, similarity_to
from mmviz.capture import capture
from mmviz.data import (
    AttentionTrace,
    Attribution,
    CrossAttentionTrace,
    DecompositionTrace,
    DiffusionLensTrace,
    FaithfulnessReport,
    FeatureTrace,
    LensTrace,
    ModuleAttention,
    PatchingTrace,
    TokenTable,
    load,
)
from mmviz.decompose import decompose
from mmviz.errors import BudgetError, CaptureError, InputMismatchError, MMVizError, TraceFileError
from mmviz.evaluation import evaluate
from mmviz.features import SAE, features, load_sae
from mmviz.lens import logit_lens
from mmviz.patching import patch
from mmviz.steering import direction, steer

__version__ = "0.1.0"

__all__ = [
    "SAE",
    "AttentionTrace",
    "Attribution",
    "BudgetError",
    "CaptureError",
    "CrossAttentionTrace",
    "Dashboard",
    "DecompositionTrace",
    "DiffusionLensTrace",
    "FaithfulnessReport",
    "FeatureTrace",
    "InputMismatchError",
    "LensTrace",
    "MMVizError",
    "ModuleAttention",
    "PatchingTrace",
    "TokenTable",
    "TraceFileError",
    "__version__",
    "attribute",
    "capture",
    "decompose",
    "direction",
    "evaluate",
    "features",
    "load",
    "load_sae",
    "logit_lens",
    "patch",
    "save_html",
    "similarity_to",
    "steer",
]

if TYPE_CHECKING:
    from pathlib import Path


def save_html(views: Any, path: Any, **options: Any) -> Path:
    """Writes views to one self-contained, offline HTML file.

    See ``mmviz.export.save_html`` (``title=``, ``notes=``, ``budget=``).
    """
    from mmviz.export import save_html as _save_html

    return _save_html(views, path, **options)


_LAZY_MODULES = ("widgets", "export", "teaching")
"""Subpackages reachable as ``mmviz.<name>`` without importing them up front (widgets need anywidget)."""


def __getattr__(name: str) -> Any:
    if name == "Dashboard":  # a widget: imported on first use, so `import mmviz` needs no anywidget
        from mmviz.widgets.dashboard import Dashboard

        return Dashboard
    if name in _LAZY_MODULES:
        import importlib

        return importlib.import_module(f"mmviz.{name}")
    raise AttributeError(f"module 'mmviz' has no attribute {name!r}")
