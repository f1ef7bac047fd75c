"""Train the teaching sparse autoencoder on the teaching VLM's vision tower, name its features, steer with them.

Run once, offline, in the background (never in CI)::

    nohup python -m mmviz.teaching.train_sae > /tmp/train_sae.log 2>&1 &

Site: ``model.vision_tower.encoder.layers.0`` (the residual stream after the tower's first block; width 64)
at the 64 image patches (CLS left out) of `make_scenes` scenes (seeds 0 …; held-out scenes use seed
50 000 and up). Colour is linearly readable there at every object patch (a least-squares probe: 100%), shape
only from the patch's part of the outline (54%; 99.7% one block later). The site is also where steering the
answer works: adding a colour direction at the language model's image tokens (any layer) hardly moves the
answer, because the answer position reads them in the first block; and the tower's second block is the one
LLaVA hands to the projector, through transformers' own output recording, which an edit of that block's
output does not reach.

SAE: top-k (``k`` features per patch kept), ``d_sae`` features, decoder rows of unit norm, ``b_dec``
subtracted before encoding (SAELens layout: ``cfg.json`` + ``sae_weights.safetensors``, float32). Adam, batch
1024 patches, lr 1e-3 with cosine decay, seed 0, one CPU thread; loss the mean squared error over the
variance of the activations (1 − fraction of variance explained).

Measured for the shipped weights: see the figures this script prints and writes to ``train_log.json`` (also
recorded in ``docs/teaching.md``, "The teaching SAE").

Writes ``mmviz/teaching/weights/sae/`` (cfg.json, sae_weights.safetensors, train_log.json).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmviz.teaching._common import WEIGHTS_DIR, Clock, write_json
from mmviz.teaching.naming import SAE_SITE, feature_table, patch_owners, site_activations
from mmviz.teaching.shapes import COLOURS, Scene, make_scenes

if TYPE_CHECKING:
    import torch

    from mmviz.features import SAE

EVAL_SEED = 50_000
"""Seed of the held-out scenes (training scenes use seeds below it)."""


def object_positions(scene: Scene, index: int) -> list[int]:
    """Positions at `SAE_SITE` of the patches object ``index`` touches (at least one pixel; CLS is 0).

    Args:
        scene: the scene.
        index: the object's index in ``scene.objects``.
    """
    owners = patch_owners(scene, cover=0.0)
    return [1 + int(p) for p in np.flatnonzero(owners == index)]


def train(x: torch.Tensor, d_sae: int, k: int, steps: int, batch: int, lr: float, seed: int) -> dict[str, Any]:
    """Trains a top-k SAE on activations.

    Args:
        x: ``[n, d_in]`` training activations.
        d_sae: features.
        k: features kept per row.
        steps: optimiser steps.
        batch: rows per step.
        lr: peak learning rate (cosine decay to 0).
        seed: torch seed (initialisation and batches).

    Returns:
        ``W_enc [d_in, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_in]``, ``b_dec`` (torch tensors) and ``history``.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    d_in = x.shape[1]
    w_dec = torch.randn(d_sae, d_in, generator=gen)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    params = {
        "W_enc": torch.nn.Parameter(w_dec.T.contiguous()),
        "b_enc": torch.nn.Parameter(torch.zeros(d_sae)),
        "W_dec": torch.nn.Parameter(w_dec),
        "b_dec": torch.nn.Parameter(x.mean(0).clone()),
    }
    variance = float(((x - x.mean(0)) ** 2).sum(1).mean())
    opt = torch.optim.Adam(params.values(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    fired = torch.zeros(d_sae, dtype=torch.long)
    history: list[dict[str, float]] = []
    clock = Clock()
    for step in range(1, steps + 1):
        rows = x[torch.randint(0, x.shape[0], (batch,), generator=gen)]
        pre = (rows - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
        top = torch.topk(pre, k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        recon = f @ params["W_dec"] + params["b_dec"]
        loss = ((recon - rows) ** 2).sum(1).mean() / variance
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            params["W_dec"] /= params["W_dec"].norm(dim=1, keepdim=True)
            fired += (f > 0).sum(0)
        if step % 500 == 0 or step == steps:
            dead = int((fired == 0).sum())
            fve = 1 - float(loss.detach())
            history.append({"step": step, "fve": round(fve, 4), "dead": dead})
            print(f"{clock} step {step} fraction of variance explained {fve:.4f} dead {dead}", flush=True)
            fired.zero_()
    out: dict[str, Any] = {name: p.detach().clone() for name, p in params.items()}
    out["history"] = history
    return out


def variance_explained(sae: SAE, x: torch.Tensor) -> float:
    """Fraction of the variance of ``x`` (``[n, d_in]``) the SAE's reconstruction explains."""
    err = ((sae.decode(sae.encode(x)) - x) ** 2).sum()
    return float(1 - err / ((x - x.mean(0)) ** 2).sum())


def steered_answer(model: Any, tokenizer: Any, scene: Scene, index: int, direction: Any, alpha: float) -> str:
    """The VLM's answer to "what colour is the <shape of object index> ?" with ``alpha · direction`` added.

    The direction is added at `SAE_SITE` on the patches the object touches (`object_positions`).
    """
    import torch

    import mmviz
    from mmviz.teaching._vlm import make_batch

    question = next(k for k, (_, _, about) in enumerate(scene.qa) if about == index)
    batch = make_batch([scene], [question], tokenizer, with_answer=False)
    with torch.no_grad(), mmviz.steer(model, direction, site=SAE_SITE, positions=object_positions(scene, index), alpha=alpha):
        logits = model(**batch).logits[0, -1]
    return str(tokenizer.convert_ids_to_tokens(int(logits.argmax())))


def flip_rates(
    model: Any, tokenizer: Any, sae: SAE, features: dict[str, int], scenes: Sequence[Scene], alphas: Sequence[float]
) -> dict[str, dict[str, float]]:
    """How often adding a colour feature's decoder row on the asked object turns the answer into that colour.

    For each colour's feature and each ``alpha``: over the scenes' objects of another colour, the fraction
    whose colour answer becomes the feature's colour.

    Returns:
        ``{colour: {str(alpha): rate}}``.
    """
    out: dict[str, dict[str, float]] = {}
    for colour, feature in features.items():
        row = sae.W_dec[feature]
        pairs = [(s, i) for s in scenes for i, o in enumerate(s.objects) if o.colour != colour]
        out[colour] = {
            str(alpha): float(np.mean([steered_answer(model, tokenizer, s, i, row, alpha) == colour for s, i in pairs]))
            for alpha in alphas
        }
        print(f"steer towards {colour} with feature {feature}: {out[colour]}", flush=True)
    return out


def save(params: dict[str, Any], k: int, out_dir: Path) -> int:
    """Writes the SAELens layout: ``cfg.json`` and ``sae_weights.safetensors`` (float32).

    Returns:
        Size of the weights file in bytes.
    """
    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    arrays = {name: np.ascontiguousarray(params[name].numpy(), dtype=np.float32) for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    save_file(arrays, str(out_dir / "sae_weights.safetensors"))
    d_in, d_sae = arrays["W_enc"].shape
    write_json(
        out_dir / "cfg.json",
        {
            "architecture": "topk",
            "activation_fn_kwargs": {"k": k},
            "k": k,
            "d_in": int(d_in),
            "d_sae": int(d_sae),
            "apply_b_dec_to_input": True,
            "normalize_activations": "none",
            "dtype": "float32",
            "model_name": "mmviz-teaching-vlm",
            "hook_name": SAE_SITE,
            "positions": "image patches 1-64 (CLS at 0 left out)",
        },
    )
    return (out_dir / "sae_weights.safetensors").stat().st_size


def main() -> None:
    """Train, evaluate and save the teaching SAE."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=3000, help="training scenes (64 patches each)")
    parser.add_argument("--d-sae", type=int, default=64)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-scenes", type=int, default=300)
    parser.add_argument("--steer-scenes", type=int, default=60)
    parser.add_argument("--out", default=str(WEIGHTS_DIR / "sae"))
    args = parser.parse_args()

    import torch

    import mmviz
    import mmviz.teaching as teaching

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    clock = Clock()
    model, processor = teaching.load_vlm()
    x = site_activations(model, make_scenes(args.scenes, seed=args.seed)).reshape(-1, 64)
    print(f"{clock} {x.shape[0]} training patches of width {x.shape[1]}", flush=True)
    params = train(x, args.d_sae, args.k, args.steps, args.batch, args.lr, args.seed)
    out_dir = Path(args.out)
    size = save(params, args.k, out_dir)
    train_seconds = round(clock.minutes() * 60, 1)
    sae = mmviz.load_sae(out_dir)

    held_out = make_scenes(args.eval_scenes, seed=EVAL_SEED)
    fve = variance_explained(sae, site_activations(model, held_out).reshape(-1, sae.d_in))
    table = feature_table(model, sae, held_out)
    named = {kind: table.named(kind) for kind in ("colour", "shape")}
    print(f"{clock} held-out fraction of variance explained {fve:.4f}", flush=True)
    for kind, rows in named.items():
        print(f"{kind} features (selectivity >= 0.8): {rows}", flush=True)
    colour_features = {c: table.best_for("colour", c) for c in COLOURS}
    steer_scenes = make_scenes(args.steer_scenes, seed=EVAL_SEED + 1)
    rates = flip_rates(model, processor.tokenizer, sae, colour_features, steer_scenes, (4.0, 8.0, 16.0, 32.0))
    write_json(
        out_dir / "train_log.json",
        {
            "args": vars(args),
            "history": params["history"],
            "train_seconds": train_seconds,
            "held_out_fve": round(fve, 4),
            "named": {kind: [[f, name, round(s, 3)] for f, name, s in rows] for kind, rows in named.items()},
            "colour_features": colour_features,
            "flip_rates": rates,
        },
    )
    print(f"{clock} saved {out_dir} ({size / 1e3:.1f} kB)", flush=True)


if __name__ == "__main__":
    main()
