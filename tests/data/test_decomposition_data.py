"""TextSpan's greedy basis on outputs whose answer is known."""

from __future__ import annotations

import numpy as np

from mmviz.data.decomposition import textspan


def test_textspan_picks_directions_in_order_of_variance() -> None:
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(8, 8)))[0]  # orthonormal directions
    colour, shape, position = basis[0], basis[1], basis[2]
    # outputs vary 3x more along "colour" than along "shape", not at all along "position"
    outputs = np.outer(rng.choice([-3.0, 3.0], 200), colour) + np.outer(rng.choice([-1.0, 1.0], 200), shape)
    texts = np.stack([position, shape * 2.0, colour + 0.0 * shape, colour + shape])
    picked, explained = textspan(outputs + 5.0, texts, k=3)  # the offset is centred away
    centred = outputs - outputs.mean(0)
    total = (centred**2).sum()
    assert picked[0] == 2  # pure colour explains 9 of 10 parts
    np.testing.assert_allclose(explained[0], ((centred @ colour) ** 2).sum() / total, rtol=1e-12)
    assert picked[1] == 1  # what is left is shape, which text 3 also carries once colour is removed
    np.testing.assert_allclose(explained[:2].sum(), 1.0, atol=1e-9)
    assert explained[2] < 1e-12
