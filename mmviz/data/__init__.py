"""The numpy-only data model: token tables, traces, reductions and ``.mmviz`` files.

Nothing here imports torch: a trace saved on a GPU machine opens, reduces and exports anywhere.
"""

from __future__ import annotations

from mmviz.data import reductions
from mmviz.data.attention import AttentionTrace, ModuleAttention
from mmviz.data.attribution import Attribution
from mmviz.data.cross_attention import CrossAttentionLayer, CrossAttentionTrace
from mmviz.data.decomposition import DecompositionTrace
from mmviz.data.faithfulness import CheckResult, FaithfulnessReport
from mmviz.data.features import FeatureTrace
from mmviz.data.io import load
from mmviz.data.lens import DiffusionLensTrace, LensTrace
from mmviz.data.patching import PatchingTrace
from mmviz.data.qk import QKAttention
from mmviz.data.tokens import KINDS, TokenTable

__all__ = [
    "KINDS",
    "AttentionTrace",
    "Attribution",
    "CheckResult",
    "CrossAttentionLayer",
    "CrossAttentionTrace",
    "DecompositionTrace",
    "DiffusionLensTrace",
    "FaithfulnessReport",
    "FeatureTrace",
    "LensTrace",
    "ModuleAttention",
    "PatchingTrace",
    "QKAttention",
    "TokenTable",
    "load",
    "reductions",
]
