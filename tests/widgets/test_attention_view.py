from __future__ import annotations

import numpy as np
import pytest
import traitlets

from mmviz import BudgetError
from mmviz._codec import decode_tensor, payload_nbytes
from mmviz.widgets import AttentionView
from tests.fixtures.synthetic import big_trace, make_trace


def test_state_is_binary_with_expected_shapes(trace):
    view = AttentionView(trace, layer=1, head=2)
    lm = next(m for m in view._modules if m["name"] == "language_model")
    n = lm["n_query"]
    thumbs = view._thumbs["language_model"]
    s = min(n, 32)
    assert thumbs["heads"]["dtype"] == "uint8" and thumbs["heads"]["shape"] == [3, 4, s, s]
    assert thumbs["mean"]["shape"] == [3, s, s] and thumbs["max"]["shape"] == [3, s, s]
    assert isinstance(thumbs["heads"]["data"], bytes) and len(thumbs["heads"]["data"]) == 3 * 4 * s * s
    (key,) = view._slices
    assert key == "language_model|1|2"
    payload = view._slices[key]
    assert payload["dtype"] == "uint8" and payload["shape"] == [n, n] and payload["axes"] == 1
    np.testing.assert_allclose(decode_tensor(payload), trace.probs(layers=1, heads=2)[0, 0], atol=1 / 255)
    table = view._tables["lm"]
    assert table["image_index"]["dtype"] == "int32" and table["images"][0]["shape"] == [32, 32, 3]
    assert all(isinstance(t, str) for t in table["text"])


def test_defaults_open_on_the_last_layer_head_mean(trace):
    view = AttentionView(trace)
    assert (view.module, view.layer, view.aggregate) == ("language_model", 2, "mean")
    assert set(view._thumbs) == {"language_model", "vision_tower"}


def test_unknown_kwargs_raise_type_error(trace):
    with pytest.raises(TypeError, match="layerz"):
        AttentionView(trace, layerz=3)
    with pytest.raises(TypeError, match="valid options"):
        trace.show(colour="red")


def test_selection_traits_sync_and_validate(trace):
    view = trace.show(layer=0, head=1)
    seen = []
    view.observe(lambda change: seen.append(change["new"]), names=["layer"])
    view.layer = 2
    assert seen == [2]
    with pytest.raises(traitlets.TraitError, match="layer 7"):
        view.layer = 7
    with pytest.raises(traitlets.TraitError, match="head 9"):
        view.head = 9
    view.module = "vision_tower"  # layer 2 / head 1 do not exist there: reset to valid ones
    assert view.layer == 1 and view.head in (0, 1)


def test_slice_requests_are_answered_with_buffers(trace):
    view = AttentionView(trace)
    sent = []
    view.send = lambda content, buffers=None: sent.append((content, buffers))  # type: ignore[method-assign]
    view._on_msg(view, {"type": "slice", "module": "language_model", "layer": 0, "aggregate": "head", "head": 3}, [])
    content, buffers = sent[-1]
    assert content["key"] == "language_model|0|3" and content["dtype"] == "uint8"
    n = content["shape"][0]
    assert len(buffers) == 3 and len(buffers[0]) == n * n and len(buffers[1]) == 4 * n
    view._on_msg(view, {"type": "slice", "module": "language_model", "layer": 0, "aggregate": "rollout"}, [])
    assert sent[-1][0]["key"] == "language_model|0|rollout"
    view._on_msg(view, {"type": "slice", "module": "nope", "layer": 0, "aggregate": "head", "head": 0}, [])
    assert "error" in sent[-1][0] and "nope" in sent[-1][0]["error"]


def test_layers_and_heads_trim_the_state(trace):
    view = AttentionView(trace, layers=[1], heads=[0, 2], modules=["language_model"])
    assert view._modules[0]["layers"] == [1] and view._modules[0]["heads"] == [0, 2]
    assert view._thumbs["language_model"]["heads"]["shape"][:2] == [1, 2]


def test_budget_error_names_the_knobs(trace):
    with pytest.raises(BudgetError) as err:
        AttentionView(trace, budget=1000)
    message = str(err.value)
    for knob in ("layers=", "heads=", "module=", "budget="):
        assert knob in message


def test_12x12_model_at_1024_tokens_opens_under_16_mb():
    view = AttentionView(big_trace(1024))
    total = sum(payload_nbytes(getattr(view, name)) for name in ("_tables", "_thumbs", "_slices"))
    assert total <= 16_000_000
    assert total < 2_000_000  # thumbnails + one 1024² uint8 map


