"""CrossAttentionTrace: construction, word lookup, DAAM heat maps, figures and files (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import mmviz
from mmviz.data import TokenTable
from mmviz.data.cross_attention import CrossAttentionLayer, CrossAttentionTrace, resize_bicubic
from mmviz.errors import TraceFileError


def _table() -> TokenTable:
    # <bos> a zeb ra </w> on grass <eos> <pad>: "zebra" is two subwords
    return TokenTable.build(
        ["<bos>", "a", "zeb", "ra", "on", "grass", "<eos>", "<eos>"],
        kind=["special", "text", "text", "text", "text", "text", "special", "pad"],
        word_id=[0, 1, 2, 2, 3, 4, 5, 6],
    )


def make_trace(heads: bool = False, steps: int = 3) -> CrossAttentionTrace:
    rng = np.random.default_rng(0)
    layers = [
        CrossAttentionLayer("down_blocks.0.attn2", (8, 8), 2),
        CrossAttentionLayer("mid_block.attn2", (4, 4), 2),
        CrossAttentionLayer("up_blocks.1.attn2", (8, 8), 2),
    ]
    maps = []
    for layer in layers:
        shape = (2, steps, *((2,) if heads else ()), 8, *layer.resolution)
        m = rng.random(shape, dtype=np.float32)
        maps.append((m / m.sum(axis=-3, keepdims=True)).astype(np.float16))
    images = rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    previews = rng.integers(0, 255, (2, steps, 16, 16, 3), dtype=np.uint8)
    timesteps = [900.0, 500.0, 100.0][:steps]
    return CrossAttentionTrace(maps, layers, [_table(), _table()], timesteps, images, {"x": 1}, previews)


def test_words_skip_special_and_padding_by_default() -> None:
    trace = make_trace()
    assert [w for w, _ in trace.words()] == ["a", "zebra", "on", "grass"]
    assert [w for w, _ in trace.words(special=True)] == ["<bos>", "a", "zebra", "on", "grass", "<eos>"]
    assert len(trace.words(special=True, padding=True)) == 7
    assert trace.words()[1][1].tolist() == [2, 3]


def test_bicubic_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).random((2, 5, 7), dtype=np.float32)
    for size in ((20, 28), (3, 4), (5, 7), (33, 17)):
        ours = resize_bicubic(x, size)
        ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None], size=size, mode="bicubic")[0].numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_heatmap_is_daam() -> None:
    trace = make_trace()
    heat = trace.heatmap("zebra", timesteps=[0, 2], layers=["down", "mid"], batch_index=1)
    expected = np.zeros((32, 32), dtype=np.float32)
    for slot in (0, 1):
        m = trace.maps(slot, batch_index=1)[[0, 2]][:, [2, 3]].mean(axis=1).sum(axis=0)
        expected += np.maximum(resize_bicubic(m, (32, 32)), 0)
    np.testing.assert_allclose(heat, expected, rtol=1e-5)
    assert trace.heatmap(1).shape == (32, 32)
    np.testing.assert_allclose(trace.heatmap(1), trace.heatmap("ZEBRA"))
    assert trace.heatmap("grass", size=(10, 12)).shape == (10, 12)
    assert trace.heatmap("<bos>", special=True).shape == (32, 32)
    assert trace.step_heatmaps("on").shape == (3, 32, 32)
    np.testing.assert_allclose(trace.step_heatmaps("on")[1], trace.heatmap("on", timesteps=1), rtol=1e-5)
    assert trace.token_maps(resolutions=[(4, 4)]).shape == (8, 32, 32)


def test_selection_errors() -> None:
    trace = make_trace()
    with pytest.raises(KeyError, match="not a word"):
        trace.heatmap("horse")
    with pytest.raises(IndexError):
        trace.heatmap(4)
    with pytest.raises(IndexError, match="timestep"):
        trace.heatmap(0, timesteps=[5])
    with pytest.raises(KeyError, match="no layer matches"):
        trace.heatmap(0, layers="attn1")
    with pytest.raises(KeyError, match="matches 2 layers"):
        trace.maps("blocks")
    with pytest.raises(ValueError, match="heads=True"):
        trace.maps(0, head=0)
    with pytest.raises(IndexError):
        trace.tokens(2)
    assert trace.layer_index(resolutions=[(8, 8)]) == [0, 2]


def test_heads_kept() -> None:
    trace = make_trace(heads=True)
    assert trace.has_heads
    assert trace.maps(0).shape == (3, 8, 8, 8)
    np.testing.assert_allclose(trace.maps(0), (trace.maps(0, head=0) + trace.maps(0, head=1)) / 2, rtol=1e-3)
    assert trace.heatmap("a", head=1).shape == (32, 32)


def test_validation() -> None:
    trace = make_trace()
    layers = trace.layers
    with pytest.raises(ValueError, match="resolution"):
        CrossAttentionTrace([np.zeros((2, 3, 8, 4, 4))] * 3, layers, trace.tables, trace.timesteps)
    with pytest.raises(ValueError, match="token table"):
        CrossAttentionTrace(
            [np.zeros((2, 3, 8, *lay.resolution)) for lay in layers], layers, trace.tables[:1], trace.timesteps
        )
    with pytest.raises(ValueError, match="previews"):
        CrossAttentionTrace(
            [np.zeros((2, 3, 8, *lay.resolution)) for lay in layers],
            layers,
            trace.tables,
            trace.timesteps,
            previews=np.zeros((2, 2, 4, 4, 3), np.uint8),
        )
    with pytest.raises(ValueError, match="timesteps"):
        CrossAttentionTrace([np.zeros((2, 3, 8, *lay.resolution)) for lay in layers], layers, trace.tables, [1.0])


def test_save_load_roundtrip(tmp_path: Any) -> None:
    trace = make_trace(heads=True)
    path = tmp_path / "x.mmviz"
    trace.save(path)
    loaded = mmviz.load(path)
    assert isinstance(loaded, CrossAttentionTrace)
    assert loaded.layers == trace.layers and loaded.info == {"x": 1} and loaded.has_heads
    np.testing.assert_array_equal(loaded.images, trace.images)
    np.testing.assert_array_equal(loaded.previews, trace.previews)
    np.testing.assert_array_equal(loaded.heatmap("zebra"), trace.heatmap("zebra"))
    assert loaded.tokens(1).tokens == trace.tokens(1).tokens
    assert "steps=3" in repr(loaded) and "a zebra on grass" in repr(loaded)
    (tmp_path / "bad.mmviz").write_bytes(b"nope")
    with pytest.raises(TraceFileError):
        mmviz.load(tmp_path / "bad.mmviz")


def test_head_mean_is_heads_times_smaller() -> None:
    assert make_trace().nbytes * 2 == make_trace(heads=True).nbytes


def test_figure() -> None:
    pytest.importorskip("matplotlib")
    fig = make_trace().figure(words=["zebra", "grass"], timesteps=slice(1, None))
    assert len([ax for ax in fig.axes if ax.images]) == 3
    titles = [ax.get_title() for ax in fig.axes]
    assert "zebra" in titles and "image" in titles
    fig2 = make_trace().figure()
    assert len([ax for ax in fig2.axes if ax.images]) == 5


def _with_concepts(trace: CrossAttentionTrace, concepts: tuple[str, ...] = ("Horse", "sky")) -> CrossAttentionTrace:
    """The trace with softmaxed concept maps on its first and last layer (the middle one has none)."""
    rng = np.random.default_rng(3)
    maps: list[np.ndarray | None] = []
    for i, layer in enumerate(trace.layers):
        if i == 1:
            maps.append(None)
            continue
        scores = rng.normal(size=(trace.batch_size, trace.num_steps, len(concepts), *layer.resolution))
        e = np.exp(scores)
        maps.append((e / e.sum(axis=2, keepdims=True)).astype(np.float16))
    return CrossAttentionTrace(
        [trace._maps[i] for i in range(len(trace.layers))],
        trace.layers,
        trace.tables,
        trace.timesteps,
        trace.images,
        trace.info,
        concepts=concepts,
        concept_maps=maps,
    )


def test_concept_maps_are_averaged_over_steps_and_layers() -> None:
    trace = _with_concepts(make_trace())
    assert trace.concepts == ("Horse", "sky") and trace.concept_layers == [0, 2]
    m = trace.concept_maps("up_blocks.1.attn2", batch_index=1)
    assert m.shape == (3, 2, 8, 8)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=2e-3)
    heat = trace.concept_heatmap("horse", timesteps=[0, 2], batch_index=1)
    expected = sum(resize_bicubic(trace.concept_maps(s, 1)[[0, 2], 0].mean(axis=0), (32, 32)) for s in (0, 2)) / 2
    np.testing.assert_allclose(heat, expected, rtol=1e-5)
    np.testing.assert_allclose(trace.concept_heatmap(1), trace.concept_heatmap("SKY"))
    assert trace.concept_token_maps(per_step=True, size=(10, 12)).shape == (3, 2, 10, 12)
    # the word maps are untouched by the concepts
    np.testing.assert_array_equal(trace.heatmap("zebra"), make_trace().heatmap("zebra"))
    assert "concepts: ['Horse', 'sky']" in repr(trace)


def test_concept_errors() -> None:
    trace = _with_concepts(make_trace())
    with pytest.raises(KeyError, match="not a captured concept"):
        trace.concept_heatmap("cat")
    with pytest.raises(IndexError, match="out of range"):
        trace.concept_heatmap(2)
    with pytest.raises(KeyError, match="holds no concept maps"):
        trace.concept_maps("mid")
    with pytest.raises(KeyError, match="no selected layer"):
        trace.concept_token_maps(layers=["mid"])
    with pytest.raises(KeyError, match=r"concepts=\[\.\.\.\]"):
        make_trace().concept_heatmap("horse")
    layers, tables, steps = trace.layers, trace.tables, trace.timesteps
    word_maps = [np.zeros((2, 3, 8, *lay.resolution)) for lay in layers]
    with pytest.raises(ValueError, match="expected \\[batch, steps, concepts, h, w\\]"):
        wrong = [np.zeros((2, 3, 2, 8, 8))] * 3
        CrossAttentionTrace(word_maps, layers, tables, steps, concepts=["a"], concept_maps=wrong)
    with pytest.raises(ValueError, match="without their concepts"):
        CrossAttentionTrace(word_maps, layers, tables, steps, concept_maps=[np.zeros((2, 3, 1, 8, 8)), None, None])
    with pytest.raises(ValueError, match="no layer holds"):
        CrossAttentionTrace(word_maps, layers, tables, steps, concepts=["a"], concept_maps=[None] * 3)


def test_concept_maps_round_trip(tmp_path: Any) -> None:
    trace = _with_concepts(make_trace())
    trace.save(tmp_path / "c.mmviz")
    loaded = mmviz.load(tmp_path / "c.mmviz")
    assert loaded.concepts == trace.concepts and loaded.concept_layers == [0, 2]
    for s in (0, 2):
        np.testing.assert_array_equal(loaded._concept_maps[s], trace._concept_maps[s])
    np.testing.assert_array_equal(loaded.concept_heatmap("sky"), trace.concept_heatmap("sky"))
    plain = make_trace()
    plain.save(tmp_path / "p.mmviz")
    assert mmviz.load(tmp_path / "p.mmviz").concepts == ()
