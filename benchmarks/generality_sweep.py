"""How general is mmviz.capture? Every transformers base architecture, tiny, random, on CPU.

For each ``model_type`` in ``MODEL_MAPPING_NAMES`` the script builds the base model from its default
config, shrunk generically (hidden size, layers, heads, key/value heads, intermediate size, vocabulary,
experts, latent ranks; sub-configs recursively), runs a text forward (``input_ids``, plus
``decoder_input_ids`` for encoder-decoders), a pixel forward (``pixel_values``) or an audio forward, and
sorts the result:

* ``exact``: every attention tensor eager ``output_attentions=True`` returns was recorded, the stored
  float16 trace matches it (≤ 1e-3; Longformer's sliding window, laid out over key positions by mmviz, is
  read back along the window; five- and three-axis tensors folded as mmviz folds them), the
  probabilities handed back to the model during the capture match it before storage (≤ 1e-5), and the
  outputs equal the uncaptured run;
* ``mismatch``: captured, but some output, layer or probability differs;
* ``unsupported``: mmviz refused with its "does not go through the AttentionInterface" error although eager
  returns attentions (neither the interface nor the returned weights gave it anything to record);
* ``error``: the capture raised anything else;
* ``no-attentions``: eager ``output_attentions=True`` returns no attention tensors (not counted);
* ``skipped``: the tiny model could not be built or run without mmviz, or the architecture ran past the
  per-model time limit (not counted).

The eager reference is the same weights in a model built with ``attn_implementation="eager"`` (older
models choose their attention classes when they are built), or, where that returns no attention, a
copy switched to eager.

Run: ``python benchmarks/generality_sweep.py [--only bert,t5] [--timeout 30] [--json sweep.json]``.
One CPU thread; the whole sweep takes 12–35 minutes on a shared 2-core machine (``--budget`` stops it;
``--resume sweep.json`` finishes a cut-off run, and with ``--only`` redoes those architectures and keeps
the others' results).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import io
import json
import logging
import re
import signal
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mmviz
from mmviz.errors import CaptureError

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, LAYERS, FFN, VOCAB = 256, 2, 1, 128, 2, 128, 256
SEQ = 12

SIZE_FIELDS: dict[str, int] = {
    # widths
    "hidden_size": HIDDEN, "d_model": HIDDEN, "n_embd": HIDDEN, "embed_dim": HIDDEN, "dim": HIDDEN,
    "n_embed": HIDDEN, "word_embed_proj_dim": HIDDEN, "projection_dim": HIDDEN, "proj_dim": HIDDEN,
    "encoder_hidden_size": HIDDEN, "embedding_size": HIDDEN, "hidden_dim": HIDDEN, "d_embed": HIDDEN,
    "text_embed_dim": HIDDEN, "vision_embed_dim": HIDDEN, "output_hidden_size": HIDDEN,
    # depth
    "num_hidden_layers": LAYERS, "num_layers": LAYERS, "n_layer": LAYERS, "n_layers": LAYERS,
    "encoder_layers": LAYERS, "decoder_layers": LAYERS, "num_decoder_layers": LAYERS, "depth": LAYERS,
    "num_encoder_layers": LAYERS, "text_layers": LAYERS, "vision_layers": LAYERS,
    # heads
    "num_attention_heads": HEADS, "n_head": HEADS, "num_heads": HEADS, "n_heads": HEADS,
    "encoder_attention_heads": HEADS, "decoder_attention_heads": HEADS, "num_decoder_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS, "num_kv_heads": KV_HEADS, "n_kv_heads": KV_HEADS,
    "multi_query_group_num": KV_HEADS,
    "head_dim": HEAD_DIM, "d_kv": HEAD_DIM, "attention_head_dim": HEAD_DIM,
    # feed-forward
    "intermediate_size": FFN, "ffn_dim": FFN, "d_ff": FFN, "n_inner": FFN, "encoder_ffn_dim": FFN,
    "decoder_ffn_dim": FFN, "mlp_dim": FFN, "ffn_hidden_size": FFN, "moe_intermediate_size": FFN // 2,
    "shared_expert_intermediate_size": FFN, "dense_intermediate_size": FFN, "expert_intermediate_size": FFN // 2,
    # mixtures of experts
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "moe_num_experts": 4, "n_shared_experts": 1,
    "num_experts_per_tok": 2, "moe_topk": 2, "top_k": 2, "n_group": 1, "topk_group": 1,
    # latent attention (DeepSeek-V2/V3 style)
    "q_lora_rank": 32, "kv_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
    "qk_head_dim": 16,
    # linear / state-space mixers of hybrids
    "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 16, "linear_value_head_dim": 16,
    "mamba_d_state": 16, "mamba_n_heads": 4, "mamba_d_head": 16, "ssm_state_size": 16, "state_size": 16,
    "time_step_rank": 8, "mamba_expand": 2,
    # vocabularies
    "vocab_size": VOCAB, "n_positions": 128,
}  # fmt: skip
DERIVED_LISTS = ("layer_types", "layers_block_type", "mlp_only_layers", "attn_layer_indices", "block_types")


LEVELS: dict[str, tuple[str, ...]] = {
    # how far to shrink: everything; everything but with 8 layers (hybrids whose first layers have no
    # attention); keep widths and heads (models with coupled sizes); keep depth too
    "tiny": (),
    "deeper": ("eight-layers",),
    "narrow-depth": ("widths", "heads"),
    "depth-kept": ("widths", "heads", "depth"),
}
KEPT: dict[str, set[str]] = {
    "widths": {k for k, v in SIZE_FIELDS.items() if v == HIDDEN} | {"head_dim", "d_kv", "attention_head_dim"},
    "heads": {
        "num_attention_heads",
        "n_head",
        "num_heads",
        "n_heads",
        "encoder_attention_heads",
        "decoder_attention_heads",
        "num_decoder_attention_heads",
        "num_key_value_heads",
        "num_kv_heads",
        "n_kv_heads",
        "multi_query_group_num",
    },
    "depth": {
        "num_hidden_layers",
        "num_layers",
        "n_layer",
        "n_layers",
        "encoder_layers",
        "decoder_layers",
        "num_decoder_layers",
        "depth",
        "num_encoder_layers",
        "text_layers",
        "vision_layers",
    },
}


def _mrope(rope: Any, head_dim: int) -> Any:
    """Rescales an M-RoPE ``mrope_section`` so that it sums to half the new head dimension."""
    if not isinstance(rope, dict) or not isinstance(rope.get("mrope_section"), list):
        return rope
    section = rope["mrope_section"]
    half = head_dim // 2
    scaled = [max(1, round(v * half / sum(section))) for v in section]
    scaled[-1] += half - sum(scaled)
    return {**rope, "mrope_section": scaled}


def shrink(config: Any, keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """Overrides that make ``config`` tiny: known size fields that are larger ints, sub-configs recursively.

    Args:
        config: a default config.
        keep: groups of fields left alone (``"widths"``, ``"heads"``, ``"depth"``).
    """
    kept = set().union(*(KEPT.get(k, set()) for k in keep)) if keep else set()
    out: dict[str, Any] = {}
    for key, value in config.to_dict().items():
        if key in kept or key not in SIZE_FIELDS:
            continue
        target = 8 if "eight-layers" in keep and key in KEPT["depth"] else SIZE_FIELDS[key]
        if isinstance(value, int) and not isinstance(value, bool) and value > target:
            out[key] = target
    values = config.to_dict()
    if "kv_lora_rank" in values and "num_key_value_heads" in out:  # latent attention: one key per head
        out["num_key_value_heads"] = out.get("num_attention_heads", values.get("num_attention_heads"))
    if "head_dim" in values and values["head_dim"] is None and "hidden_size" in out:
        out["head_dim"] = HEAD_DIM  # some default configs leave it to the checkpoint
    head_dim = out.get("head_dim") or values.get("head_dim")
    if head_dim is None and "hidden_size" in out and "num_attention_heads" in out:
        head_dim = out["hidden_size"] // out["num_attention_heads"]
    for key in ("rope_parameters", "rope_scaling"):
        rope = getattr(config, key, None)
        if isinstance(head_dim, int) and _mrope(rope, head_dim) is not rope:
            out[key] = _mrope(rope, head_dim)
    for key in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, key, None)
        if sub is not None and hasattr(sub, "to_dict"):
            out[key] = {"model_type": getattr(sub, "model_type", ""), **shrink(sub, keep)}
    layers = next((out[k] for k in out if k in KEPT["depth"]), None)
    for key in DERIVED_LISTS:
        value = getattr(config, key, None)
        if layers is not None and isinstance(value, list) and len(value) > layers:
            out[key] = value[:layers]  # one entry per layer
    for key in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value >= VOCAB:
            out[key] = min(value, 1)
    return out


MAX_PARAMS = 60_000_000


def build(model_type: str, class_name: str, keep: tuple[str, ...] = ()) -> Any:
    """The base model of ``model_type`` from its shrunk default config, with random weights."""
    import transformers
    from transformers import CONFIG_MAPPING

    config_class = CONFIG_MAPPING[model_type]
    overrides = shrink(config_class(), keep)
    model_class = getattr(transformers, class_name)
    attempts = [overrides, {k: v for k, v in overrides.items() if k not in DERIVED_LISTS}]
    attempts.append({k: v for k, v in attempts[1].items() if k != "head_dim"})
    for i, attempt in enumerate(attempts):
        try:
            config = config_class(**attempt)
            with torch.device("meta"):
                params = sum(p.numel() for p in model_class(config).parameters())
            break
        except Exception:
            if i == len(attempts) - 1:
                raise
    if params > MAX_PARAMS:
        raise ValueError(f"still {params / 1e6:.0f}M parameters after shrinking")
    torch.manual_seed(0)
    return model_class(config).eval()


def inputs_for(model: Any) -> dict[str, Any]:
    config = model.config
    main = getattr(model, "main_input_name", "input_ids")
    g = torch.Generator().manual_seed(0)
    if main == "pixel_values":
        vc = getattr(config, "vision_config", None) or config
        size = getattr(vc, "image_size", 32)
        size = size if isinstance(size, int) else next(iter(size)) if not isinstance(size, dict) else 224
        channels = getattr(vc, "num_channels", 3)
        return {"pixel_values": torch.randn(1, channels, size, size, generator=g)}
    if main == "input_values":
        return {"input_values": torch.randn(1, 4000, generator=g)}
    if main == "input_features":
        bins = getattr(config, "num_mel_bins", 80)
        frames = 2 * getattr(config, "max_source_positions", 1500)
        return {"input_features": torch.randn(1, bins, frames, generator=g)}
    text_config = getattr(config, "text_config", None) or config
    vocab = min(getattr(text_config, "vocab_size", VOCAB) or VOCAB, VOCAB)
    ids = torch.randint(3, max(vocab, 8), (1, SEQ), generator=g)
    out: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return out


def with_extras(model: Any, inputs: dict[str, Any], pixels: bool) -> dict[str, Any]:
    """Adds decoder ids for encoder-decoders and, for dual-tower models, pixels."""
    out = dict(inputs)
    if getattr(model.config, "is_encoder_decoder", False) and "decoder_input_ids" not in out:
        out["decoder_input_ids"] = torch.arange(3, 3 + SEQ // 2)[None] % max(3, VOCAB)
    if pixels and "pixel_values" not in out:
        out.update(inputs_for_pixels(model))
    return out


def inputs_for_pixels(model: Any) -> dict[str, Any]:
    vc = getattr(model.config, "vision_config", None) or model.config
    size = getattr(vc, "image_size", 32)
    size = size if isinstance(size, int) else 224 if isinstance(size, dict) else next(iter(size))
    g = torch.Generator().manual_seed(1)
    return {"pixel_values": torch.randn(1, getattr(vc, "num_channels", 3), size, size, generator=g)}


def attention_fields(out: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    items = out.items() if hasattr(out, "items") else []
    for key, value in items:
        if key.endswith("attentions") and isinstance(value, (tuple, list)):
            for i, v in enumerate(value):
                if isinstance(v, torch.Tensor):
                    found[f"{prefix}{key}.{i}"] = v
        elif hasattr(value, "items"):
            found.update(attention_fields(value, f"{prefix}{key}."))
    return found


def output_tensors(out: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    items = out.items() if hasattr(out, "items") else []
    for key, value in items:
        if "attentions" in key or "past_key_values" in key or "hidden_states" in key:
            continue
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            found[prefix + key] = value
        elif hasattr(value, "items"):
            found.update(output_tensors(value, f"{prefix}{key}."))
    return found


@contextlib.contextmanager
def quiet():
    """Silences what models print while they are built and run."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def key_slice_matches(stored: torch.Tensor, part: torch.Tensor) -> bool:
    """Whether ``part`` is the first or last keys of ``stored``: a model that attends to its own and the
    encoder's keys in one softmax (T5Gemma 2) returns the two parts separately, mmviz keeps the whole."""
    k = part.shape[-1]
    if stored.shape[:-1] != part.shape[:-1] or stored.shape[-1] <= k:
        return False
    return any(max_rel_diff(stored[..., sl], part) <= 1e-3 for sl in (slice(0, k), slice(-k, None)))