def test_huge_trace_is_downsampled(monkeypatch):
    view = AttentionView(big_trace(2100, n_layers=1, n_heads=2), max_matrix=1024)
    m = view._modules[0]
    assert (m["q_step"], m["k_step"]) == (3, 3)
    (payload,) = view._slices.values()
    assert payload["shape"] == [700, 700]
    assert any("averaged" in note for note in view._notes)


def test_trace_displays_itself(trace):
    bundle = trace._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    assert "application/vnd.jupyter.widget-view+json" in data
    assert "text/plain" in data


def test_batch_index_switch_reloads():
    t = make_trace(batch=2, vision=False)
    view = AttentionView(t, batch_index=0)
    before = view._slices
    view.batch_index = 1
    assert view.source.batch_index == 1 and view._slices is not before
    with pytest.raises(IndexError):
        AttentionView(t, batch_index=5)


def test_thumbnails_match_block_means_of_the_data(trace):
    from mmviz.data.display import block_mean, steps

    view = AttentionView(trace, modules=["language_model"])
    thumbs = view._thumbs["language_model"]
    n = view._modules[0]["n_query"]
    qs, ks = steps(n, n, view.thumb_size)
    mean = block_mean(trace.head_mean(), qs, ks)
    mx = block_mean(trace.head_max(), qs, ks)
    heads = block_mean(trace.probs(), qs, ks)
    np.testing.assert_allclose(decode_tensor(thumbs["mean"]), mean, atol=mean.max() / 255 + 1e-6)
    np.testing.assert_allclose(decode_tensor(thumbs["max"]), mx, atol=mx.max() / 255 + 1e-6)
    np.testing.assert_allclose(decode_tensor(thumbs["heads"]), heads, atol=heads.max() / 255 + 1e-6)


def test_state_has_no_float_lists(trace):
    view = AttentionView(trace)

    def walk(value, path="state"):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}.{k}")
        elif isinstance(value, (list, tuple)):
            assert not any(isinstance(v, float) for v in value), f"{path} is a JSON list of floats"
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]")

    walk({name: getattr(view, name) for name in ("_tables", "_thumbs", "_slices", "_modules")})


def test_save_writes_html_and_refuses_other_extensions(trace, tmp_path):
    view = AttentionView(trace)
    with pytest.raises(ValueError, match=r"\.html, \.png, \.svg, \.pdf"):
        view.save(tmp_path / "figure.jpg")
    path = tmp_path / "figure.html"
    view.save(path)
    text = path.read_text(encoding="utf-8")
    assert "<photograph" not in text and "http://" not in text and "https://" not in text


def test_a_captured_tiny_llava_shows_and_exports(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tests.fixtures.tiny_models import tiny_llava_trace

    trace = tiny_llava_trace()
    view = trace.show(layer=1, head=2)
    assert [m["name"] for m in view._modules] == ["language_model", "vision_tower"]
    table = view._tables[view._modules[0]["query_table"]]
    assert table["images"][0]["shape"] == [32, 32, 3] and table["grids"] == [[4, 4]]
    assert view._slices["language_model|1|2"]["shape"] == [22, 22]
    view.module = "vision_tower"
    assert view.layer in (0, 1)
    page = view.save(tmp_path / "llava.html").read_text(encoding="utf-8")
    assert "vision_tower" in page


def test_browser_switching_module_with_its_layer_is_accepted(trace):
    view = AttentionView(trace, layer=2, head=3)
    view.set_state({"module": "vision_tower", "layer": 0, "head": 1, "aggregate": "head"})  # as a comm update
    assert (view.module, view.layer, view.head) == ("vision_tower", 0, 1)


def test_block_mean_matches_a_direct_computation():
    from mmviz.data.display import block_mean

    rng = np.random.default_rng(3)
    for shape, qs, ks in (((2, 10, 7), 3, 2), ((9, 9), 4, 4), ((1, 8, 8), 2, 4), ((5, 3), 1, 2)):
        v = rng.random(shape).astype(np.float32)
        out = block_mean(v, qs, ks)
        for i in range(out.shape[-2]):
            for j in range(out.shape[-1]):
                want = v[..., i * qs : (i + 1) * qs, j * ks : (j + 1) * ks].mean(axis=(-2, -1))
                np.testing.assert_allclose(out[..., i, j], want, rtol=1e-6)
