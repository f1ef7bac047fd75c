"""Concept maps (ConceptAttention) on tiny random SD3, Flux and PixArt pipelines.

The image is the uncaptured one to the bit; the recorded maps equal a hand-written reference computed from
the blocks' own weights (SD3: two joint blocks, so the reference also carries the concept stream from the
first block to the second; PixArt: the cross-attention analogue); the errors say what to do.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import mmviz  # noqa: E402
from mmviz.capture._concepts import MAX_CONCEPTS  # noqa: E402
from mmviz.errors import CaptureError  # noqa: E402
from tests.capture.test_diffusion import PROMPT, _quiet, build, call_args, processor_state  # noqa: E402, F401

CONCEPTS = ["horse", "square", "bike"]


@pytest.fixture(scope="module")
def pipes() -> dict[str, Any]:
    return {family: build(family) for family in ("sd3", "flux", "pixart")}


def _block_inputs(module: Any, store: list[dict[str, Any]]) -> Any:
    """Records the inputs of every call of ``module`` (a positional first one as ``hidden_states``)."""

    def hook(mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        named = {**({"hidden_states": args[0]} if args else {}), **kwargs}
        store.append({k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in named.items()})

    return module.register_forward_pre_hook(hook, with_kwargs=True)


def _captured_with_inputs(pipe: Any, family: str, modules: list[Any]) -> tuple[Any, list[list[dict[str, Any]]]]:
    """The trace of a capture with ``CONCEPTS`` and, per module, the tensor inputs of each of its calls."""
    inputs: list[list[dict[str, Any]]] = [[] for _ in modules]
    handles = [_block_inputs(module, store) for module, store in zip(modules, inputs)]
    try:
        with mmviz.capture(pipe, concepts=CONCEPTS) as cap:
            pipe(PROMPT, **call_args(family))
    finally:
        for h in handles:
            h.remove()
    return cap.cross_attention, inputs


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q kᵀ / √d) v`` written out: ``[b, heads, n, d]`` each; returns ``[b, n, heads * d]``."""
    probs = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(dim=-1)
    return (probs @ v).transpose(1, 2).flatten(2)


def _split(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _norm(module: Any, x: torch.Tensor) -> torch.Tensor:
    return x if module is None else module(x)


@pytest.mark.parametrize("family", ["sd3", "flux", "pixart"])
def test_image_unchanged_with_concepts(pipes: dict[str, Any], family: str) -> None:
    pipe = pipes[family]
    reference = pipe(PROMPT, **call_args(family)).images
    before = processor_state(pipe)
    with mmviz.capture(pipe, concepts=CONCEPTS) as cap:
        images = pipe(PROMPT, **call_args(family)).images
    assert np.abs(images - reference).max() == 0
    assert processor_state(pipe) == before
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in pipe.transformer.modules())
    trace = cap.cross_attention
    assert trace.concepts == tuple(CONCEPTS)
    # the prompt's tables and word maps are those of a capture without concepts
    with mmviz.capture(pipe) as plain:
        pipe(PROMPT, **call_args(family))
    assert trace.tokens().tokens == plain.cross_attention.tokens().tokens
    np.testing.assert_array_equal(trace.heatmap("zebra"), plain.cross_attention.heatmap("zebra"))
    expected = {"sd3": [0, 1], "flux": [0], "pixart": [0, 1]}[family]  # Flux: double-stream blocks only
    assert trace.concept_layers == expected
    for slot in expected:
        m = trace.concept_maps(slot)
        assert m.shape == (3, 3, *trace.layers[slot].resolution)
        np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=2e-3)  # a softmax over the concepts
    assert trace.concept_heatmap("bike").shape == (32, 32)
    assert "first T5 token" in trace.info["concept_encoding"]
    assert trace.info["estimated_bytes"] == 2 * trace.nbytes  # the budget counts the concept maps (float32)
    view = trace.show(word="bike")
    assert view._concepts == CONCEPTS and view.word == len(view._words) + 2


