"""Offline word-level tokenizer for the shapes world.

One vocabulary serves every teaching model::

    0 <pad>   1 <bos>   2 <unk>   3 <image>   4.. the world's words (sorted)   last <eos>

EOS is deliberately the *last* id, never 2: a `CLIPTextModel` whose
``eos_token_id == 2`` pools at ``input_ids.argmax(-1)`` (legacy behaviour) instead
of at the EOS position, which silently breaks a small custom vocabulary.

Two flavours share the vocabulary and differ only in the template:

- ``"clip"``: ``<bos> $A <eos>`` (CLIP text towers pool at EOS), length 16;
- ``"vlm"``: ``<bos> $A`` (the LLaVA prompt continues with the answer), length 128.

The tokenizers are saved as ``tokenizer.json`` next to the weights (package data)
and loaded from there without any network access.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from mmviz.teaching.shapes import vocabulary

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

Flavour = Literal["clip", "vlm"]

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<unk>", "<image>")
EOS_TOKEN = "<eos>"
MAX_LENGTH: dict[str, int] = {"clip": 16, "vlm": 128}


def vocab() -> dict[str, int]:
    """The token-to-id mapping.

    Returns:
        ``{token: id}`` with the special tokens first and ``<eos>`` last.
    """
    tokens = [*SPECIAL_TOKENS, *vocabulary(), EOS_TOKEN]
    return {token: i for i, token in enumerate(tokens)}


def build_tokenizer(flavour: Flavour = "clip") -> PreTrainedTokenizerFast:
    """Build the tokenizer from the world's vocabulary (no files needed).

    Args:
        flavour: ``"clip"`` appends ``<eos>``; ``"vlm"`` does not.

    Returns:
        A `PreTrainedTokenizerFast` with padding on the right.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    ids = vocab()
    tk = Tokenizer(WordLevel(vocab=ids, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    # Whitespace splits "square?" into "square", "?" but keeps "<image>" whole only
    # because added special tokens are matched before pre-tokenization.
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    if flavour == "clip":
        tk.post_processor = processors.TemplateProcessing(
            single="<bos> $A <eos>",
            special_tokens=[("<bos>", ids["<bos>"]), ("<eos>", ids[EOS_TOKEN])],
        )
    elif flavour == "vlm":
        tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", ids["<bos>"])])
    else:
        raise ValueError(f"flavour must be 'clip' or 'vlm', got {flavour!r}")
    return _wrap(tk, flavour)


def _wrap(tk: object, flavour: str) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token=EOS_TOKEN,
        unk_token="<unk>",
        model_max_length=MAX_LENGTH[flavour],
        padding_side="right",
        extra_special_tokens={"image_token": "<image>"},
    )
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tok


def save_tokenizer(tok: PreTrainedTokenizerFast, directory: str | Path) -> Path:
    """Write ``tokenizer.json`` into ``directory``.

    Args:
        tok: a tokenizer from `build_tokenizer`.
        directory: target folder (created if missing).

    Returns:
        Path of the written file.
    """
    path = Path(directory) / "tokenizer.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.backend_tokenizer.save(str(path))
    return path


def load_tokenizer(directory: str | Path, flavour: Flavour = "clip") -> PreTrainedTokenizerFast:
    """Load a tokenizer saved by `save_tokenizer`, offline.

    Args:
        directory: folder holding ``tokenizer.json``.
        flavour: ``"clip"`` or ``"vlm"`` (sets the maximum length).

    Returns:
        The tokenizer.
    """
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(Path(directory) / "tokenizer.json"))
    return _wrap(tk, flavour)
