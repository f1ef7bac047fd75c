"""mmviz.capture.token_tables: the token tables of a run, for methods that run the model themselves."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from mmviz.capture import has_images, token_tables  # noqa: E402
from tests.capture import conftest as tiny  # noqa: E402


@pytest.fixture(scope="module")
def llava():
    model, processor = tiny.make_llava()
    inputs = dict(processor(text=["<image> what shape is the red"], images=[tiny.random_image()], return_tensors="pt"))
    return model, processor, inputs


def test_image_tokens_carry_their_patches(llava):
    model, processor, inputs = llava
    with torch.no_grad(), token_tables(model, processor) as run:
        out = model(**inputs)
    with torch.no_grad():
        plain = model(**inputs)
    assert (out.logits - plain.logits).abs().max() <= 1e-5  # the run itself is not changed
    text = run.tables["text"][0]
    image = np.flatnonzero(inputs["input_ids"][0].numpy() == model.config.image_token_id)
    assert list(text.kind[image]) == ["image"] * 16
    assert [(int(text.patch_row[p]), int(text.patch_col[p])) for p in image] == [(k // 4, k % 4) for k in range(16)]
    assert run.of_site("model.language_model.layers.1") == run.tables[run.key_tables["language_model"]]
    tower = run.of_site("model.vision_tower.vision_model.encoder.layers.0")
    assert len(tower) == 1 and len(tower[0]) == 17
    assert run.of_site("lm_head") == []


def test_disabled_records_nothing(llava):
    model, processor, inputs = llava
    before = model.config._attn_implementation
    with torch.no_grad(), token_tables(model, processor, enabled=False) as run:
        assert model.config._attn_implementation == before
        model(**inputs)
    assert run.tables == {} and run.key_tables == {}


def test_a_model_capture_cannot_follow_gives_empty_tables():
    net = torch.nn.Linear(3, 2)
    with token_tables(net) as run:
        net(torch.zeros(1, 3))
    assert run.tables == {}


def test_a_model_that_records_nothing_gives_empty_tables():
    """State-space blocks: capture enters, the model runs, nothing is recorded; the run itself still succeeds."""
    import transformers

    cfg = transformers.MambaConfig(hidden_size=16, num_hidden_layers=1, vocab_size=32, state_size=4, expand=2)
    mamba = transformers.MambaForCausalLM(cfg).eval()
    with torch.no_grad(), token_tables(mamba) as run:
        out = mamba(torch.tensor([[1, 2, 3]]))
    assert out.logits.shape == (1, 3, 32) and run.tables == {}


def test_errors_propagate_and_the_model_is_restored(llava):
    model, processor, inputs = llava
    before = model.config._attn_implementation
    with pytest.raises(RuntimeError, match="boom"), token_tables(model, processor) as run:
        model(**inputs)
        raise RuntimeError("boom")
    assert model.config._attn_implementation == before
    assert run.tables == {}


def test_has_images():
    assert has_images({"input_ids": 1, "pixel_values": 2})
    assert has_images({"input_ids": 1, "pixel_values_images": 2}) and has_images({"image_grid_thw": 1})
    assert not has_images({"input_ids": 1, "attention_mask": 2})


def test_a_sub_model_called_directly_gets_its_layout():
    """get_image_features / get_text_features never call the model's forward: their tables still name the patches."""
    model = tiny.make_clip()
    pixels = torch.rand(2, 3, 16, 16)
    ids = torch.tensor([[1, 5, 6, 2]])
    with torch.no_grad(), token_tables(model) as run:
        model.get_image_features(pixel_values=pixels)
    tower = run.of_site("vision_model.encoder.layers.0")
    assert len(tower) == 2 and tower[0].text[0] == "[CLS]"
    assert list(tower[1].patch_row[1:]) == [k // 4 for k in range(16)]  # 16 px, patch 4: a 4 × 4 grid
    with torch.no_grad(), token_tables(model) as run:
        model.get_text_features(input_ids=ids)
    assert [len(t) for t in run.of_site("text_model.encoder.layers.0")] == [4]
