"""The offline word-level tokenizer."""

from __future__ import annotations

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from mmviz.teaching import WEIGHTS_DIR
from mmviz.teaching._tokenizer import build_tokenizer, load_tokenizer, save_tokenizer, vocab
from mmviz.teaching.shapes import make_scenes, vocabulary


def test_eos_is_last_and_not_two() -> None:
    ids = vocab()
    assert ids["<eos>"] == len(ids) - 1 != 2
    assert ids["<pad>"] == 0 and ids["<bos>"] == 1
    assert set(vocabulary()) <= set(ids)


@pytest.mark.parametrize("flavour", ["clip", "vlm"])
def test_round_trip(flavour: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    tok = build_tokenizer(flavour)  # type: ignore[arg-type]
    save_tokenizer(tok, tmp_path)
    loaded = load_tokenizer(tmp_path, flavour)  # type: ignore[arg-type]
    for scene in make_scenes(20, seed=3):
        for text in [scene.caption, *(q for q, _, _ in scene.qa)]:
            ids = tok(text)["input_ids"]
            assert loaded(text)["input_ids"] == ids
            assert tok.unk_token_id not in ids
            assert tok.decode(ids, skip_special_tokens=True) == text
            assert ids[0] == tok.bos_token_id
            assert (ids[-1] == tok.eos_token_id) == (flavour == "clip")


@pytest.mark.parametrize("flavour", ["clip", "vlm"])
def test_shipped_tokenizers_match_the_vocabulary(flavour: str) -> None:
    folder = WEIGHTS_DIR / flavour
    if not (folder / "tokenizer.json").exists():
        pytest.skip(f"{folder} not built yet")
    shipped = load_tokenizer(folder, flavour)  # type: ignore[arg-type]
    assert shipped.get_vocab() == build_tokenizer(flavour).get_vocab()  # type: ignore[arg-type]
    assert shipped("<image> what colour is the star ?")["input_ids"][1] == vocab()["<image>"]
