"""Diffusion cross-attention capture on tiny random pipelines of every family, built from configs.

SD 1.x (UNet + CLIP), SDXL (two CLIP towers, text-time embedding), PixArt-α (T5), SD3 (joint attention,
CLIP ×2 + T5) and Flux (double- and single-stream blocks, CLIP + T5). Each runs 3 steps at 32×32 in
well under a second on one CPU thread.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import mmviz  # noqa: E402
from mmviz.data.cross_attention import CrossAttentionTrace  # noqa: E402
from mmviz.errors import BudgetError, CaptureError  # noqa: E402

PROMPT = "a red circle left of a zebra"
CORPUS = [
    "a red circle left of a blue square",
    "a green triangle above a yellow circle",
    "the zebra rides a bike",
    "an astronaut on a horse",
] * 20
FAMILIES = ["sd", "sdxl", "pixart", "sd3", "flux"]


@pytest.fixture(autouse=True, scope="module")
def _quiet() -> Any:
    torch.set_num_threads(1)
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# -- tiny components -----------------------------------------------------------------------------------
def clip_tokenizer(max_length: int = 16) -> Any:
    """A BPE tokenizer with CLIP's conventions: ``</w>`` ends words, padding with EOS."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(BPE(unk_token="<unk>", end_of_word_suffix="</w>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = BpeTrainer(
        vocab_size=60,
        special_tokens=["<pad>", "<unk>", "<bos>", "<eos>"],
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tk.train_from_iterator(CORPUS, trainer)
    tk.decoder = decoders.BPEDecoder(suffix="</w>")
    bos, eos = tk.token_to_id("<bos>"), tk.token_to_id("<eos>")
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", bos), ("<eos>", eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<eos>",
        unk_token="<unk>",
        model_max_length=max_length,
    )


def t5_tokenizer(max_length: int = 12) -> Any:
    """A word-level tokenizer with T5's conventions: ``</s>`` at the end, ``<pad>`` 0."""
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for s in CORPUS for w in s.split()})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tk = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", model_max_length=max_length
    )


def clip_text(tok: Any, proj: bool = False, seed: int = 0) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=tok.model_max_length,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
        pad_token_id=tok.pad_token_id,
        projection_dim=32,
    )
    return (CLIPTextModelWithProjection if proj else CLIPTextModel)(cfg).eval()


def t5_text(tok: Any) -> Any:
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, pad_token_id=0, eos_token_id=1
    )
    return T5EncoderModel(cfg).eval()


def vae(shift: float | None = None) -> Any:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        shift_factor=shift,
    ).eval()