def test_sd3_maps_equal_a_hand_written_reference() -> None:
    pipe = build("sd3")
    model = pipe.transformer
    with torch.no_grad():  # sharper concept queries and a bigger stream update than random weights give
        model.transformer_blocks[1].attn.add_q_proj.weight.mul_(10)
        model.transformer_blocks[0].ff_context.net[-1].weight.mul_(10)
    trace, inputs = _captured_with_inputs(pipe, "sd3", list(model.transformer_blocks))
    assert trace.info["cfg"] is True  # rows [uncond; cond]: the cond row (1) is recorded
    with torch.no_grad():
        # the concepts as the prompt is encoded; each one's first T5 token (after the 16 CLIP positions)
        embeds = pipe.encode_prompt(CONCEPTS, None, None, do_classifier_free_guidance=False, max_sequence_length=12)
        states = model.context_embedder(embeds[0][:, 16])[None]  # [1, concepts, d]
        for index, block in enumerate(model.transformer_blocks):
            x = inputs[index][0]  # the first step's call
            temb = x["temb"][1:]
            image = block.norm1(x["hidden_states"][1:], emb=temb)[0]
            if block.context_pre_only:
                text = block.norm1_context(x["encoder_hidden_states"][1:], temb)
            else:
                text = block.norm1_context(x["encoder_hidden_states"][1:], emb=temb)[0]
            attn = block.attn
            heads = attn.heads
            q_img = _norm(attn.norm_q, _split(attn.to_q(image), heads))
            k_img = _norm(attn.norm_k, _split(attn.to_k(image), heads))
            v_img = _split(attn.to_v(image), heads)
            k_txt = _norm(attn.norm_added_k, _split(attn.add_k_proj(text), heads))
            v_txt = _split(attn.add_v_proj(text), heads)
            image_out = _attend(q_img, torch.cat([k_img, k_txt], 2), torch.cat([v_img, v_txt], 2))
            if block.context_pre_only:
                normed = block.norm1_context(states, temb)
            else:
                normed, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1_context(states, emb=temb)
            q_c = _norm(attn.norm_added_q, _split(attn.add_q_proj(normed), heads))
            k_c = _norm(attn.norm_added_k, _split(attn.add_k_proj(normed), heads))
            v_c = _split(attn.add_v_proj(normed), heads)
            concept_out = _attend(q_c, torch.cat([k_c, k_img], 2), torch.cat([v_c, v_img], 2))
            expected = torch.einsum("bcd,bpd->bcp", concept_out, image_out).softmax(dim=1)[0].reshape(3, 8, 8)
            recorded = trace.concept_maps(index)[0]
            np.testing.assert_allclose(recorded, expected.numpy(), rtol=1e-3, atol=1e-4)  # float16 storage
            if index == 1:  # the concept stream's update is seen: the first block's states give other maps
                stale = block.norm1_context(model.context_embedder(embeds[0][:, 16])[None], temb)
                q_s = _norm(attn.norm_added_q, _split(attn.add_q_proj(stale), heads))
                k_s = _norm(attn.norm_added_k, _split(attn.add_k_proj(stale), heads))
                v_s = _split(attn.add_v_proj(stale), heads)
                out_s = _attend(q_s, torch.cat([k_s, k_img], 2), torch.cat([v_s, v_img], 2))
                wrong = torch.einsum("bcd,bpd->bcp", out_s, image_out).softmax(dim=1)[0].reshape(3, 8, 8)
                assert np.abs(recorded - wrong.numpy()).max() > 1e-2
            if not block.context_pre_only:  # the text stream's update, on the concepts
                states = states + gate_msa.unsqueeze(1) * attn.to_add_out(concept_out)
                normed2 = block.norm2_context(states) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
                states = states + gate_mlp.unsqueeze(1) * block.ff_context(normed2)


