"""CrossAttentionView with concept maps (ConceptAttention): state, selection by concept, exports."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from mmviz import _codec
from mmviz.data.cross_attention import CrossAttentionTrace
from tests.widgets.test_cross_attention_view import WORDS, synthetic_cross_trace

CONCEPTS = ["disc", "box", "background"]


def synthetic_concept_trace(evil: bool = False) -> CrossAttentionTrace:
    """The synthetic trace plus concept maps on its two 16×16 layers (none on the 8×8 one): "disc" on the
    circle (left), "box" on the square (right), "background" elsewhere; a softmax over the concepts."""
    trace = synthetic_cross_trace(evil=evil)
    batch, steps = trace.batch_size, trace.num_steps
    cy, cx = np.mgrid[0:16, 0:16] + 0.5
    disc = np.exp(-((cy - 8) ** 2 + (cx - 4.5) ** 2) / 8)
    box = np.exp(-((cy - 8) ** 2 + (cx - 11.5) ** 2) / 8)
    scores = np.stack([6 * disc, 6 * box, np.full_like(disc, 1.0)])  # [concepts, h, w]
    probs = np.exp(scores) / np.exp(scores).sum(axis=0)
    maps = np.broadcast_to(probs, (batch, steps, *probs.shape)).astype(np.float16)
    names = [*CONCEPTS[:-1], "<b>bg</b>"] if evil else CONCEPTS
    return CrossAttentionTrace(
        list(trace._maps),
        trace.layers,
        trace.tables,
        trace.timesteps,
        trace.images,
        trace.info,
        trace.previews,
        concepts=names,
        concept_maps=[maps, maps, None],
    )


@pytest.fixture
def ctrace() -> CrossAttentionTrace:
    return synthetic_concept_trace()


def test_state_appends_concepts_to_the_word_axis(ctrace: CrossAttentionTrace) -> None:
    view = ctrace.show(word="box", step=1)
    assert view._words == WORDS and view._concepts == CONCEPTS
    assert view.word == len(WORDS) + 1
    fine, coarse = (_codec.decode_tensor(g["maps"]) for g in view._groups)
    assert fine.shape == (6, len(WORDS) + 3, 16, 16) and coarse.shape == (6, len(WORDS) + 3, 8, 8)
    # a concept's map in a group is the mean over the group's layers that hold concept maps
    expected = (ctrace.concept_maps(0)[:, 1] + ctrace.concept_maps(1)[:, 1]) / 2
    np.testing.assert_allclose(fine[:, len(WORDS) + 1], expected, atol=float(expected.max()) / 200)
    assert np.all(coarse[:, len(WORDS) :] == 0)  # the 8×8 layer has no concept maps
    np.testing.assert_allclose(
        fine[:, 2], _codec.decode_tensor(synthetic_cross_trace().show()._groups[0]["maps"])[:, 2]
    )
    view.word = len(WORDS) + 2
    with pytest.raises(Exception, match="words and concepts"):
        view.word = len(WORDS) + 3


def test_concept_errors_and_plain_views(ctrace: CrossAttentionTrace) -> None:
    with pytest.raises(KeyError, match="captured concept"):
        ctrace.show(word="sky")
    with pytest.raises(IndexError, match="words and concepts"):
        ctrace.show(word=len(WORDS) + 3)
    assert synthetic_cross_trace().show()._concepts == []


def test_export_keeps_concepts(ctrace: CrossAttentionTrace, tmp_path: Any) -> None:
    view = ctrace.show(word="disc")
    assert view.export_state()["_concepts"] == CONCEPTS
    html = view.save(tmp_path / "concepts.html")
    assert html.exists() and html.stat().st_size > 10_000
    fig = view.figure()
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[:2] == ["image", "a"] and titles[-3:] == ["concept: disc", "concept: box", "concept: background"]
    np.testing.assert_allclose(
        fig.axes[len(WORDS) + 1].get_images()[1].get_array(),
        _unit(ctrace.concept_heatmap("disc")),
        atol=1e-6,
    )
    assert [ax.get_title() for ax in view.figure(concepts=[]).axes if ax.get_title()][-1] != "concept: background"
    # the 8×8 resolution alone holds no concept maps: no concept panel
    view.resolutions = ["8x8"]
    assert not any("concept" in ax.get_title() for ax in view.figure().axes)
    assert view.save(tmp_path / "concepts.png").stat().st_size > 1000


def _unit(heat: np.ndarray) -> np.ndarray:
    return (heat - heat.min()) / (heat.max() - heat.min())
