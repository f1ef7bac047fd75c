"""Train the teaching sparse autoencoder on the teaching VLM's vision tower, name its features, steer with them.

Run once, offline, in the background (never in CI)::

    nohup python -m mmviz.teaching.train_sae > /tmp/train_sae.log 2>&1 &

Site: ``model.vision_tower.encoder.layers.1`` (the residual stream after the tower's second block; width 64),
the hidden state LLaVA hands to the projector (``vision_feature_layer=-2``), at the 64 image patches (CLS left
out) of `make_scenes` scenes (seeds 0 …; held-out scenes use seed 50 000 and up). Colour and shape are both
linearly readable there at the patches an object covers (least-squares probes fitted on 1000 scenes, scored on
2396 patches of 300 held-out scenes: colour 100%, shape 99.4%; after the first block shape only 59%, which is
why an SAE there found colour features and no shape feature). Steering there changes the answer.

SAE: top-k (``k`` features per patch kept), ``d_sae`` features, decoder rows of unit norm, ``b_dec``
subtracted before encoding (SAELens layout: ``cfg.json`` + ``sae_weights.safetensors``, float32). Adam, batch
1024 patches, lr 1e-3 with cosine decay, seed 0, one CPU thread; loss the mean squared error over the
variance of the activations (1 − fraction of variance explained).

Measured for the shipped weights (defaults: 3000 scenes = 192 000 patches, ``--d-sae 64 --k 4 --steps 10000``;
two CPU cores shared with about eight other busy processes): 114 s of training (126 s with collecting the
activations; the whole first run, evaluation included, 159 s). Fraction of variance explained: 0.908
(step 500) -> 0.943 (2000) -> 0.951 (10 000) on training batches, **0.950 on 300 held-out scenes**; one feature
dead by the end. Held-out feature table (`mmviz.teaching.naming.feature_table`, 300 scenes, patches at least
half covered), the feature of each class (`FeatureTable.best_for`: mean on that class, largest mean on another
class or the background, selectivity ``1 − second / best``):

- colours: red 37 (16.63 / 0.14, 0.992), green 2 (8.76 / 0.56, 0.936), blue 45 (14.90 / 0.03, 0.998),
  yellow 6 (16.81 / 0.06, 0.997);
- shapes: circle 50 (13.79 / 1.87 on stars, 0.865), square 0 (14.52 / 0.04, 0.997), triangle 31 (16.93 / 0.66,
  0.961), star 7 (11.37 / 2.22 on triangles, 0.805).

A colour feature fires on its colour whatever the shape, a shape feature on its shape whatever the colour: on
one object of radius 8 in the middle, in each colour and shape, its colour's feature averages at least 9.8 over
its patches and its shape's feature at least 8.6. ``FeatureTable.named`` (selectivity >= 0.8, mean >= 1) names
these eight and a weaker square feature 49 (mean 1.90); features 11, 12, 22, 55 and 63 are as selective but
average at most 0.11 on any class, and are left out.

Steering (`flip_rates`, 60 held-out scenes, the objects of another colour or shape, about 70-80 per class;
rate at which the answer becomes the steered class, for alpha 8 / 16 / 32 / 64). Colour ("what colour is the
<shape> ?"):

- ``object`` (add the feature on the asked object's patches): red 0.09 / 0.66 / 0.87 / 0.84, green 0.01 /
  0.41 / 0.66 / 0.78, blue 0.06 / 0.43 / 0.87 / 0.92, yellow 0.06 / 0.69 / 0.91 / 0.85;
- ``image`` (on all 64 patches): red 0.18 / 0.55 / 1.00 / 1.00, green 0.01 / 0.37 / 0.73 / 0.77, blue 0.08 /
  0.60 / 1.00 / 1.00, yellow 0.13 / 0.47 / 0.74 / 0.77;
- ``swap`` (the object's own colour feature ablated, the target's added, on the object's patches): red 0.65 /
  0.92 / 0.87 / 0.84, green 0.56 / 0.66 / 0.86 / 0.97, blue 0.62 / 0.81 / 0.92 / 0.94, yellow 0.29 / 0.84 /
  0.93 / 0.88.

Shape ("what shape is <colour> ?"):

- ``object``: circle 0.07 / 0.55 / 0.78 / 0.73, square 0.00 / 0.21 / 0.74 / 0.65, triangle 0.08 / 0.65 / 1.00 /
  1.00, star 0.08 / 0.68 / 0.88 / 0.86;
- ``image``: circle 0.06 / 0.30 / 0.66 / 0.75, square 0.00 / 0.20 / 0.58 / 0.63, triangle 0.12 / 0.53 / 1.00 /
  1.00, star 0.08 / 0.54 / 0.64 / 0.61;
- ``swap``: circle 0.80 / 0.93 / 0.80 / 0.73, square 0.36 / 0.88 / 0.88 / 0.66, triangle 0.42 / 0.92 / 1.00 /
  1.00, star 1.00 / 1.00 / 0.94 / 0.90.

``--evaluate-only`` recomputes these figures for the weights in ``--out`` (98 s).

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
from mmviz.teaching.naming import SAE_SITE, FeatureTable, feature_table, object_positions, site_activations
from mmviz.teaching.shapes import COLOURS, SHAPES, Scene, make_scenes

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
"""How `steered_answer` steers towards a feature ``t`` (its decoder row ``d_t``, at `SAE_SITE`): ``"object"``
adds ``alpha · d_t`` on the patches the asked object touches; ``"image"`` adds it on all 64 patches; ``"swap"``
on the object's patches first removes the component along the feature of the object's own colour (or shape)
(``mode="ablate"``), then adds ``alpha · d_t``."""


def attribute_of(target: str) -> str:
    """``"colour"`` or ``"shape"``: which question a steering target answers.

    Raises:
        ValueError: ``target`` is neither a colour nor a shape.
    """
    if target in COLOURS:
        return "colour"
    if target in SHAPES:
        return "shape"
    raise ValueError(f"target must be a colour {tuple(COLOURS)} or a shape {SHAPES}, got {target!r}")


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
    """The VLM's answer about object ``index`` while steering towards ``target`` with its feature.

    A colour target asks "what colour is the <shape> ?", a shape target "what shape is <colour> ?".

    Args:
        model: the teaching VLM.
        tokenizer: its tokenizer.
        scene: the scene.
        index: the asked object's index in ``scene.objects``.
        sae: the teaching SAE.
        features: the feature of each colour, or of each shape (``FeatureTable.best_for``).
        target: the colour or shape steered towards.
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
    attribute = attribute_of(target)
    asks = f"what {attribute}"
    question = next(k for k, (q, _, about) in enumerate(scene.qa) if about == index and q.startswith(asks))
    batch = make_batch([scene], [question], tokenizer, with_answer=False)
    positions = list(range(1, 65)) if recipe == "image" else object_positions(scene, index)
    with torch.no_grad(), contextlib.ExitStack() as stack:
        if recipe == "swap":
            own = sae.W_dec[features[getattr(scene.objects[index], attribute)]]
            stack.enter_context(mmviz.steer(model, own, site=SAE_SITE, positions=positions, mode="ablate"))
        row = sae.W_dec[features[target]]
        stack.enter_context(mmviz.steer(model, row, site=SAE_SITE, positions=positions, alpha=alpha))
        logits = model(**batch).logits[0, -1]
    return str(tokenizer.convert_ids_to_tokens(int(logits.argmax())))


