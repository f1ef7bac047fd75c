"""Traces of models with unusual structure: looped blocks (HRM), several named stacks in a sub-model
(VideoPrism), an image prefix in a text decoder (GIT), a layer's list of attentions (LongCat-Flash)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import mmviz  # noqa: E402
from tests.capture import conftest as tiny  # noqa: E402

PER_STACK, H_CYCLES, L_CYCLES = 2, 2, 2


@pytest.fixture(scope="module")
def hrm() -> Any:
    torch.manual_seed(0)
    cfg = transformers.HrmTextConfig(
        hidden_size=32, num_attention_heads=2, num_key_value_heads=1, head_dim=16, intermediate_size=64,
        vocab_size=64, num_layers_per_stack=PER_STACK, H_cycles=H_CYCLES, L_cycles=L_CYCLES, L_bp_cycles=[1],
    )  # fmt: skip
    return transformers.HrmTextForCausalLM(cfg).eval()


def hrm_eager(model: Any, ids: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """Eager probabilities of every application, by stack, in the order HRM runs them."""
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            calls = list(model(input_ids=ids, output_attentions=True).attentions)
    finally:
        model.set_attn_implementation("sdpa")
    out: dict[str, list[torch.Tensor]] = {"L_module": [], "H_module": []}
    for _ in range(H_CYCLES):
        for _ in range(L_CYCLES):
            out["L_module"] += [calls.pop(0) for _ in range(PER_STACK)]
        out["H_module"] += [calls.pop(0) for _ in range(PER_STACK)]
    return out


def test_looped_blocks_are_numbered_as_repeated_layers(hrm: Any) -> None:
    ids = torch.randint(3, 60, (1, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), mmviz.capture(hrm) as cap:
        hrm(input_ids=ids)
    for stack, applications in hrm_eager(hrm, ids).items():
        module = cap.attention.modules[stack]
        # application r of layer l is layer r · PER_STACK + l, in the order the loop runs them
        assert module.layers == tuple(range(len(applications)))
        for label, probs in enumerate(applications):
            assert np.abs(module.dense[0, label] - probs[0].numpy()).max() <= 1e-3, (stack, label)


def test_looped_blocks_in_generate_split_per_application(hrm: Any) -> None:
    ids = torch.randint(3, 60, (1, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), mmviz.capture(hrm) as cap:
        sequences = hrm.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
    teacher_forced = hrm_eager(hrm, sequences[:, :-1])
    for stack, applications in teacher_forced.items():
        module = cap.attention.modules[stack]
        assert module.layers == tuple(range(len(applications)))
        for label, probs in enumerate(applications):
            assert np.abs(module.dense[0, label] - probs[0].numpy()).max() <= 1e-3, (stack, label)


def test_named_stacks_of_a_sub_model_stay_apart() -> None:
    torch.manual_seed(0)
    vision = {
        "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "num_spatial_layers": 2,
        "num_temporal_layers": 2, "num_auxiliary_layers": 1, "image_size": 32, "tubelet_size": [1, 8, 8],
        "num_frames": 4,
    }  # fmt: skip
    text = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "num_hidden_layers": 2}
    cfg = transformers.VideoPrismConfig(vision_config=vision, text_config={**text, "vocab_size": 64})
    model = transformers.VideoPrismClipModel(cfg).eval()
    frames = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad(), mmviz.capture(model) as cap:
        model(pixel_values_videos=frames, input_ids=torch.randint(3, 60, (2, 5)))
    shapes = {name: m.shape for name, m in cap.attention.modules.items()}
    assert shapes["video_model.spatial_layers"] == (4, 2, 2, 16, 16)  # per frame, 4×4 patches
    assert shapes["video_model.temporal_layers"] == (16, 2, 2, 4, 4)  # per patch, 4 frames
    assert shapes["video_model.auxiliary_layers"] == (1, 1, 2, 64, 64)  # every frame's patches
    assert shapes["text_model"][0] == 2


def test_git_decoder_sequence_has_the_image_prefix_laid_out() -> None:
    torch.manual_seed(0)
    vision = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2}
    cfg = transformers.GitConfig(
        vision_config={**vision, "image_size": 32, "patch_size": 8}, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=37, vocab_size=64, max_position_embeddings=64,
    )  # fmt: skip
    model = transformers.GitForCausalLM(cfg).eval()
    images = [tiny.random_image(32, seed=0), tiny.random_image(32, seed=1)]
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    ids = torch.randint(5, 60, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model(input_ids=ids, pixel_values=pixels).logits
        with mmviz.capture(model) as cap:
            out = model(input_ids=ids, pixel_values=pixels)
    assert torch.allclose(out.logits, plain, atol=1e-5)
    table = cap.attention.tokens("encoder", 1)
    assert len(table) == 1 + 16 + 6 and cap.attention.modules["encoder"].shape[-2:] == (23, 23)
    assert table.kind[0] == "special" and list(table.kind[17:]) == ["text"] * 6
    k = np.arange(16)
    assert np.array_equal(table.image_positions(0), 1 + k.reshape(4, 4))  # patch (r, c) at 1 + 4r + c
    assert table.grids == ((4, 4),) and len(table.images) == 1
    assert cap.attention.tokens("image_encoder", 1).kind[1] == "image"
    with torch.no_grad(), mmviz.capture(model) as gen:
        sequences = model.generate(input_ids=ids[:1], pixel_values=pixels[:1], max_new_tokens=3, do_sample=False)
    assert len(gen.attention.tokens("encoder", 0)) == 17 + sequences.shape[1] - 1


def test_a_layers_list_of_attentions_gives_one_stack_per_slot() -> None:
    torch.manual_seed(0)
    cfg = transformers.LongcatFlashConfig(
        vocab_size=64, hidden_size=32, num_layers=2, num_attention_heads=2, num_key_value_heads=2,
        ffn_hidden_size=64, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, head_dim=8,
        v_head_dim=8, qk_head_dim=16, moe_topk=2, n_routed_experts=4, zero_expert_num=2, expert_ffn_hidden_size=16,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    model = transformers.LongcatFlashModel(cfg).eval()
    ids = torch.randint(3, 60, (1, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), mmviz.capture(model) as cap:
        model(input_ids=ids)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        eager = model(input_ids=ids, output_attentions=True).attentions  # layer 0: slot 0, slot 1; layer 1: ...
    model.set_attn_implementation("sdpa")
    first, second = cap.attention.modules["language_model"], cap.attention.modules["language_model.self_attn1"]
    assert first.layers == second.layers == (0, 1)
    for layer in range(2):
        assert np.abs(first.dense[0, layer] - eager[2 * layer][0].numpy()).max() <= 1e-3
        assert np.abs(second.dense[0, layer] - eager[2 * layer + 1][0].numpy()).max() <= 1e-3