def is_probabilities(t: torch.Tensor) -> bool:
    """Whether a tensor a model returns among its ``*attentions`` is softmax rows (some return outputs)."""
    if t.ndim < 3 or not t.is_floating_point() or t.numel() == 0:
        return False
    # rows sum to 1, to less with attention sinks, to 0 when fully masked
    return bool(t.min() >= 0) and bool(t.float().sum(-1).max() <= 1 + 1e-3)


def eager_copy(model: Any) -> Any:
    """The model built again with ``attn_implementation="eager"`` and the same weights.

    Older models pick their attention classes when they are built (an sdpa class that cannot return
    probabilities), so switching an existing model is not enough for them.
    """
    config = copy.deepcopy(model.config)
    pending = [config]
    while pending:
        c = pending.pop()
        c._attn_implementation_internal = "eager"
        pending.extend(getattr(c, k) for k in getattr(c, "sub_configs", {}) or {} if getattr(c, k, None) is not None)
    try:
        torch.manual_seed(0)
        eager = type(model)(config).eval()
        eager.load_state_dict(model.state_dict())
        return eager
    except Exception:  # a model that cannot be built again that way
        return switched_copy(model)


def switched_copy(model: Any) -> Any:
    """A copy of the model switched to ``attn_implementation="eager"``."""
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    return eager