def build(family: str) -> Any:
    """A tiny random pipeline of the family (vae_scale_factor 2: 32×32 images, 16×16 latents)."""
    import diffusers as d

    if family == "sd":
        tok = clip_tokenizer()
        torch.manual_seed(0)
        unet = d.UNet2DConditionModel(
            sample_size=16,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=4,
            norm_num_groups=8,
        ).eval()
        pipe = d.StableDiffusionPipeline(
            vae=vae(),
            text_encoder=clip_text(tok),
            tokenizer=tok,
            unet=unet,
            scheduler=d.DDIMScheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    elif family == "sdxl":
        tok, tok2 = clip_tokenizer(), clip_tokenizer()
        torch.manual_seed(0)
        unet = d.UNet2DConditionModel(
            sample_size=16,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=64,
            attention_head_dim=(2, 4),
            norm_num_groups=8,
            transformer_layers_per_block=(1, 2),
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=32 + 6 * 8,
            use_linear_projection=True,
        ).eval()
        pipe = d.StableDiffusionXLPipeline(
            vae=vae(),
            text_encoder=clip_text(tok),
            text_encoder_2=clip_text(tok2, proj=True, seed=1),
            tokenizer=tok,
            tokenizer_2=tok2,
            unet=unet,
            scheduler=d.EulerDiscreteScheduler(),
        )
    elif family == "pixart":
        tok = t5_tokenizer()
        torch.manual_seed(0)
        transformer = d.PixArtTransformer2DModel(
            sample_size=16,
            num_layers=2,
            patch_size=2,
            attention_head_dim=8,
            num_attention_heads=2,
            caption_channels=32,
            in_channels=4,
            cross_attention_dim=16,
            out_channels=8,
            attention_bias=True,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
        ).eval()
        pipe = d.PixArtAlphaPipeline(
            tokenizer=tok, text_encoder=t5_text(tok), vae=vae(), transformer=transformer, scheduler=d.DDIMScheduler()
        )
    elif family == "sd3":
        tok, tok2, tok3 = clip_tokenizer(), clip_tokenizer(), t5_tokenizer()
        torch.manual_seed(0)
        transformer = d.SD3Transformer2DModel(
            sample_size=16,
            patch_size=2,
            in_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=32,
            caption_projection_dim=16,
            pooled_projection_dim=64,
            out_channels=4,
            pos_embed_max_size=16,
        ).eval()
        pipe = d.StableDiffusion3Pipeline(
            transformer=transformer,
            scheduler=d.FlowMatchEulerDiscreteScheduler(),
            vae=vae(shift=0.0),
            text_encoder=clip_text(tok, proj=True),
            tokenizer=tok,
            text_encoder_2=clip_text(tok2, proj=True, seed=1),
            tokenizer_2=tok2,
            text_encoder_3=t5_text(tok3),
            tokenizer_3=tok3,
        )
    else:
        tok, tok2 = clip_tokenizer(), t5_tokenizer()
        torch.manual_seed(0)
        transformer = d.FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            axes_dims_rope=(2, 2, 4),
        ).eval()
        pipe = d.FluxPipeline(
            transformer=transformer,
            scheduler=d.FlowMatchEulerDiscreteScheduler(),
            vae=vae(shift=0.0),
            text_encoder=clip_text(tok),
            tokenizer=tok,
            text_encoder_2=t5_text(tok2),
            tokenizer_2=tok2,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_args(family: str, seed: int = 0, steps: int = 3) -> dict[str, Any]:
    args: dict[str, Any] = {
        "num_inference_steps": steps,
        "height": 32,
        "width": 32,
        "output_type": "np",
        "generator": torch.Generator().manual_seed(seed),
    }
    if family in ("pixart", "sd3", "flux"):
        args["max_sequence_length"] = 12
    if family == "pixart":
        args["use_resolution_binning"] = False
    return args


def denoiser(pipe: Any) -> Any:
    return pipe.unet if hasattr(pipe, "unet") else pipe.transformer


def processor_state(pipe: Any) -> dict[str, int]:
    return {name: id(m.processor) for name, m in denoiser(pipe).named_modules() if hasattr(m, "set_processor")}


@pytest.fixture(scope="module", params=FAMILIES)
def family_pipe(request: pytest.FixtureRequest) -> tuple[str, Any]:
    return request.param, build(request.param)


# -- tests -----------------------------------------------------------------------------------------------
def test_image_unchanged_and_trace(family_pipe: tuple[str, Any]) -> None:
    family, pipe = family_pipe
    reference = pipe(PROMPT, **call_args(family)).images
    before = processor_state(pipe)
    with mmviz.capture(pipe) as cap:
        images = pipe(PROMPT, **call_args(family)).images
    assert np.abs(images - reference).max() <= 1e-5
    assert processor_state(pipe) == before
    trace = cap.cross_attention
    assert isinstance(trace, CrossAttentionTrace)
    assert trace.num_steps == 3 and trace.batch_size == 1
    assert trace.info["estimated_bytes"] == 2 * trace.nbytes  # the budget check's estimate (float32) is exact
    assert trace.images is not None and trace.images.shape == (1, 32, 32, 3)
    words = [w for w, _ in trace.words()]
    assert words[:7] == ["a", "red", "circle", "left", "of", "a", "zebra"]
    # BOS/EOS and padding are out of words() by default, available on request; padding is not stored.
    table = trace.tokens()
    assert "pad" not in set(table.kind.tolist())
    assert len(trace.words(special=True)) > len(trace.words()) or family in ("pixart", "flux")
    assert trace.heatmap("zebra").shape == (32, 32)
    assert trace.heatmap(2, timesteps=[0, -1], layers=[0], size=(20, 24)).shape == (20, 24)
    for layer in trace.layers:
        m = trace.maps(layer.name)
        assert m.shape == (3, trace.num_tokens, *layer.resolution)
        assert float(m.min()) >= 0 and float(m.sum(axis=1).max()) <= 1.0 + 1e-2


def test_previews(family_pipe: tuple[str, Any]) -> None:
    family, pipe = family_pipe
    with mmviz.capture(pipe, previews=True) as cap:
        images = pipe(PROMPT, **call_args(family)).images
    previews = cap.cross_attention.previews
    assert previews is not None and previews.shape == (1, 3, 32, 32, 3)
    # the last step's prediction of x0 is the final image
    assert np.abs(previews[0, -1].astype(float) - np.round(images[0] * 255)).max() <= 1
    assert "step" not in vars(pipe.scheduler)


def test_layers_per_family(family_pipe: tuple[str, Any]) -> None:
    family, pipe = family_pipe
    with mmviz.capture(pipe) as cap:
        pipe(PROMPT, **call_args(family, steps=2))
    names = cap.cross_attention.layer_names
    expected = {
        "sd": (7, "attn2", {(16, 16), (8, 8)}),
        "sdxl": (8, "attn2", {(8, 8)}),
        "pixart": (2, "attn2", {(8, 8)}),
        "sd3": (2, "attn", {(8, 8)}),
        "flux": (2, "attn", {(8, 8)}),
    }[family]
    assert len(names) == expected[0] and all(n.endswith(expected[1]) for n in names)
    assert set(cap.cross_attention.resolutions) == expected[2]
    if family == "flux":
        assert any(n.startswith("single_transformer_blocks") for n in names)


def test_processors_restored_after_exception(family_pipe: tuple[str, Any]) -> None:
    family, pipe = family_pipe
    before = processor_state(pipe)
    den = denoiser(pipe)
    hooks_before = (len(den._forward_pre_hooks), len(den._forward_hooks))

    calls = []

    def fail(*args: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), mmviz.capture(pipe):
        handle = den.register_forward_hook(fail)
        try:
            pipe(PROMPT, **call_args(family))
        finally:
            handle.remove()
    assert processor_state(pipe) == before
    assert (len(den._forward_pre_hooks), len(den._forward_hooks)) == hooks_before
    assert "postprocess" not in vars(pipe.image_processor)
    assert len(pipe.text_encoder._forward_pre_hooks) == 0


def _plant(pipe: Any, family: str, token: int, big: float = 10.0) -> list[Any]:
    """Makes image positions in the left half attend to context position ``token`` and nothing else.

    For every recorded attention module, a pre-hook writes ``big`` into channel 0 of the image hidden states
    in the left half (0 elsewhere) and into channel 1 of the text states at ``token`` (0 elsewhere); the
    weights make queries read channel 0 and text keys read channel 1 along the first dimension of every
    head; image keys (joint attention) are zero. So left-half queries put ~all their mass on ``token``;
    other queries are zero and spread evenly.
    """
    handles = []
    n_text = 12 if family == "flux" else None
    for name, attn in denoiser(pipe).named_modules():
        if not hasattr(attn, "set_processor"):
            continue
        joint = family in ("sd3", "flux")
        if not (name.endswith("attn2") if not joint else name.endswith(".attn")):
            continue
        single = name.startswith("single_transformer_blocks")
        head_dim = attn.to_q.weight.shape[0] // attn.heads
        rows = torch.arange(attn.heads) * head_dim
        with torch.no_grad():
            for lin, channel in (
                (attn.to_q, 0),
                (attn.to_k, 1 if single else None),
                (getattr(attn, "add_k_proj", None) if joint and not single else attn.to_k, 1),
            ):
                if lin is None:
                    continue
                lin.weight.zero_()
                if lin.bias is not None:
                    lin.bias.zero_()
                if channel is not None:
                    lin.weight[rows, channel] = 1.0
            for norm in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
                module = getattr(attn, norm, None)
                if module is not None and getattr(module, "weight", None) is not None:
                    module.weight.fill_(6.0)

        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], single: bool = single) -> Any:
            hidden = (args[0] if args else kwargs["hidden_states"]).clone()
            start = n_text if single else 0
            n_image = hidden.shape[1] - start
            side = round(n_image**0.5)
            left = (torch.arange(n_image) % side) < side // 2
            hidden[..., start:, 0] = 0
            hidden[:, start:][:, left, 0] = big
            if single:
                hidden[..., 1] = 0
                hidden[:, token, 1] = big
            else:
                context = kwargs["encoder_hidden_states"].clone()
                context[..., 1] = 0
                context[:, token, 1] = big
                kwargs["encoder_hidden_states"] = context
            if args:
                return (hidden, *args[1:]), kwargs
            kwargs["hidden_states"] = hidden
            return args, kwargs

        handles.append(attn.register_forward_pre_hook(hook, with_kwargs=True))
    return handles


