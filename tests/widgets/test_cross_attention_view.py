"""CrossAttentionView: state, options, budget, batch switching and exports (no browser)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from mmviz import _codec
from mmviz.data import TokenTable
from mmviz.data.cross_attention import CrossAttentionLayer, CrossAttentionTrace
from mmviz.errors import BudgetError

WORDS = ["a", "red", "circle", "left", "of", "a", "blue", "square"]


def synthetic_cross_trace(batch: int = 2, steps: int = 6, evil: bool = False) -> CrossAttentionTrace:
    """A 64×64 image with a red circle (left) and a blue square (right); "red"/"circle" attend to the circle,
    "blue"/"square" to the square, sharper at later steps; two resolutions (16×16 ×2 layers, 8×8 ×1)."""
    size = 64
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    image = np.full((size, size, 3), 235, dtype=np.uint8)
    circle = (yy - 32) ** 2 + (xx - 18) ** 2 < 11**2
    square = (np.abs(yy - 32) < 10) & (np.abs(xx - 46) < 10)
    image[circle] = (210, 40, 40)
    image[square] = (40, 70, 210)
    words = [*WORDS[:-1], "<img src=x onerror=alert(1)>"] if evil else WORDS
    text = ["<bos>", *words, "<eos>"]
    table = TokenTable.build(text, kind=["special", *["text"] * len(words), "special"])
    layers = [
        CrossAttentionLayer("down_blocks.0.attn2", (16, 16), 4),
        CrossAttentionLayer("up_blocks.1.attn2", (16, 16), 4),
        CrossAttentionLayer("mid_block.attn2", (8, 8), 4),
    ]
    centres = {2: (32, 18), 3: (32, 18), 7: (32, 46), 8: (32, 46)}  # token index -> (y, x) in pixels
    maps = []
    for layer in layers:
        h, w = layer.resolution
        cy, cx = np.mgrid[0:h, 0:w] + 0.5
        m = np.full((batch, steps, len(text), h, w), 0.05, dtype=np.float32)
        for s in range(steps):
            width = (0.3 - 0.2 * s / max(steps - 1, 1)) * h
            for token, (py, px) in centres.items():
                y, x = py / size * h, px / size * w
                m[:, s, token] += np.exp(-((cy - y) ** 2 + (cx - x) ** 2) / (2 * width**2))
        m /= m.sum(axis=2, keepdims=True)
        maps.append(m.astype(np.float16))
    noise = np.random.default_rng(0).integers(0, 255, (steps, size, size, 3))
    weight = np.linspace(1, 0, steps)[:, None, None, None]
    frames = (weight * noise + (1 - weight) * image[None]).astype(np.uint8)  # [steps, H, W, 3], noise → image
    return CrossAttentionTrace(
        maps,
        layers,
        [table] * batch,
        np.linspace(999, 0, steps).round(),
        np.stack([image] * batch),
        {"pipeline": "synthetic"},
        np.stack([frames] * batch),
    )


@pytest.fixture
def xtrace() -> CrossAttentionTrace:
    return synthetic_cross_trace()


def test_state(xtrace: CrossAttentionTrace) -> None:
    view = xtrace.show(word="circle", step=2)
    assert view._view == "cross_attention"
    assert view._words == WORDS and view.word == 2 and view.step == 2
    assert [g["key"] for g in view._groups] == ["16x16", "8x8"]
    assert view.resolutions == ["16x16", "8x8"]
    group = view._groups[0]
    assert group["layers"] == ["down_blocks.0.attn2", "up_blocks.1.attn2"]
    maps = _codec.decode_tensor(group["maps"])
    assert maps.shape == (6, len(WORDS), 16, 16)
    expected = xtrace.maps(0)[:, 3] + xtrace.maps(1)[:, 3]  # word "circle" is token 3
    np.testing.assert_allclose(maps[:, 2], expected, atol=float(expected.max()) / 200)
    assert _codec.decode_tensor(view._image).shape == (64, 64, 3)
    assert _codec.decode_tensor(view._previews).shape == (6, 64, 64, 3)
    assert view._image_size == [64, 64]


def test_options_and_errors(xtrace: CrossAttentionTrace) -> None:
    view = xtrace.show(layers=["up_blocks"], resolutions=["16x16"], special=True, cmap="magma")
    assert [g["key"] for g in view._groups] == ["16x16"] and view._groups[0]["layers"] == ["up_blocks.1.attn2"]
    assert view._words[0] == "<bos>" and view._words[-1] == "<eos>"
    with pytest.raises(TypeError, match="unexpected keyword"):
        xtrace.show(head=1)
    with pytest.raises(KeyError, match="resolution"):
        xtrace.show(resolutions=["4x4"])
    with pytest.raises(IndexError):
        xtrace.show(step=6)
    with pytest.raises(BudgetError, match="layers="):
        xtrace.show(budget=1000)
    view = xtrace.show()
    with pytest.raises(Exception, match="out of range"):
        view.word = 99
    view.step = -1
    view.batch_index = 1
    assert view.batch_index == 1 and len(view._groups) == 2


def test_export_state_and_files(xtrace: CrossAttentionTrace, tmp_path: Any) -> None:
    view = xtrace.show(step=-1)
    state = view.export_state()
    assert state["_standalone"] is True and state["_view"] == "cross_attention" and state["step"] == -1
    with pytest.raises(BudgetError):
        view.export_state(budget=100)
    for suffix in ("png", "svg"):
        out = view.save(tmp_path / f"fig.{suffix}")
        assert out.stat().st_size > 1000
    with pytest.raises(ValueError, match=r"ending in \.html, \.png, \.svg, \.pdf"):
        view.save(tmp_path / "fig.gif")


def test_html_export_escapes_words(tmp_path: Any) -> None:
    pytest.importorskip("anywidget")
    from mmviz._static import STATIC_DIR

    if not (STATIC_DIR / "standalone.js").is_file():
        pytest.skip("front-end bundle not built")
    view = synthetic_cross_trace(evil=True).show()
    path = view.save(tmp_path / "x.html", title="cross attention")
    text = path.read_text()
    assert "<img src=x" not in text
    start = text.index('id="mmviz-state-0">') + len('id="mmviz-state-0">')
    state = json.loads(text[start : text.index("</script>", start)])
    assert state["_words"][-1] == "<img src=x onerror=alert(1)>"