def flip_rates(
    model: Any, tokenizer: Any, sae: SAE, features: dict[str, int], scenes: Sequence[Scene], alphas: Sequence[float]
) -> dict[str, dict[str, dict[str, float]]]:
    """How often steering with a colour (or shape) feature turns the answer into that colour (or shape).

    For each recipe (`RECIPES`), each class of ``features`` and each ``alpha``: over the scenes' objects of
    another colour (shape), the fraction whose colour (shape) answer becomes the steered class.

    Returns:
        ``{recipe: {class: {str(alpha): rate}}}``.
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    for recipe in RECIPES:
        out[recipe] = {}
        for target in features:
            attribute = attribute_of(target)
            pairs = [(s, i) for s in scenes for i, o in enumerate(s.objects) if getattr(o, attribute) != target]
            out[recipe][target] = {
                str(alpha): round(
                    float(
                        np.mean(
                            [
                                steered_answer(model, tokenizer, s, i, sae, features, target, alpha, recipe) == target
                                for s, i in pairs
                            ]
                        )
                    ),
                    3,
                )
                for alpha in alphas
            }
            print(f"{recipe}: towards {target} (feature {features[target]}): {out[recipe][target]}", flush=True)
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
    parser.add_argument("--alphas", type=float, nargs="+", default=[8.0, 16.0, 32.0, 64.0], help="steering scales")
    parser.add_argument("--out", default=str(WEIGHTS_DIR / "sae"))
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="evaluate the SAE in --out again (no training); keeps its training record",
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
        trained = json.loads((out_dir / "train_log.json").read_text())
        log = {key: trained[key] for key in ("args", "history", "train_seconds")}
    else:
        x = site_activations(model, make_scenes(args.scenes, seed=args.seed)).reshape(-1, 64)
        print(f"{clock} {x.shape[0]} training patches of width {x.shape[1]}", flush=True)
        params = train(x, args.d_sae, args.k, args.steps, args.batch, args.lr, args.seed)
        size = save(params, args.k, out_dir)
        print(f"{clock} saved {out_dir} ({size / 1e3:.1f} kB)", flush=True)
        log = {"args": vars(args), "history": params["history"], "train_seconds": round(clock.minutes() * 60, 1)}
    log.update(
        evaluate(model, processor.tokenizer, mmviz.load_sae(out_dir), args.eval_scenes, args.steer_scenes, args.alphas)
    )
    write_json(out_dir / "train_log.json", log)
    print(f"{clock} wrote {out_dir / 'train_log.json'}", flush=True)


def evaluate(
    model: Any, tokenizer: Any, sae: SAE, n_scenes: int, n_steer: int, alphas: Sequence[float]
) -> dict[str, Any]:
    """Held-out figures of the SAE: variance explained, nameable features, steering flip rates.

    Args:
        model: the teaching VLM.
        tokenizer: its tokenizer.
        sae: the SAE.
        n_scenes: held-out scenes for the variance and the feature table (seed `EVAL_SEED`).
        n_steer: held-out scenes for steering (seed ``EVAL_SEED + 1``).
        alphas: the steering scales `flip_rates` measures.

    Returns:
        ``held_out_fve``; per kind (``"colour"``, ``"shape"``): ``named`` (features of selectivity >= 0.8),
        ``features`` (each class's feature, `_describe`) and ``flip_rates`` (`flip_rates`).
    """
    held_out = make_scenes(n_scenes, seed=EVAL_SEED)
    fve = variance_explained(sae, site_activations(model, held_out).reshape(-1, sae.d_in))
    table = feature_table(model, sae, held_out)
    print(f"held-out fraction of variance explained {fve:.4f}", flush=True)
    steer_scenes = make_scenes(n_steer, seed=EVAL_SEED + 1)
    out: dict[str, Any] = {"held_out_fve": round(fve, 4), "named": {}, "features": {}, "flip_rates": {}}
    for kind, classes in (("colour", COLOURS), ("shape", SHAPES)):
        named = table.named(kind)
        print(f"{kind} features (selectivity >= 0.8): {named}", flush=True)
        out["named"][kind] = [[f, name, round(s, 3)] for f, name, s in named]
        features = {c: table.best_for(kind, c) for c in classes}
        out["features"][kind] = _describe(table, kind, features)
        print(f"{kind} features: {out['features'][kind]}", flush=True)
        out["flip_rates"][kind] = flip_rates(model, tokenizer, sae, features, steer_scenes, alphas)
    return out


def _describe(table: FeatureTable, kind: str, features: dict[str, int]) -> dict[str, dict[str, float]]:
    """Each class's feature with its mean activation on that class, its largest mean elsewhere, its selectivity.

    Also the spread of the feature over the other attribute (a shape feature's means over the colours, and the
    reverse): ``other_min`` / ``other_max``, close together for a feature that ignores the other attribute.
    """
    names, means = table.means(kind)
    _, selectivity = table.selectivity(kind)
    _, other = table.means("shape" if kind == "colour" else "colour")
    return {
        c: {
            "feature": f,
            "mean_on_class": round(float(means[names.index(c), f]), 3),
            "largest_mean_elsewhere": round(float(np.delete(means[:, f], names.index(c)).max()), 3),
            "selectivity": round(float(selectivity[f]), 3),
            "other_min": round(float(other[:-1, f].min()), 3),
            "other_max": round(float(other[:-1, f].max()), 3),
        }
        for c, f in features.items()
    }


if __name__ == "__main__":
    main()
