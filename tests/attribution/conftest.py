"""Tiny offline models for the attribution tests (hidden size 32, 2 layers, one CPU thread, seeded)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures import tiny_configs
from tests.fixtures.tiny_configs import text_cfg, vision_cfg

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

WORDS = ["a", "red", "square", "left", "of", "blue", "circle", "the", "is", "what", "shape", "green", "triangle"]
SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>", "<image>"]


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def word_tokenizer(extra: tuple[str, ...] = (), bos: bool = True, eos: bool = False) -> Any:
    """Whitespace word tokenizer: ``<pad>`` 0, ``<unk>`` 1, ``<bos>`` 2, ``<eos>`` 3, ``<image>`` 4."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([*SPECIALS, *extra, *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    single = ("<bos> " if bos else "") + "$A" + (" <eos>" if eos else "")
    if bos or eos:
        tk.post_processor = processors.TemplateProcessing(single=single, special_tokens=[("<bos>", 2), ("<eos>", 3)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        extra_special_tokens=["<image>", *extra],
    )


def random_image(size: int = 16, seed: int = 0) -> Any:
    """A random RGB PIL image (16 px unless told)."""
    return tiny_configs.random_image(size, seed)


@pytest.fixture(scope="session")
def tok() -> Any:
    return word_tokenizer()


@pytest.fixture(scope="session")
def gpt2() -> Any:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64, pad_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="session")
def llama() -> Any:
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(
        transformers.LlamaConfig(**text_cfg(num_key_value_heads=2, pad_token_id=0))
    ).eval()


@pytest.fixture(scope="session")
def bert_classifier() -> tuple[Any, Any]:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        **text_cfg(max_position_embeddings=64), num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"}
    )
    return transformers.BertForSequenceClassification(cfg).eval(), word_tokenizer()


@pytest.fixture(scope="session")
def vit() -> Any:
    torch.manual_seed(0)
    return transformers.ViTForImageClassification(transformers.ViTConfig(**vision_cfg(), num_labels=3)).eval()


@pytest.fixture(scope="session")
def image_processor() -> Any:
    return transformers.CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})


@pytest.fixture(scope="session")
def clip(image_processor: Any) -> tuple[Any, Any]:
    torch.manual_seed(0)
    tok = word_tokenizer(eos=True)
    cfg = transformers.CLIPConfig(
        text_config=text_cfg(max_position_embeddings=16, eos_token_id=3, bos_token_id=2),
        vision_config=vision_cfg(),
        projection_dim=16,
    )
    return transformers.CLIPModel(cfg).eval(), transformers.CLIPProcessor(
        image_processor=image_processor, tokenizer=tok
    )


@pytest.fixture(scope="session")
def siglip() -> tuple[Any, Any]:
    torch.manual_seed(0)
    tok = word_tokenizer(bos=False)
    cfg = transformers.SiglipConfig(text_config=text_cfg(max_position_embeddings=16), vision_config=vision_cfg())
    ip = transformers.SiglipImageProcessorPil(size={"height": 16, "width": 16})
    return transformers.SiglipModel(cfg).eval(), transformers.SiglipProcessor(image_processor=ip, tokenizer=tok)


@pytest.fixture(scope="session")
def llava(image_processor: Any) -> tuple[Any, Any]:
    torch.manual_seed(0)
    cfg = transformers.LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", **vision_cfg()),
        text_config=dict(model_type="llama", **text_cfg(num_key_value_heads=2, pad_token_id=0)),
        image_token_index=4,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
    )
    processor = transformers.LlavaProcessor(
        image_processor=image_processor,
        tokenizer=word_tokenizer(),
        patch_size=4,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    return transformers.LlavaForConditionalGeneration(cfg).eval(), processor


@pytest.fixture(scope="session")
def paligemma() -> tuple[Any, Any]:
    torch.manual_seed(0)
    tok = word_tokenizer(bos=False)
    ip = transformers.SiglipImageProcessorPil(size={"height": 16, "width": 16})
    ip.image_seq_length = 16
    processor = transformers.PaliGemmaProcessor(image_processor=ip, tokenizer=tok)
    cfg = transformers.PaliGemmaConfig(
        text_config=dict(
            model_type="gemma",
            **text_cfg(vocab_size=len(tok), num_attention_heads=2, num_key_value_heads=1, head_dim=16, pad_token_id=0),
        ),
        vision_config=dict(model_type="siglip_vision_model", **vision_cfg()),
        image_token_index=processor.image_token_id,
        projection_dim=32,
    )
    return transformers.PaliGemmaForConditionalGeneration(cfg).eval(), processor


@pytest.fixture(scope="session")
def qwen2_vl() -> tuple[Any, Any, dict[str, Any]]:
    """Model, tokenizer and the inputs Qwen2VLProcessor would give (its video processor needs torchvision)."""
    tok = word_tokenizer(tiny_configs.QWEN2_VL_TOKENS)
    ids = {t: tok.convert_tokens_to_ids(t) for t in tiny_configs.QWEN2_VL_TOKENS}
    model, ip = tiny_configs.tiny_qwen2_vl(tok)
    pixels = ip(images=[random_image(16)], return_tensors="pt")
    n_tokens = int(pixels["image_grid_thw"].prod(-1)[0]) // 4
    text = "<|vision_start|>" + " <|image_pad|>" * n_tokens + " <|vision_end|> what shape"
    batch = tok(text, return_tensors="pt")
    inputs = {
        **batch,
        "mm_token_type_ids": (batch["input_ids"] == ids["<|image_pad|>"]).long(),
        "pixel_values": pixels["pixel_values"],
        "image_grid_thw": pixels["image_grid_thw"],
    }

    class Proc:
        tokenizer = tok
        image_processor = ip

    return model, Proc(), inputs


def model_state(model: Any) -> dict[str, Any]:
    """Everything attribution must leave as it found it."""
    hooks = 0
    for m in model.modules():
        hooks += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
    configs = [c for c in (getattr(m, "config", None) for m in model.modules()) if c is not None]
    impls = sorted({(id(c), str(c._attn_implementation_internal)) for c in configs})
    return {
        "hooks": hooks,
        "grad": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "impl": impls,
        "param_grads": [p.grad is None for p in model.parameters()],
    }
