from __future__ import annotations

import numpy as np

from mmviz.data import reductions


def _probs(layers=2, heads=3, n=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((layers, heads, n, n)) + 0.01
    return x / x.sum(-1, keepdims=True)


def test_head_mean_and_max():
    p = _probs()
    assert np.allclose(reductions.head_mean(p), p.mean(axis=1))
    assert np.allclose(reductions.head_max(p), p.max(axis=1))


def test_rollout_matches_step_by_step_definition():
    p = _probs(layers=3)
    n = p.shape[-1]
    expected = np.eye(n)
    for layer in range(3):
        a = 0.5 * p[layer].mean(0) + 0.5 * np.eye(n)
        a = a / a.sum(-1, keepdims=True)
        expected = a @ expected
        assert np.allclose(reductions.rollout(p)[layer], expected, atol=1e-6)
    assert np.allclose(reductions.rollout(p).sum(-1), 1.0, atol=1e-5)


def test_rollout_without_residual_is_plain_product():
    p = _probs(layers=2)
    r = reductions.rollout(p, residual=False)
    assert np.allclose(r[-1], p[1].mean(0) @ p[0].mean(0), atol=1e-6)


def test_hide_positions_renormalises():
    p = _probs()
    hidden = np.array([True, False, False, False, False])
    h = reductions.hide_positions(p, hidden)
    assert np.all(h[..., 0] == 0)
    assert np.allclose(h.sum(-1), 1.0, atol=1e-6)
    raw = reductions.hide_positions(p, hidden, renormalize=False)
    assert np.allclose(raw[..., 1:], p[..., 1:])


def test_merge_words_sums_keys_and_averages_queries():
    p = _probs(layers=1, heads=1, n=4)
    words = np.array([0, 1, 1, 2])
    m = reductions.merge_words(p, words)
    assert m.shape == (1, 1, 3, 3)
    assert np.allclose(m.sum(-1), 1.0, atol=1e-6)
    assert np.isclose(m[0, 0, 0, 1], p[0, 0, 0, 1] + p[0, 0, 0, 2])
    assert np.isclose(m[0, 0, 1, 0], (p[0, 0, 1, 0] + p[0, 0, 2, 0]) / 2)