def band_matches(stored: torch.Tensor, part: torch.Tensor) -> bool:
    """Whether ``part`` is ``stored`` read along a sliding window (Longformer returns each query's
    ``2 · w + 1`` neighbours; mmviz keeps them at their key positions)."""
    n, band = part.shape[-2], part.shape[-1]
    if stored.shape[:-1] != part.shape[:-1] or stored.shape[-1] != n or band % 2 == 0:
        return False
    window = band // 2
    keys = torch.arange(n)[:, None] - window + torch.arange(band)[None, :]
    inside = (keys >= 0) & (keys < n)
    gathered = stored.gather(-1, keys.clamp(0, n - 1).expand(*stored.shape[:-1], band)) * inside
    return max_rel_diff(gathered, part * inside) <= 1e-3


def folds(value: torch.Tensor) -> list[torch.Tensor]:
    """The ways mmviz may store an attention tensor: as is, with the extra axis of a five-axis one
    (Hiera's windows, ProphetNet's n-gram streams) folded into the batch, or with a three-axis one's
    batch and heads apart (SAM; the sweep's models have ``HEADS`` heads)."""
    if value.ndim == 3:  # [batch · heads, query, key] (SAM), split by mmviz into batch and heads
        return [value, value.reshape(-1, HEADS, *value.shape[1:])] if value.shape[0] % HEADS == 0 else [value]
    if value.ndim != 5:
        return [value]
    return [value.reshape(-1, *value.shape[2:]), value.movedim(2, 1).reshape(-1, value.shape[1], *value.shape[3:])]


