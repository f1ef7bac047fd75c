"""Train the tiny teaching LLaVA to answer questions about shapes scenes.

Run once, offline, in the background (never in CI), after training a teaching CLIP with the
tower's 4 px patches (the shipped CLIP has 2 px patches, so it cannot start this tower)::

    python -m mmviz.teaching.train_clip --patch-size 4 --out /tmp/clip4
    nohup python -m mmviz.teaching.train_vlm --clip /tmp/clip4 > /tmp/train_vlm.log 2>&1 &

Model: transformers `LlavaForConditionalGeneration`: the teaching CLIP vision tower
(32 px, patch 4, 3 layers, initialised from a teaching CLIP trained with 4 px patches; features of
layer -2, CLS dropped, so 64 image tokens), a GELU projector and a Llama LM (hidden
96, 3 layers, 4 heads, word-level vocabulary of 25). Prompt
``<bos> <image>x64 what colour is the square ?``, target ``blue <eos>``. AdamW, batch
64, lr 1e-3 with warm-up and cosine decay, seed 0, one CPU thread. One random
question per scene; scenes mix one object (1/3) and two objects (2/3).

Measured for the shipped weights (two CPU cores shared with about eight other busy
processes): ``--steps 2500 --batch 32`` (1120 s), then ``--resume --steps 3000`` (883 s),
then ``--resume --steps 2000`` (549 s): 7500 steps, about 43 minutes in all.
First-answer-token accuracy on 256 held-out two-object scenes: 0.42 (step 500-1000)
-> 0.50 (2000-3500: it names an attribute present in the scene, at chance between
the two objects) -> 0.75 (5000) -> 0.84 (6000) -> 1.00 (6500-7500: binding to the
named object learned); final loss 0.0005.

Pointing game: see `mmviz.teaching.faithfulness` (public API).

Writes ``mmviz/teaching/weights/vlm/`` (config.json, model.safetensors in float16,
tokenizer.json, train_log.json).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from mmviz.teaching._common import PATCH_SIZE, WEIGHTS_DIR, Clock, save_fp16, write_json
from mmviz.teaching._tokenizer import build_tokenizer, save_tokenizer, vocab
from mmviz.teaching._vlm import make_batch, vlm_config_dict
from mmviz.teaching.shapes import make_scenes, random_scene

EVAL_SEED = 30_000


def evaluate(model: Any, tok: Any, n: int = 256) -> dict[str, float]:
    """Answer accuracy (argmax of the first answer token) on held-out two-object scenes.

    Args:
        model: a `LlavaForConditionalGeneration`.
        tok: the ``vlm`` tokenizer.
        n: scenes (one random question each).

    Returns:
        ``accuracy``.
    """
    import torch

    rng = np.random.default_rng(EVAL_SEED)
    scenes = make_scenes(n, seed=EVAL_SEED, n_objects=2)
    choices = [int(rng.integers(len(s.qa))) for s in scenes]
    batch = make_batch(scenes, choices, tok, with_answer=False)
    with torch.no_grad():
        logits = model(**batch).logits
    last = batch["attention_mask"].sum(-1) - 1
    pred = logits[torch.arange(n), last].argmax(-1)
    ids = vocab()
    truth = torch.tensor([ids[s.qa[k][1]] for s, k in zip(scenes, choices)])
    return {"accuracy": float((pred == truth).float().mean())}


def main() -> None:
    """Train and save the teaching VLM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--clip",
        required=True,
        help=f"a teaching CLIP with {PATCH_SIZE} px patches to start the vision tower from ('' for a random tower)",
    )
    parser.add_argument("--out", default=str(WEIGHTS_DIR / "vlm"))
    parser.add_argument("--resume", action="store_true", help="continue from the model in --out (fresh optimizer)")
    args = parser.parse_args()

    import torch
    from transformers import CLIPModel, LlavaConfig, LlavaForConditionalGeneration

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    tok = build_tokenizer("vlm")
    history: list[dict[str, float]] = []
    first_step = 0
    if args.resume:
        model = LlavaForConditionalGeneration.from_pretrained(args.out, dtype=torch.float32)
        history = json.loads((Path(args.out) / "train_log.json").read_text())["history"]
        first_step = int(history[-1]["step"]) if history else 0
        rng = np.random.default_rng(args.seed + first_step)
        print(f"resuming from step {first_step}", flush=True)
    else:
        model = LlavaForConditionalGeneration(LlavaConfig(**vlm_config_dict()))
    if args.clip and not args.resume:
        clip = CLIPModel.from_pretrained(args.clip, dtype=torch.float32)
        patch = clip.vision_model.config.patch_size
        if patch != PATCH_SIZE:
            raise SystemExit(
                f"--clip {args.clip} has {patch} px patches; the VLM's tower uses "
                f"{PATCH_SIZE} px. Train one first: python -m mmviz.teaching.train_clip --patch-size {PATCH_SIZE} "
                "--out /tmp/clip4, then pass --clip /tmp/clip4 (or --clip '' for a random tower)."
            )
        missing = model.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
        print(f"vision tower from {args.clip}: {missing}", flush=True)
    print(f"params {sum(p.numel() for p in model.parameters()) / 1e6:.3f} M", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = 100

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_at(i))
    clock = Clock()
    model.train()
    for step in range(first_step + 1, first_step + args.steps + 1):
        scenes = [random_scene(rng) for _ in range(args.batch)]
        choices = [int(rng.integers(len(s.qa))) for s in scenes]
        out = model(**make_batch(scenes, choices, tok))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0:
            print(f"{clock} step {step} loss {out.loss.item():.4f}", flush=True)
        if step % 500 == 0 or step == first_step + args.steps:
            model.eval()
            metrics = evaluate(model, tok)
            model.train()
            metrics.update(step=step, loss=float(out.loss.item()), seconds=round(clock.minutes() * 60, 1))
            history.append(metrics)
            print(f"{clock} eval {metrics}", flush=True)
    model.eval()
    out_dir = Path(args.out)
    size = save_fp16(model, out_dir)
    save_tokenizer(tok, out_dir)
    write_json(out_dir / "train_log.json", {"args": vars(args), "history": history})
    print(f"{clock} saved {out_dir} ({size / 1e6:.2f} MB)", flush=True)


if __name__ == "__main__":
    main()
