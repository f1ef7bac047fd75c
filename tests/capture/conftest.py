"""Tiny offline models, tokenizers and processors for the capture tests (no downloads, one CPU thread).

Every model is built from a config with hidden size 32 and 2 layers; tokenizers are built with the
``tokenizers`` library and image processors are the ``*ImageProcessorPil`` classes.
"""

from __future__ import annotations

import types
from typing import Any

import pytest

from tests.fixtures import tiny_configs
from tests.fixtures.tiny_configs import text_cfg, vision_cfg

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

WORDS = ["a", "red", "square", "left", "of", "blue", "circle", "the", "is", "what", "shape", "green", "triangle"]
SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>", "<image>"]


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    torch.set_num_threads(1)


def word_tokenizer(extra_specials: tuple[str, ...] = (), bos_eos: bool = True) -> Any:
    """A whitespace word-level tokenizer: ``<pad>`` 0, ``<unk>`` 1, ``<bos>`` 2, ``<eos>`` 3, ``<image>`` 4."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([*SPECIALS, *extra_specials, *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos_eos:
        tk.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 2)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        extra_special_tokens=["<image>", *extra_specials],
    )


def wordpiece_tokenizer() -> Any:
    """A BERT-style WordPiece tokenizer with ``[CLS] a [SEP] b [SEP]`` templates and ``##`` pieces."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "the",
        "cat",
        "sat",
        "on",
        "mat",
        "play",
        "##ing",
        "##ed",
        "un",
        "##believ",
        "##able",
        ".",
    ]
    vocab = {t: i for i, t in enumerate(pieces)}
    tk = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.decoder = decoders.WordPiece()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def random_image(size: int = 32, seed: int = 0) -> Any:
    """A random RGB PIL image (32 px unless told)."""
    return tiny_configs.random_image(size, seed)


# -- model factories ---------------------------------------------------------------------------------
def make_llama(kind: str = "llama") -> Any:
    import transformers

    torch.manual_seed(0)
    if kind == "llama":
        cfg = transformers.LlamaConfig(**text_cfg(num_key_value_heads=2, pad_token_id=0))
        return transformers.LlamaForCausalLM(cfg).eval()
    cfg = transformers.Qwen2Config(**text_cfg(num_key_value_heads=1, pad_token_id=0))
    return transformers.Qwen2ForCausalLM(cfg).eval()


def make_bert() -> Any:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(**text_cfg(vocab_size=32, max_position_embeddings=64, type_vocab_size=2))
    return transformers.BertModel(cfg, add_pooling_layer=False).eval()


def make_t5() -> Any:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.T5Config(
        vocab_size=64,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=3,
    )
    return transformers.T5ForConditionalGeneration(cfg).eval()


def make_vit() -> Any:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(**vision_cfg())
    return transformers.ViTModel(cfg, add_pooling_layer=False).eval()


def make_siglip() -> Any:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.SiglipConfig(text_config=text_cfg(max_position_embeddings=16), vision_config=vision_cfg())
    return transformers.SiglipModel(cfg).eval()


def make_clip() -> Any:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config=text_cfg(max_position_embeddings=16, eos_token_id=3, bos_token_id=2),
        vision_config=vision_cfg(),
        projection_dim=16,
    )
    return transformers.CLIPModel(cfg).eval()


def make_llava() -> tuple[Any, Any]:
    import transformers

    torch.manual_seed(0)
    tok = word_tokenizer()
    cfg = transformers.LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", **vision_cfg()),
        text_config=dict(model_type="llama", **text_cfg(num_key_value_heads=2, pad_token_id=0)),
        image_token_index=4,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
    )
    model = transformers.LlavaForConditionalGeneration(cfg).eval()
    image_processor = transformers.CLIPImageProcessorPil(
        size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}
    )
    processor = transformers.LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=4,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    return model, processor


def make_qwen2_vl() -> tuple[Any, Any]:
    tok = word_tokenizer(tiny_configs.QWEN2_VL_TOKENS)
    model, image_processor = tiny_configs.tiny_qwen2_vl(tok)
    # Qwen2VLProcessor needs a video processor (torchvision); tokenizer + image processor do the same here
    return model, types.SimpleNamespace(tokenizer=tok, image_processor=image_processor)


def qwen2_vl_inputs(processor: Any, texts: list[str], images: list[Any]) -> dict[str, Any]:
    """What Qwen2VLProcessor returns: each ``<|image_pad|>`` expanded to the image's merged-grid size."""
    pixels = processor.image_processor(images=images, return_tensors="pt")
    merge = processor.image_processor.merge_size
    counts = iter((pixels["image_grid_thw"].prod(-1) // merge**2).tolist())
    expanded = []
    for text in texts:
        parts = text.split("<|image_pad|>")
        expanded.append(parts[0] + "".join(" <|image_pad|>" * next(counts) + " " + p for p in parts[1:]))
    tok = processor.tokenizer
    batch = tok(expanded, return_tensors="pt", padding=True)
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    return {
        **batch,
        "mm_token_type_ids": (batch["input_ids"] == image_id).long(),
        "pixel_values": pixels["pixel_values"],
        "image_grid_thw": pixels["image_grid_thw"],
    }


def make_paligemma() -> tuple[Any, Any]:
    import transformers

    torch.manual_seed(0)
    tok = word_tokenizer(bos_eos=False)
    image_processor = transformers.SiglipImageProcessorPil(size={"height": 16, "width": 16})
    image_processor.image_seq_length = 16
    processor = transformers.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    cfg = transformers.PaliGemmaConfig(
        text_config=dict(
            model_type="gemma",
            **text_cfg(vocab_size=len(tok), num_attention_heads=2, num_key_value_heads=1, head_dim=16, pad_token_id=0),
        ),
        vision_config=dict(model_type="siglip_vision_model", **vision_cfg()),
        image_token_index=processor.image_token_id,
        projection_dim=32,
    )
    model = transformers.PaliGemmaForConditionalGeneration(cfg).eval()
    return model, processor


def make_blip2() -> tuple[Any, Any]:
    import transformers

    torch.manual_seed(0)
    tok = word_tokenizer()
    cfg = transformers.Blip2Config(
        vision_config=vision_cfg(),
        qformer_config=dict(**text_cfg(num_attention_heads=2), encoder_hidden_size=32, cross_attention_frequency=1),
        text_config={
            "model_type": "opt",
            "vocab_size": 64,
            "hidden_size": 32,
            "ffn_dim": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "word_embed_proj_dim": 32,
            "pad_token_id": 0,
        },
        num_query_tokens=4,
        image_token_index=4,
    )
    model = transformers.Blip2ForConditionalGeneration(cfg).eval()
    image_processor = transformers.BlipImageProcessorPil(size={"height": 16, "width": 16})
    processor = transformers.Blip2Processor(image_processor=image_processor, tokenizer=tok, num_query_tokens=4)
    return model, processor