def test_planted_attention_is_found(family_pipe: tuple[str, Any]) -> None:
    family, _ = family_pipe
    pipe = build(family)  # weights are changed: a fresh pipeline
    if family in ("sd", "sdxl"):
        target = 12  # <bos> a re d circle l ef t o f a z [ebr] a: the middle subword of "zebra"
    elif family == "sd3":
        target = 16 + 6  # after the 16 CLIP positions, T5's "zebra"
    else:
        target = 6  # T5: a red circle left of a [zebra]
    handles = _plant(pipe, family, target)
    try:
        with mmviz.capture(pipe) as cap:
            pipe(PROMPT, **call_args(family))
    finally:
        for h in handles:
            h.remove()
    trace = cap.cross_attention
    stored = trace.info["positions"].index(target)
    word = next(w for w, p in trace.words() if stored in p.tolist())
    assert word == "zebra"
    for layer in trace.layers:
        maps = trace.maps(layer.name)[:, stored]  # [steps, h, w]
        w = layer.resolution[1]
        assert maps[:, :, : w // 2].min() > 0.9, layer.name
        assert maps[:, :, w // 2 :].max() < 0.2, layer.name
    index = next(i for i, (_, p) in enumerate(trace.words()) if stored in p.tolist())
    heat = trace.heatmap(index)
    assert heat[:, :12].mean() > 3 * heat[:, 20:].mean()


def test_options_heads_tokens_budget() -> None:
    pipe = build("sd")
    with mmviz.capture(pipe, heads=True, tokens="all", layers=["up_blocks"]) as cap:
        pipe(PROMPT, **call_args("sd", steps=2))
    trace = cap.cross_attention
    assert trace.has_heads and trace.num_tokens == 16
    assert all(n.startswith("up_blocks") for n in trace.layer_names)
    assert "pad" in set(trace.tokens().kind.tolist())
    assert trace.maps(0, head=1).shape == (2, 16, 8, 8)
    with mmviz.capture(pipe, layers=["up_blocks"]) as cap2:
        pipe(PROMPT, **call_args("sd", steps=2))
    mean = cap2.cross_attention
    # heads=False stores heads × fewer bytes (head mean), and the same maps as the mean of the kept heads.
    assert trace.nbytes == mean.nbytes * 4 * 16 // mean.num_tokens
    np.testing.assert_allclose(trace.maps(0)[:, : mean.num_tokens], mean.maps(0), atol=2e-3)
    with pytest.raises(BudgetError, match="max_bytes"), mmviz.capture(pipe, max_bytes=1000):
        pipe(PROMPT, **call_args("sd", steps=2))
    with pytest.raises(CaptureError, match="no cross-attention layer"):
        mmviz.capture(pipe, layers=["nope"]).__enter__()


def test_batch_cfg_uncond_and_save(tmp_path: Any) -> None:
    pipe = build("sd")
    prompts = ["a red circle", "the zebra rides a bike"]
    with mmviz.capture(pipe) as cap:
        pipe(prompts, num_images_per_prompt=2, **call_args("sd", steps=2))
        pipe(PROMPT, **call_args("sd", steps=2))
    assert len(cap.traces) == 2
    trace = cap.traces[0]
    assert trace.batch_size == 4 and trace.images is not None and trace.images.shape[0] == 4
    assert [w for w, _ in trace.words(batch_index=1)] == ["a", "red", "circle"]
    assert [w for w, _ in trace.words(batch_index=2)] == ["the", "zebra", "rides", "a", "bike"]
    assert "pad" in set(trace.tokens(0).kind.tolist())  # shorter prompt, padded to the longer one
    assert trace.heatmap("zebra", batch_index=3).shape == (32, 32)
    with mmviz.capture(pipe, branch="uncond") as cap_u:
        pipe(PROMPT, **call_args("sd", steps=2))
    assert [w for w, _ in cap_u.cross_attention.words(special=True)] == ["<bos>", "<eos>"]

    path = tmp_path / "run.mmviz"
    trace.save(path)
    loaded = mmviz.load(path)
    assert isinstance(loaded, CrossAttentionTrace)
    np.testing.assert_array_equal(loaded.heatmap("zebra", batch_index=3), trace.heatmap("zebra", batch_index=3))
    assert loaded.layer_names == trace.layer_names and loaded.info == trace.info


def test_bare_unet_without_pipeline() -> None:
    pipe = build("sd")
    unet = pipe.unet
    sample = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    sample[1] = sample[0]
    context = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = unet(sample, 10, encoder_hidden_states=context).sample
        with mmviz.capture(unet) as cap:
            out = unet(sample, 10, encoder_hidden_states=context).sample
            unet(sample, 5, encoder_hidden_states=context)
    assert torch.equal(out, reference)
    trace = cap.cross_attention
    assert trace.batch_size == 1 and trace.info["cfg"] is True  # [uncond; cond] recognised: equal latents
    assert trace.num_steps == 2 and list(trace.timesteps) == [10.0, 5.0]
    assert trace.tokens().tokens == ["#0", "#1", "#2", "#3", "#4"]
    assert trace.heatmap(0).shape == (16, 16)


def test_not_a_denoiser() -> None:
    from diffusers import DDIMScheduler

    with pytest.raises(CaptureError):
        mmviz.capture(DDIMScheduler())


def test_show_and_export_from_a_capture(tmp_path: Any) -> None:
    pytest.importorskip("anywidget")
    from mmviz._static import STATIC_DIR

    if not (STATIC_DIR / "standalone.js").is_file():
        pytest.skip("front-end bundle not built")
    pipe = build("pixart")
    with mmviz.capture(pipe) as cap:
        pipe(PROMPT, **call_args("pixart", steps=2))
    view = cap.cross_attention.show(word="zebra")
    assert view._words[:3] == ["a", "red", "circle"] and view.word == 6
    assert view.save(tmp_path / "x.html").stat().st_size > 10_000


def test_other_processors_are_wrapped() -> None:
    from diffusers.models.attention_processor import AttnProcessor

    pipe = build("sd")
    with mmviz.capture(pipe) as cap:
        pipe(PROMPT, **call_args("sd", steps=2))
    exact = cap.cross_attention
    pipe.unet.set_attn_processor(AttnProcessor())  # the classic (non-SDPA) processor
    reference = pipe(PROMPT, **call_args("sd", steps=2)).images
    before = processor_state(pipe)
    with mmviz.capture(pipe) as cap2:
        images = pipe(PROMPT, **call_args("sd", steps=2)).images
    assert np.abs(images - reference).max() == 0
    assert processor_state(pipe) == before
    wrapped = cap2.cross_attention
    assert wrapped.layer_names == exact.layer_names
    for name in exact.layer_names:
        np.testing.assert_allclose(wrapped.maps(name), exact.maps(name), atol=2e-3)