def test_flux_maps_equal_a_hand_written_reference() -> None:
    from diffusers.models.embeddings import apply_rotary_emb

    pipe = build("flux")
    model = pipe.transformer
    with torch.no_grad():
        model.transformer_blocks[0].attn.norm_added_q.weight.mul_(10)  # sharper concept queries
    trace, inputs = _captured_with_inputs(pipe, "flux", [model.transformer_blocks[0]])
    with torch.no_grad():
        block, x = model.transformer_blocks[0], inputs[0][1]  # the second step's call (no CFG batch in Flux)
        attn, temb = block.attn, x["temb"]
        image = block.norm1(x["hidden_states"], emb=temb)[0]
        text = block.norm1_context(x["encoder_hidden_states"], emb=temb)[0]

        def qkv(states: torch.Tensor, added: bool) -> list[torch.Tensor]:  # [b, n, heads, d], normed
            names = ("add_q_proj", "add_k_proj", "add_v_proj") if added else ("to_q", "to_k", "to_v")
            out = [getattr(attn, n)(states).unflatten(-1, (attn.heads, -1)) for n in names]
            norms = ("norm_added_q", "norm_added_k") if added else ("norm_q", "norm_k")
            return [getattr(attn, norms[0])(out[0]), getattr(attn, norms[1])(out[1]), out[2]]

        joint = [torch.cat(pair, dim=1) for pair in zip(qkv(text, True), qkv(image, False))]
        q, k = (apply_rotary_emb(t, x["image_rotary_emb"], sequence_dim=1) for t in joint[:2])
        n_text = text.shape[1]
        q, k, v = (t.transpose(1, 2) for t in (q, k, joint[2]))  # [b, heads, n, d]
        image_out = _attend(q[:, :, n_text:], k, v)
        # the concepts: the text stream's norm and projections, rotary id 0 (no rotation), over concepts + image
        embeds = pipe.encode_prompt(CONCEPTS, None, max_sequence_length=12)[0][:, 0]
        normed = block.norm1_context(model.context_embedder(embeds)[None], emb=temb)[0]
        q_c, k_c, v_c = (t.transpose(1, 2) for t in qkv(normed, True))
        concept_out = _attend(q_c, torch.cat([k_c, k[:, :, n_text:]], 2), torch.cat([v_c, v[:, :, n_text:]], 2))
        expected = torch.einsum("bcd,bpd->bcp", concept_out, image_out).softmax(dim=1)[0].reshape(3, 8, 8)
    recorded = trace.concept_maps(0)[1]
    assert float(expected.std()) > 0.01
    np.testing.assert_allclose(recorded, expected.numpy(), rtol=1e-3, atol=1e-4)


def test_pixart_maps_equal_the_value_space_reference(pipes: dict[str, Any]) -> None:
    pipe = pipes["pixart"]
    model = pipe.transformer
    attn = model.transformer_blocks[1].attn2
    trace, seen = _captured_with_inputs(pipe, "pixart", [attn])
    with torch.no_grad():
        x = seen[0][-1]  # the last step's call
        image, context = x["hidden_states"][1:], x["encoder_hidden_states"][1:]
        mask = x["attention_mask"][1:]  # [1, 1, keys] additive: padding at -10000
        q = _split(attn.to_q(image), attn.heads)
        k, v = _split(attn.to_k(context), attn.heads), _split(attn.to_v(context), attn.heads)
        probs = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask[:, None]).softmax(dim=-1)
        image_out = (probs @ v).transpose(1, 2).flatten(2)
        embeds = pipe.encode_prompt(CONCEPTS, do_classifier_free_guidance=False, max_sequence_length=12)[0]
        values = attn.to_v(model.caption_projection(embeds[:, 0]))[None]
        expected = torch.einsum("bcd,bpd->bcp", values, image_out).softmax(dim=1)[0].reshape(3, 8, 8)
    np.testing.assert_allclose(trace.concept_maps(1)[-1], expected.numpy(), rtol=1e-3, atol=1e-4)


