"""Train the teaching sparse autoencoder on the teaching VLM's vision tower, name its features, steer with them.

Run once, offline, in the background (never in CI)::

    nohup python -m mmviz.teaching.train_sae > /tmp/train_sae.log 2>&1 &

Site: ``model.vision_tower.encoder.layers.0`` (the residual stream after the tower's first block; width 64)
at the 64 image patches (CLS left out) of `make_scenes` scenes (seeds 0 …; held-out scenes use seed
50 000 and up). Colour is linearly readable there at every object patch (a least-squares probe: 100%), shape
only from the patch's part of the outline (54%; 99.7% one block later). The site is also where steering the
answer works: adding the blue-minus-red mean difference at the language model's image tokens after its first
block turned at most 23% of red answers blue (the answer position has read them by then; see notebook 05), and
the tower's second block is the one LLaVA hands to the projector, through transformers' own output recording,
which an edit of that block's output does not reach (steering there changed no answer).

SAE: top-k (``k`` features per patch kept), ``d_sae`` features, decoder rows of unit norm, ``b_dec``
subtracted before encoding (SAELens layout: ``cfg.json`` + ``sae_weights.safetensors``, float32). Adam, batch
1024 patches, lr 1e-3 with cosine decay, seed 0, one CPU thread; loss the mean squared error over the
variance of the activations (1 − fraction of variance explained).

Measured for the shipped weights (defaults: 3000 scenes = 192 000 patches, ``--d-sae 64 --k 4 --steps 10000``;
two CPU cores shared with about eight other busy processes): 97 s of training (111 s with collecting the
activations; the whole first run, with a shorter evaluation, 147 s). Fraction of variance explained: 0.914
(step 500) -> 0.945 (2000) -> 0.954 (10 000) on training batches, **0.951 on 300 held-out scenes**; no dead features.
Held-out feature table (`mmviz.teaching.naming.feature_table`, 300 scenes, patches at least half covered):

- one feature per colour by mean activation on that colour: red 20 (9.66 on red patches, at most 0.05 on any
  other colour or the background), blue 60 (10.79 / 0.02), yellow 22 (7.69 / 0.08), green 0 (8.09 on green,
  but 2.88 on blue: selectivity 0.64). 15 features have a colour selectivity of at least 0.8 (red 5, blue 4,
  yellow 6, green none); 21 fire most on the background (18 of them only there).
- no shape feature worth the name: the four "star" features of selectivity 0.8-0.9 fire at most 0.04.

Steering (`flip_rates`, objects of another colour in 60 held-out scenes, about 70-80 per colour; rate at which
the colour answer becomes the steered colour, for alpha 8 / 16 / 32):

- ``object`` (add the feature on the asked object's patches): red 0.32 / 0.83 / 0.87, green 0.22 / 0.56 /
  0.80, blue 0.34 / 0.77 / 0.91, yellow 0.32 / 0.71 / 0.72;
- ``image`` (on all 64 patches): red 0.44 / 0.95 / 1.00, green 0.22 / 0.34 / 0.82, blue 0.62 / 0.96 / 1.00,
  yellow 0.38 / 0.53 / 0.49;
- ``swap`` (the object's own colour feature ablated, the target's added, on the object's patches): red 0.90 /
  0.90 / 0.91, green 0.86 / 0.84 / 0.89, blue 0.86 / 0.99 / 0.98, yellow 0.74 / 0.79 / 0.74.

``--evaluate-only`` recomputes these figures for the weights in ``--out`` (70 s).

Writes ``mmviz/teaching/weights/sae/`` (cfg.json, sae_weights.safetensors, train_log.json).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmviz.teaching._common import WEIGHTS_DIR, Clock, write_json
from mmviz.teaching.naming import SAE_SITE, feature_table, object_positions, site_activations
from mmviz.teaching.shapes import COLOURS, Scene, make_scenes

if TYPE_CHECKING:
    import torch

    from mmviz.features import SAE

EVAL_SEED = 50_000
"""Seed of the held-out scenes (training scenes use seeds below it)."""


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
            params["W_dec"].div_(params["W_dec"].norm(dim=1, keepdim=True))
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


RECIPES = ("object", "image", "swap")
"""How `steered_answer` steers towards a colour feature ``t`` (its decoder row ``d_t``, at `SAE_SITE`):
``"object"`` adds ``alpha · d_t`` on the patches the asked object touches; ``"image"`` adds it on all 64
patches; ``"swap"`` on the object's patches first removes the component along the feature of the object's own
colour (``mode="ablate"``), then adds ``alpha · d_t``."""


def steered_answer(
    model: Any,
    tokenizer: Any,
    scene: Scene,
    index: int,
    sae: SAE,
    features: dict[str, int],
    target: str,
    alpha: float,
    recipe: str = "object",
) -> str:
    """The VLM's answer to "what colour is the <shape of object index> ?" while steering towards ``target``.

    Args:
        model: the teaching VLM.
        tokenizer: its tokenizer.
        scene: the scene.
        index: the asked object's index in ``scene.objects``.
        sae: the teaching SAE.
        features: the feature of each colour (``FeatureTable.best_for``).
        target: the colour steered towards.
        alpha: the multiple of the target feature's (unit) decoder row added.
        recipe: one of `RECIPES`.

    Returns:
        The answer word (the argmax of the first answer token).
    """
    import contextlib

    import torch

    import mmviz
    from mmviz.teaching._vlm import make_batch

    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    question = next(k for k, (q, _, about) in enumerate(scene.qa) if about == index and q.startswith("what colour"))
    batch = make_batch([scene], [question], tokenizer, with_answer=False)
    positions = list(range(1, 65)) if recipe == "image" else object_positions(scene, index)
    with torch.no_grad(), contextlib.ExitStack() as stack:
        if recipe == "swap":
            own = sae.W_dec[features[scene.objects[index].colour]]
            stack.enter_context(mmviz.steer(model, own, site=SAE_SITE, positions=positions, mode="ablate"))
        row = sae.W_dec[features[target]]
        stack.enter_context(mmviz.steer(model, row, site=SAE_SITE, positions=positions, alpha=alpha))
        logits = model(**batch).logits[0, -1]
    return str(tokenizer.convert_ids_to_tokens(int(logits.argmax())))


def flip_rates(
    model: Any, tokenizer: Any, sae: SAE, features: dict[str, int], scenes: Sequence[Scene], alphas: Sequence[float]
) -> dict[str, dict[str, dict[str, float]]]:
    """How often steering with a colour feature turns the colour answer into that colour.

    For each recipe (`RECIPES`), each colour and each ``alpha``: over the scenes' objects of another colour,
    the fraction whose colour answer becomes the steered colour.

    Returns:
        ``{recipe: {colour: {str(alpha): rate}}}``.
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    for recipe in RECIPES:
        out[recipe] = {}
        for colour in features:
            pairs = [(s, i) for s in scenes for i, o in enumerate(s.objects) if o.colour != colour]
            out[recipe][colour] = {
                str(alpha): round(
                    float(
                        np.mean(
                            [
                                steered_answer(model, tokenizer, s, i, sae, features, colour, alpha, recipe) == colour
                                for s, i in pairs
                            ]
                        )
                    ),
                    3,
                )
                for alpha in alphas
            }
            print(f"{recipe}: towards {colour} (feature {features[colour]}): {out[recipe][colour]}", flush=True)
    return out


