"""LensTrace files and checks, and the chunked statistics against a dense computation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mmviz
from mmviz.data.lens import LensTrace
from tests.attribution.conftest import random_image

torch = pytest.importorskip("torch")


def test_save_load_round_trip(tmp_path: Path, llava: Any) -> None:
    model, processor = llava
    inputs = processor(images=[random_image()], text="<image> what shape", return_tensors="pt")
    lens = mmviz.logit_lens(model, inputs, processor, tokens=["red", "square"], top_k=4, positions=[0, 3, -1])
    lens.save(tmp_path / "lens.mmviz")
    back = mmviz.load(tmp_path / "lens.mmviz")
    assert isinstance(back, LensTrace) and repr(back) == repr(lens)
    for name in ("top_ids", "top_probs", "entropy", "named_probs", "named_scores", "named_ids", "positions"):
        np.testing.assert_array_equal(getattr(back, name), getattr(lens, name))
    assert back.layers == lens.layers and back.named == lens.named and back.info == lens.info
    assert back.top(1, 3) == lens.top(1, 3)
    np.testing.assert_array_equal(back.tokens.images[0], lens.tokens.images[0])
    np.testing.assert_array_equal(back.tokens.patch_row, lens.tokens.patch_row)
    assert list(back.tokens.text) == list(lens.tokens.text)


def small_trace(**change: Any) -> LensTrace:
    fields: dict[str, Any] = {
        "top_ids": np.array([[[[3, 1]], [[1, 3]]]]),
        "top_probs": np.array([[[[0.6, 0.3]], [[0.9, 0.05]]]]),
        "entropy": np.zeros((1, 2, 1)),
        "named_probs": np.array([[[[0.3]], [[0.9]]]]),
        "named_scores": np.zeros((1, 2, 1, 1)),
        "named": (" red",),
        "named_ids": [1],
        "vocab_ids": [1, 3],
        "vocab_text": [" red", " blue"],
        "layers": (0, 2),
        "positions": [1],
        "tables": (mmviz.TokenTable.build(["a", "b"]),),
    }
    return LensTrace(**{**fields, **change})


def test_reading_a_small_trace() -> None:
    lens = small_trace()
    assert lens.top(2, 1) == [(" red", pytest.approx(0.9)), (" blue", pytest.approx(0.05))]
    assert lens.top(0, -1)[0][0] == " blue"
    np.testing.assert_allclose(lens.prob(" red"), [[0.3], [0.9]])
    assert lens.top_text().tolist() == [[" blue"], [" red"]]
    with pytest.raises(IndexError, match="layers \\[0, 2\\]"):
        lens.top(1, 1)
    with pytest.raises(IndexError, match="position 0 was not lensed"):
        lens.top(0, 0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"entropy": np.zeros((1, 2, 2))}, "entropy must be"),
        ({"named_ids": [1, 3]}, "named ids"),
        ({"vocab_ids": [1], "vocab_text": [" red"]}, "have no text"),
        ({"positions": [2]}, "reach past"),
        ({"layers": (0,)}, "label arrays"),
        ({"method": "lens"}, "method must be"),
    ],
)
def test_inconsistent_traces_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        small_trace(**change)


def test_chunked_stats_equal_dense() -> None:
    from mmviz.lens._stats import chunked_stats

    torch.manual_seed(0)
    hidden = torch.randn(7, 5)
    weight = torch.randn(11, 5)

    def logits_of(h: Any) -> Any:
        z = h @ weight.T
        z[:, 4] = -torch.inf  # an output the model masks: probability 0, adds nothing to the entropy
        return z

    named = torch.tensor([4, 2])
    stats = chunked_stats(hidden, logits_of, 3, named, chunk=2)
    logits = logits_of(hidden).double()
    p = logits.softmax(-1)
    top = p.topk(3, dim=-1)
    np.testing.assert_array_equal(stats.top_ids.numpy(), top.indices.numpy())
    np.testing.assert_allclose(stats.top_probs.numpy(), top.values.numpy(), atol=1e-6)
    np.testing.assert_allclose(stats.named_probs.numpy(), p[:, named].numpy(), atol=1e-6)
    entropy = -(p[:, p[0] > 0] * p[:, p[0] > 0].log()).sum(-1)
    np.testing.assert_allclose(stats.entropy.numpy(), entropy.numpy(), atol=1e-5)
    assert stats.named_probs[:, 0].eq(0).all()