def test_layers_filter_keeps_the_stream_and_saves(pipes: dict[str, Any], tmp_path: Any) -> None:
    pipe = pipes["sd3"]
    with mmviz.capture(pipe, concepts=CONCEPTS) as full:
        pipe(PROMPT, **call_args("sd3"))
    with mmviz.capture(pipe, concepts=CONCEPTS, layers=[1], heads=True) as one:
        pipe(PROMPT, **call_args("sd3"))
    trace = one.cross_attention
    assert trace.layer_names == ["transformer_blocks.1.attn"] and trace.concept_layers == [0]
    assert trace.has_heads and trace.concept_maps(0).shape == (3, 3, 8, 8)  # concept maps have no head axis
    # block 0 still ran the concept stream, so block 1's maps are those of the full capture
    np.testing.assert_array_equal(trace.concept_maps(0), full.cross_attention.concept_maps(1))
    trace.save(tmp_path / "concepts.mmviz")
    loaded = mmviz.load(tmp_path / "concepts.mmviz")
    assert loaded.concepts == tuple(CONCEPTS)
    np.testing.assert_array_equal(loaded.concept_heatmap("horse"), trace.concept_heatmap("horse"))


def test_restored_after_an_exception_with_the_finished_steps(pipes: dict[str, Any]) -> None:
    pipe = pipes["sd3"]
    before = processor_state(pipe)

    def fail(pipeline: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if step == 1:
            raise KeyboardInterrupt
        return kwargs

    with pytest.raises(KeyboardInterrupt), mmviz.capture(pipe, concepts=CONCEPTS) as cap:
        pipe(PROMPT, callback_on_step_end=fail, **call_args("sd3"))
    assert processor_state(pipe) == before
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in pipe.transformer.modules())
    trace = cap.cross_attention
    assert not trace.complete and trace.num_steps == 2 and trace.concept_maps(0).shape == (2, 3, 8, 8)


def test_pixart_custom_processors_get_word_maps_only() -> None:
    from diffusers.models.attention_processor import AttnProcessor

    pipe = build("pixart")
    blocks = pipe.transformer.transformer_blocks
    blocks[0].attn2.set_processor(AttnProcessor())  # wrapped, not replaced: no output before to_out
    with mmviz.capture(pipe, concepts=CONCEPTS) as cap:
        pipe(PROMPT, **call_args("pixart"))
    assert cap.cross_attention.layer_names == ["transformer_blocks.0.attn2", "transformer_blocks.1.attn2"]
    assert cap.cross_attention.concept_layers == [1]
    blocks[1].attn2.set_processor(AttnProcessor())
    with pytest.raises(CaptureError, match="keeps no layer with concept maps"), mmviz.capture(pipe, concepts=CONCEPTS):
        pass


def test_concept_errors(pipes: dict[str, Any]) -> None:
    with pytest.raises(CaptureError, match=r"need a diffusion transformer.*UNet.*heatmap"):
        mmviz.capture(build("sd"), concepts=CONCEPTS)
    with pytest.raises(CaptureError, match="needs the pipeline"):
        mmviz.capture(pipes["sd3"].transformer, concepts=CONCEPTS)
    pipe = pipes["flux"]
    with pytest.raises(ValueError, match="non-empty"):
        mmviz.capture(pipe, concepts=["cat", " "])
    with pytest.raises(TypeError, match="strings"):
        mmviz.capture(pipe, concepts=["cat", 3])
    with pytest.raises(TypeError, match="list of words"):
        mmviz.capture(pipe, concepts="cat")
    with pytest.raises(ValueError, match="at least two"):
        mmviz.capture(pipe, concepts=["cat"])
    with pytest.raises(ValueError, match="distinct"):
        mmviz.capture(pipe, concepts=["cat", "Cat"])
    before = processor_state(pipe)
    with (
        pytest.raises(CaptureError, match="keeps no layer with concept maps"),
        mmviz.capture(pipe, concepts=CONCEPTS, layers=["single_transformer_blocks"]),
    ):
        pass
    assert processor_state(pipe) == before  # nothing left installed
    with pytest.raises(TypeError, match="diffusion transformer pipelines"):
        mmviz.capture(torch.nn.Linear(2, 2), concepts=CONCEPTS)
    with pytest.raises(ValueError, match=f"more than the {MAX_CONCEPTS}"):
        mmviz.capture(pipe, concepts=[f"w{i}" for i in range(MAX_CONCEPTS + 1)])
