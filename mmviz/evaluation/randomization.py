"""Sanity checks by randomisation (Adebayo et al., 2018, "Sanity Checks for Saliency Maps").

**Model randomisation**, cascading: the transformer blocks are re-drawn at random one at a time from the
top down (each tower from its last block to its first; towers in reverse order of registration, so a VLM's
language model goes before its vision tower and CLIP's vision tower before its text tower), and after each
block the map is drawn again. A map that explains the model must change once the model's weights are
noise; the score is the rank correlation (Spearman, of the absolute scores, over the removable positions)
between the original map and the map of the fully randomised model. The check fails when it is at least
``threshold``: the map then shows the input (edges, objects on a plain background, position), not the model.

Each parameter of a randomised block is drawn from a normal distribution with that parameter's own mean and
standard deviation (seeded), so scales stay as trained; parameters with no spread (LayerNorm weights of 1,
zero biases) keep their values, as a fresh initialisation would give them. The original weights are put
back afterwards, also on errors and interrupts.

**Label randomisation**, where the target can be swapped: the map drawn for another target (another
token, class or answer) should differ from the original; same score and threshold.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from mmviz._hf.run import progress_bar
from mmviz.data.faithfulness import CheckResult
from mmviz.evaluation.metrics import rank_correlation
from mmviz.evaluation.subject import Subject

__all__ = ["blocks", "label_randomization", "model_randomization", "randomized"]


def blocks(model: Any) -> list[tuple[str, Any]]:
    """The model's transformer blocks, top-down: ``(dotted name, module)``.

    A block list is an ``nn.ModuleList`` of modules of one class holding parameters, not inside another
    block list.
    """
    import torch

    found: list[tuple[str, Any]] = []
    taken: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(t + ".") for t in taken) or not isinstance(module, torch.nn.ModuleList):
            continue
        children = list(module)
        if not children or len({type(c) for c in children}) != 1:
            continue
        if not any(True for _ in children[0].parameters()):
            continue
        taken.append(name)
        found.append((name, module))
    out: list[tuple[str, Any]] = []
    for name, module in reversed(found):
        out += [(f"{name}.{i}", block) for i, block in reversed(list(enumerate(module)))]
    return out


def _redraw(module: Any, generator: Any) -> None:
    import torch

    with torch.no_grad():
        for p in module.parameters():
            if p.numel() < 2:
                continue
            std = float(p.detach().float().std())
            if not std > 0:
                continue
            mean = float(p.detach().float().mean())
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32) * std + mean
            p.copy_(noise.to(p.dtype))


@contextlib.contextmanager
def randomized(model: Any, seed: int = 0) -> Iterator[Any]:
    """Yields ``randomize(module)``, which re-draws a module's weights; all weights restored on exit.

    Args:
        model: the model (each randomised module's parameters are saved first: as much memory again for them).
        seed: seed of the random weights.
    """
    import torch

    saved: dict[int, tuple[Any, Any]] = {}  # id(parameter) → (parameter, its original values)
    generator = torch.Generator().manual_seed(seed)

    def randomize(module: Any) -> None:
        for p in module.parameters():
            saved.setdefault(id(p), (p, p.detach().clone()))
        _redraw(module, generator)

    try:
        yield randomize
    finally:
        with torch.no_grad():
            for p, original in saved.values():
                p.copy_(original)


def _compared(subject: Subject, units: str | None = None) -> np.ndarray:
    """Positions the correlation compares.

    Text tokens and image patches (not specials or padding), or only the ``units`` kind (a map of the image that
    scores the prompt's tokens 0 is compared on the image).
    """
    kinds = subject.tokens.kind
    return np.flatnonzero(kinds == units if units else (kinds == "text") | (kinds == "image"))


def _correlation(subject: Subject, other: np.ndarray, units: str | None = None) -> float:
    keep = _compared(subject, units)
    if keep.size < 2:
        keep = np.arange(len(subject.scores))
    return rank_correlation(np.abs(subject.scores[keep]), np.abs(np.asarray(other, dtype=np.float64)[keep]))


def _verdict(check: str, rho: float, threshold: float, what: str) -> tuple[bool | None, str]:
    if np.isnan(rho):
        return None, f"no verdict: the map {what} is constant, so rank correlation is undefined"
    if rho >= threshold:  # a negative correlation (ranks reversed) is a changed map
        return False, (
            f"the map hardly changes ({check.replace('_', ' ')}: rank correlation {rho:.2f} ≥ {threshold}) "
            f"{what}: it does not depend on what it claims to explain"
        )
    return True, ""


def model_randomization(
    subject: Subject,
    model: Any,
    inputs: Any,
    *,
    seed: int = 0,
    threshold: float = 0.5,
    units: str | None = None,
    progress: bool = True,
) -> CheckResult:
    """Cascading model randomisation of one map (``units``: compare only the positions of that kind).

    Returns:
        ``CheckResult`` with ``x`` = number of randomised blocks (1..n), ``curve`` = rank correlation after
        each, ``labels`` = the block randomised at each point; the score is the last correlation.
    """
    if subject.recompute is None:
        raise ValueError("this map cannot be recomputed on a randomised model")
    order = blocks(model)
    if not order:
        raise ValueError(
            f"found no transformer blocks (an nn.ModuleList of layers) in {type(model).__name__} to randomise"
        )
    rhos: list[float] = []
    with randomized(model, seed) as randomize:
        for _, block in progress_bar(order, len(order), progress, "model randomisation"):
            randomize(block)
            rhos.append(_correlation(subject, subject.recompute(model, inputs, None), units))
    passed, note = _verdict("model_randomization", rhos[-1], threshold, "once the model's weights are random")
    return CheckResult(
        check="model_randomization",
        score=rhos[-1],
        baselines={"threshold": threshold},
        passed=passed,
        x=np.arange(1, len(order) + 1),
        curve=np.asarray(rhos),
        labels=tuple(name for name, _ in order),
        note=note,
    )


def label_randomization(
    subject: Subject, model: Any, inputs: Any, other_target: Any, *, threshold: float = 0.5, units: str | None = None
) -> CheckResult:
    """The map for ``other_target`` compared with the original (``units``: only the positions of that kind)."""
    if subject.recompute is None or not subject.retargetable:
        raise ValueError("this map has no target to swap")
    rho = _correlation(subject, subject.recompute(model, inputs, other_target), units)
    passed, note = _verdict("label_randomization", rho, threshold, f"for another target ({other_target!r})")
    return CheckResult(
        check="label_randomization", score=rho, baselines={"threshold": threshold}, passed=passed, note=note
    )
