"""Targets beyond token ids and answers: the similarity of a pooled embedding to a reference.

``mmviz.similarity_to(reference)`` is what a model without a head (a bare encoder such as ``BertModel``,
a sentence-embedding model such as all-MiniLM-L6-v2) is explained by: the similarity of its pooled
embedding of the input to the embedding of a reference text, or to a given embedding. This module only
describes the target (it imports no torch); ``mmviz.attribute`` resolves it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["METRICS", "POOLINGS", "SimilarityTarget", "similarity_to"]

POOLINGS = ("mean", "cls", "pooler", "last")
"""How the last hidden states ``[batch, positions, dim]`` become one embedding ``[batch, dim]``.

``"mean"``: the mean over the positions the attention mask keeps (sentence-transformers' pooling for
MiniLM, MPNet and most sentence-embedding models); ``"cls"``: the first position; ``"pooler"``: the
model's own pooler output (BERT's dense + tanh over ``[CLS]``); ``"last"``: the last kept position
(decoder embedding models)."""

METRICS = ("cosine", "dot")
"""``"cosine"``: cosine similarity (sentence-transformers' default); ``"dot"``: the dot product."""


@dataclass(frozen=True, eq=False)
class SimilarityTarget:
    """The similarity of the input's pooled embedding to a reference (made by ``similarity_to``).

    Attributes:
        reference: a text, a mapping of tokenized model inputs for one example, or an embedding
            (``[dim]`` or ``[1, dim]`` tensor or array).
        pooling: one of ``POOLINGS``.
        metric: one of ``METRICS``.
    """

    reference: Any
    pooling: str = "mean"
    metric: str = "cosine"

    def describe(self) -> str:
        """A short text naming the reference, e.g. ``'a cat'`` or ``embedding [384]``."""
        ref = self.reference
        if isinstance(ref, str):
            return repr(ref if len(ref) <= 40 else ref[:37] + "...")
        if isinstance(ref, Mapping):
            return "the given reference inputs"
        shape = getattr(ref, "shape", None)
        size = shape[-1] if shape is not None and len(shape) else len(ref)
        return f"embedding [{size}]"


def similarity_to(reference: Any, *, pooling: str = "mean", metric: str = "cosine") -> SimilarityTarget:
    """A target: the similarity of the input's pooled embedding to a reference text or embedding.

    Example::

        tok = AutoTokenizer.from_pretrained(path)          # all-MiniLM-L6-v2, a BertModel
        model = AutoModel.from_pretrained(path)
        inputs = tok("A man is playing a guitar.", return_tensors="pt")
        attr = mmviz.attribute(model, inputs, processor=tok,
                               target=mmviz.similarity_to("Someone plays an instrument."))
        attr.info["f_input"]                                 # the cosine similarity explained

    The input's embedding is the model's last hidden state ``[1, positions, dim]`` pooled into
    ``[1, dim]``; a text reference is embedded by the same model and pooling (tokenized with the
    ``processor=`` given to ``mmviz.attribute``) and is held fixed: only the input is attributed. A model
    with a head (a classifier, a language model) is pooled from its last hidden state too
    (``output_hidden_states``). On a bare model a plain ``target="text"`` is short for
    ``similarity_to("text")``, and ``target=(a, b)`` explains ``similarity(a) − similarity(b)``.

    Args:
        reference: the text to compare with; or a mapping of model inputs for one example (e.g.
            ``tok("text", return_tensors="pt")``); or an embedding ``[dim]`` (``[1, dim]`` also works),
            as a torch tensor, a numpy array or a list of floats.
        pooling: ``"mean"`` (default: the mean over the positions the attention mask keeps, as
            sentence-transformers pools all-MiniLM-L6-v2), ``"cls"`` (the first position),
            ``"pooler"`` (the model's pooler output, e.g. BERT's tanh layer over ``[CLS]``) or
            ``"last"`` (the last kept position, for decoder embedding models).
        metric: ``"cosine"`` (default) or ``"dot"``.

    Returns:
        A ``SimilarityTarget`` to pass as ``target=``.

    Raises:
        ValueError: an unknown pooling or metric, or an empty reference.
        TypeError: a reference that is neither text, inputs nor an embedding.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    if isinstance(reference, str):
        if not reference.strip():
            raise ValueError("the reference text is empty")
    elif isinstance(reference, Mapping):
        if "input_ids" not in reference and "pixel_values" not in reference:
            raise ValueError(
                f"reference inputs need input_ids (or pixel_values); got the keys {sorted(reference)}. Pass "
                "tokenizer(text, return_tensors='pt'), or the text itself"
            )
    elif not (hasattr(reference, "shape") or isinstance(reference, (list, tuple))):
        raise TypeError(
            f"a similarity reference is a text, tokenized inputs or an embedding [dim], not {type(reference).__name__}"
        )
    elif len(getattr(reference, "shape", (len(reference),))) == 0 or not len(reference):
        raise ValueError("the reference embedding is empty")
    return SimilarityTarget(reference, pooling, metric)