class Timeout(BaseException):
    """The per-architecture time limit: a limit of the sweep (counted as skipped), so no handler catches it."""


@contextlib.contextmanager
def time_limit(seconds: float):
    def raise_timeout(*_: Any) -> None:
        raise Timeout(f"timed out after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, raise_timeout)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    scale = max(1.0, float(b.abs().max()))
    return float((a.float() - b.float()).abs().max()) / scale


def check(model_type: str, class_name: str) -> tuple[str, str, dict[str, Any]]:
    """Returns (status, message, facts) for one architecture."""
    failures = []
    model = ref = None
    inputs: dict[str, Any] = {}
    for level, keep in LEVELS.items():
        try:
            model = build(model_type, class_name, keep)
        except Exception as e:
            failures.append(f"build ({level}): {type(e).__name__}: {str(e)[:160]}")
            continue
        for pixels in (False, True):
            try:
                inputs = with_extras(model, inputs_for(model), pixels)
                with torch.no_grad():
                    torch.manual_seed(0)  # models that draw random numbers (ViT-MAE masking) draw the same
                    ref = model(**inputs)
                break
            except Exception as e:
                failures.append(f"run ({level}, pixels={pixels}): {type(e).__name__}: {str(e)[:160]}")
                ref = None
        if ref is not None or re.search("missing .* required|must specify|timm", failures[-1], re.I):
            break  # inputs the sweep cannot make, whatever the size
    if model is None or ref is None:
        return "skipped", failures[0], {"failures": failures}
    facts: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters()), "level": level}
    try:
        for make in (eager_copy, switched_copy):  # built as eager; or, if that returns none, switched
            eager_model = make(model)
            with torch.no_grad():
                torch.manual_seed(0)
                eager_out = eager_model(**inputs, output_attentions=True)
            eager = {k: v for k, v in attention_fields(eager_out).items() if is_probabilities(v)}
            del eager_model
            if eager:
                break
    except Exception as e:
        return "skipped", f"eager: {type(e).__name__}: {str(e)[:160]}", facts
    if not eager:
        return "no-attentions", "eager output_attentions returned no attention tensors", facts
    facts["eager_layers"] = len(eager)
    try:
        with torch.no_grad(), mmviz.capture(model, store="dense") as cap:
            torch.manual_seed(0)
            out = model(**inputs, output_attentions=True)
        trace = cap.attention
    except CaptureError as e:
        text = str(e)
        status = "unsupported" if "AttentionInterface" in text else "error"
        return status, f"CaptureError: {text[:200]}", facts
    except Exception as e:
        tb = traceback.extract_tb(e.__traceback__)
        where = next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(tb) if "mmviz" in f.filename), "")
        return "error", f"{type(e).__name__}: {str(e)[:200]} [{where}]", facts

    problems = []
    got_out, eager_tensors = output_tensors(out), output_tensors(eager_out)
    for name, value in output_tensors(ref).items():
        if name in got_out and max_rel_diff(got_out[name], value) > 1e-5:
            if name in eager_tensors and max_rel_diff(got_out[name], eager_tensors[name]) <= 1e-5:
                facts["eager_differs_from_sdpa"] = True  # transformers' own eager and sdpa disagree
            else:
                problems.append(f"output {name} differs by {max_rel_diff(got_out[name], value):.1e}")
    handed_back = attention_fields(out)
    for name, value in eager.items():
        if name not in handed_back:
            problems.append(f"{name} not handed back")
        elif max_rel_diff(handed_back[name], value) > 1e-5:
            problems.append(f"{name} differs by {max_rel_diff(handed_back[name], value):.1e} before storage")
    stored = [
        (f"{m.name}[{layer}]", torch.from_numpy(m.dense[:, i].astype("float32")))
        for m in trace.modules.values()
        if m.dense is not None
        for i, layer in enumerate(m.layers)
    ]
    facts["stored_layers"] = len(stored)
    facts["modules"] = sorted(trace.modules)
    unmatched = []
    used: set[int] = set()
    for name, value in eager.items():
        hit = next(
            (
                j
                for j, (_, s) in enumerate(stored)
                if j not in used and any(s.shape == v.shape and max_rel_diff(s, v) <= 1e-3 for v in folds(value))
            ),
            None,
        )
        if hit is not None:
            used.add(hit)
        elif not any(key_slice_matches(s, value) or band_matches(s, value) for _, s in stored):
            unmatched.append(name)
    if unmatched:
        problems.append(f"{len(unmatched)}/{len(eager)} eager attention tensors not in the trace (e.g. {unmatched[0]})")
    if problems:
        return "mismatch", "; ".join(problems[:3]), facts
    return "exact", "", facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated model types")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per architecture")
    parser.add_argument("--budget", type=float, default=45 * 60, help="seconds for the whole sweep")
    parser.add_argument("--json", default="", help="write every result to this file")
    parser.add_argument("--resume", default="", help="a --json file of an earlier, time-boxed run: do the rest")
    args = parser.parse_args()

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    only = {s for s in args.only.split(",") if s}
    every = [(t, c if isinstance(c, str) else c[0]) for t, c in MODEL_MAPPING_NAMES.items()]
    todo = [(t, c) for t, c in every if not only or t in only]
    results: dict[str, dict[str, Any]] = {}
    if args.resume:  # keep the earlier results, except those cut off and those named by --only
        earlier = json.loads(Path(args.resume).read_text())
        results = {t: r for t, r in earlier.items() if "budget exhausted" not in r["message"] and t not in only}
        todo = [(t, c) for t, c in every if t not in results]
    start = time.perf_counter()
    for i, (model_type, class_name) in enumerate(todo):
        if time.perf_counter() - start > args.budget:
            results[model_type] = {"status": "skipped", "message": "sweep budget exhausted", "seconds": 0.0}
            continue
        t0 = time.perf_counter()
        try:
            with time_limit(args.timeout), quiet():
                status, message, facts = check(model_type, class_name)
        except Timeout as e:
            status, message, facts = "skipped", str(e), {}
        except Exception as e:  # anything the per-step handlers missed
            status, message, facts = "error", f"{type(e).__name__}: {str(e)[:200]}", {}
        seconds = time.perf_counter() - t0
        results[model_type] = {"status": status, "message": message, "seconds": round(seconds, 2), **facts}
        print(f"[{i + 1:3d}/{len(todo)}] {model_type:32s} {status:13s} {seconds:5.1f}s {message[:110]}", flush=True)
        if i % 25 == 24:
            gc.collect()

    counts = Counter(r["status"] for r in results.values())
    attempted = sum(counts[s] for s in ("exact", "mismatch", "unsupported", "error"))
    print("\n== summary ==")
    print(f"architectures: {len(results)}  (total {time.perf_counter() - start:.0f} s)")
    for status in ("exact", "mismatch", "unsupported", "error", "no-attentions", "skipped"):
        print(f"  {status:14s} {counts[status]:4d}")
    if attempted:
        print(f"exact among models whose eager returns attentions: {counts['exact']}/{attempted} "
              f"({100 * counts['exact'] / attempted:.1f}%)")  # fmt: skip
    differs = sorted(t for t, r in results.items() if r.get("eager_differs_from_sdpa"))
    if differs:
        print(f"\nexact, but transformers' own eager and sdpa outputs differ (mmviz follows eager): {differs}")
    for status in ("mismatch", "error", "unsupported"):
        failing = {t: r for t, r in results.items() if r["status"] == status}
        if failing:
            print(f"\n-- {status} ({len(failing)}) --")
            for t, r in failing.items():
                print(f"  {t}: {r['message'][:220]}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