def save(params: dict[str, Any], k: int, out_dir: Path) -> int:
    """Writes the SAELens layout: ``cfg.json`` and ``sae_weights.safetensors`` (float32).

    Returns:
        Size of the weights file in bytes.
    """
    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    names = ("W_enc", "b_enc", "W_dec", "b_dec")
    # contiguous: safetensors writes a transposed tensor's buffer as it lies in memory
    arrays = {name: np.ascontiguousarray(params[name].numpy(), dtype=np.float32) for name in names}
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
    parser.add_argument(
        "--evaluate-only", action="store_true", help="evaluate the SAE in --out again (no training); keeps its log"
    )
    args = parser.parse_args()

    import torch

    import mmviz
    import mmviz.teaching as teaching

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    clock = Clock()
    model, processor = teaching.load_vlm()
    out_dir = Path(args.out)
    if args.evaluate_only:
        log = json.loads((out_dir / "train_log.json").read_text())
    else:
        x = site_activations(model, make_scenes(args.scenes, seed=args.seed)).reshape(-1, 64)
        print(f"{clock} {x.shape[0]} training patches of width {x.shape[1]}", flush=True)
        params = train(x, args.d_sae, args.k, args.steps, args.batch, args.lr, args.seed)
        size = save(params, args.k, out_dir)
        print(f"{clock} saved {out_dir} ({size / 1e3:.1f} kB)", flush=True)
        log = {"args": vars(args), "history": params["history"], "train_seconds": round(clock.minutes() * 60, 1)}
    log.update(evaluate(model, processor.tokenizer, mmviz.load_sae(out_dir), args.eval_scenes, args.steer_scenes))
    write_json(out_dir / "train_log.json", log)
    print(f"{clock} wrote {out_dir / 'train_log.json'}", flush=True)


def evaluate(model: Any, tokenizer: Any, sae: SAE, n_scenes: int, n_steer: int) -> dict[str, Any]:
    """Held-out figures of the SAE: variance explained, nameable features, steering flip rates.

    Args:
        model: the teaching VLM.
        tokenizer: its tokenizer.
        sae: the SAE.
        n_scenes: held-out scenes for the variance and the feature table (seed `EVAL_SEED`).
        n_steer: held-out scenes for steering (seed ``EVAL_SEED + 1``).

    Returns:
        ``held_out_fve``, ``named`` (features of selectivity >= 0.8 per kind), ``colour_features`` (each
        colour's feature with its mean activation on that colour, its largest mean elsewhere and its
        selectivity) and ``flip_rates`` (`flip_rates`).
    """
    held_out = make_scenes(n_scenes, seed=EVAL_SEED)
    fve = variance_explained(sae, site_activations(model, held_out).reshape(-1, sae.d_in))
    table = feature_table(model, sae, held_out)
    named = {kind: table.named(kind) for kind in ("colour", "shape")}
    print(f"held-out fraction of variance explained {fve:.4f}", flush=True)
    for kind, rows in named.items():
        print(f"{kind} features (selectivity >= 0.8): {rows}", flush=True)
    features = {c: table.best_for("colour", c) for c in COLOURS}
    names, means = table.means("colour")
    _, selectivity = table.selectivity("colour")
    described = {
        c: {
            "feature": f,
            "mean_on_colour": round(float(means[names.index(c), f]), 3),
            "largest_mean_elsewhere": round(float(np.delete(means[:, f], names.index(c)).max()), 3),
            "selectivity": round(float(selectivity[f]), 3),
        }
        for c, f in features.items()
    }
    print(f"colour features: {described}", flush=True)
    rates = flip_rates(model, tokenizer, sae, features, make_scenes(n_steer, seed=EVAL_SEED + 1), (8.0, 16.0, 32.0))
    return {
        "held_out_fve": round(fve, 4),
        "named": {kind: [[f, name, round(s, 3)] for f, name, s in rows] for kind, rows in named.items()},
        "colour_features": described,
        "flip_rates": rates,
    }


if __name__ == "__main__":
    main()
