"""The patching sweep: clean activations recorded once, then batches of patched corrupted runs.

``exact``: each row of a batch restores one cell of the grid; ``attribution``: one gradient for the whole grid.

Hooks are registered once per sweep, read the current batch's plan, and are removed when the sweep ends,
also when it raises or is interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from mmviz._hf.run import progress_bar
from mmviz.patching._inputs import Metric, NoiseHook, Runs
from mmviz.patching._sites import Point, Stack

__all__ = ["Grid", "Site", "Sweep"]

Key = tuple[str, int]
"""A hooked point: (kind, layer)."""


@dataclasses.dataclass(frozen=True)
class Site:
    """One row of the site axis: a name, the kind of point it reads and, for one head, its index."""

    name: str
    kind: str
    head: int | None = None


@dataclasses.dataclass(frozen=True)
class Grid:
    """The cells patched: sites × layers × columns (groups of positions)."""

    sites: tuple[Site, ...]
    layers: tuple[int, ...]
    columns: tuple[np.ndarray, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(sites, layers, columns)``."""
        return len(self.sites), len(self.layers), len(self.columns)

    def keys(self) -> list[Key]:
        """Every hooked point the grid needs."""
        return list(dict.fromkeys((s.kind, layer) for s in self.sites for layer in self.layers))


class Sweep:
    """Runs the clean, corrupted and patched forwards of one example.

    Args:
        model: the model (in eval mode, frozen, see ``mmviz._hf.run.prepared``).
        stack: its blocks.
        grid: the cells.
        runs: the clean and corrupted inputs.
        metric: outputs → ``[batch]``.
        noise: ``(positions, scale, seed)`` of ``corrupt="noise"``, or ``None``.
    """

    def __init__(
        self,
        model: Any,
        stack: Stack,
        grid: Grid,
        runs: Runs,
        metric: Metric,
        noise: tuple[np.ndarray, float, int] | None,
    ) -> None:
        self.model = model
        self.stack = stack
        self.grid = grid
        self.runs = runs
        self.metric = metric
        self.points = {key: stack.point(*key) for key in grid.keys()}
        self.entry = stack.point("residual", 0)
        self.clean: dict[Key, torch.Tensor] = {}
        self.noise: NoiseHook | None = None
        self._noise_spec = noise

    # -- one forward with hooks ------------------------------------------------------------------
    @contextlib.contextmanager
    def _hooks(self, hooks: list[tuple[Point, Callable[..., Any]]]) -> Iterator[None]:
        handles = []
        try:
            for point, fn in hooks:
                handles.append(point.hook(lambda a, k, o, p=point, f=fn: f(a, k, o, p)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _noise_hooks(self) -> list[tuple[Point, Callable[..., Any]]]:
        return [] if self.noise is None else [(self.entry, self.noise)]

    def _forward(self, inputs: dict[str, Any]) -> torch.Tensor:
        return self.metric(self.model(**inputs, **self.metric.kwargs))

    def record_clean(self) -> float:
        """Clean forward: records every point's activation ``[1, seq, features]`` and returns the metric."""

        def record(args: Any, kwargs: Any, output: Any, point: Point) -> None:
            self.clean[(point.kind, point.layer)] = point.read(args, kwargs, output).detach()

        points = dict(self.points)
        if self._noise_spec is not None:
            points.setdefault(("residual", 0), self.entry)
        with self._hooks([(p, record) for p in points.values()]), torch.no_grad():
            value = self._forward(self.runs.clean)
        if self._noise_spec is not None:
            positions, scale, seed = self._noise_spec
            self.noise = NoiseHook(self.clean[("residual", 0)], positions, scale, seed)
        return float(value[0])

    @property
    def seq(self) -> int:
        """Length of the patched sequence (after ``record_clean``)."""
        return int(next(iter(self.clean.values())).shape[1])

    def corrupt_metric(self) -> float:
        """The corrupted run's metric."""
        with self._hooks(self._noise_hooks()), torch.no_grad():
            return float(self._forward(self.runs.corrupt_batch(1))[0])

    # -- exact: one cell per batch row -----------------------------------------------------------
    def exact(self, batch_size: int, progress: bool) -> np.ndarray:
        """``[sites, layers, columns]`` metric of every patched run."""
        n_sites, n_layers, n_cols = self.grid.shape
        cells = [(s, li, c) for s in range(n_sites) for li in range(n_layers) for c in range(n_cols)]
        out = np.zeros(len(cells), dtype=np.float64)
        plan: dict[Key, tuple[torch.Tensor, torch.Tensor]] = {}

        def restore(args: Any, kwargs: Any, output: Any, point: Point) -> Any:
            step = plan.get((point.kind, point.layer))
            if step is None:
                return None
            rows, mask = step
            value = point.read(args, kwargs, output)
            clean = self.clean[(point.kind, point.layer)]
            if point.kind == "head":
                heads = mask.shape[2]
                shaped = value.reshape(*value.shape[:2], heads, -1)
                patched = torch.where(mask, clean.reshape(1, clean.shape[1], heads, -1), shaped[rows])
                new = shaped.clone()
                new[rows] = patched
                new = new.reshape(value.shape)
            else:
                new = value.clone()
                new[rows] = torch.where(mask, clean, value[rows])
            return point.write(args, kwargs, output, new)

        hooks = self._noise_hooks() + [(p, restore) for p in self.points.values()]
        starts = range(0, len(cells), batch_size)
        with self._hooks(hooks), torch.no_grad():
            for start in progress_bar(starts, len(starts), progress and len(starts) > 1, "patching"):
                batch = cells[start : start + batch_size]
                plan.clear()
                plan.update(self._plan(batch))
                out[start : start + len(batch)] = self._forward(self.runs.corrupt_batch(len(batch))).cpu().numpy()
        return out.reshape(n_sites, n_layers, n_cols)

    def _plan(self, batch: list[tuple[int, int, int]]) -> dict[Key, tuple[torch.Tensor, torch.Tensor]]:
        """Per hooked point: the batch rows it restores and their masks of restored positions.

        Masks are ``[rows, seq, 1]``, for heads ``[rows, seq, heads, 1]``.
        """
        device = next(iter(self.clean.values())).device
        by_point: dict[Key, list[tuple[int, int, int]]] = {}
        for row, (s, li, c) in enumerate(batch):
            site = self.grid.sites[s]
            by_point.setdefault((site.kind, self.grid.layers[li]), []).append((row, s, c))
        plan = {}
        for key, items in by_point.items():
            heads = self.stack.heads or 1
            shape = (len(items), self.seq, heads, 1) if key[0] == "head" else (len(items), self.seq, 1)
            mask = torch.zeros(shape, dtype=torch.bool)
            for i, (_, s, c) in enumerate(items):
                positions = torch.as_tensor(self.grid.columns[c])
                if key[0] == "head":
                    mask[i, positions, self.grid.sites[s].head] = True
                else:
                    mask[i, positions] = True
            rows = torch.as_tensor([row for row, _, _ in items])
            plan[key] = (rows.to(device), mask.to(device))
        return plan

    # -- attribution: gradient × difference ------------------------------------------------------
    def attribution(self) -> tuple[float, np.ndarray]:
        """The corrupted run's metric and ``[sites, layers, columns]`` first-order estimates of every patched run's.

        ``corrupt + ∇metric · (clean − corrupt)``, the gradient taken at the corrupted run (one forward and
        one backward for the whole grid).
        """
        acts: dict[Key, torch.Tensor] = {}

        def leaf(args: Any, kwargs: Any, output: Any, point: Point) -> Any:
            hidden = point.read(args, kwargs, output)
            return point.write(args, kwargs, output, hidden.detach().requires_grad_(True))

        def record(args: Any, kwargs: Any, output: Any, point: Point) -> None:
            acts[(point.kind, point.layer)] = point.read(args, kwargs, output)

        hooks = [*self._noise_hooks(), (self.entry, leaf)] + [(p, record) for p in self.points.values()]
        with self._hooks(hooks), torch.enable_grad():
            value = self._forward(self.runs.corrupt_batch(1))
            keys = list(acts)
            grads = torch.autograd.grad(value.sum(), [acts[k] for k in keys], allow_unused=True)
        base = float(value.detach()[0])
        per_position: dict[Key, torch.Tensor] = {}
        for key, grad in zip(keys, grads):
            act = acts[key].detach()
            if grad is None:
                grad = torch.zeros_like(act)
            change = (grad * (self.clean[key] - act))[0].float()  # [seq, features]
            if key[0] == "head":
                change = change.reshape(change.shape[0], self.stack.heads or 1, -1)
            per_position[key] = change.sum(-1).cpu()  # [seq] or [seq, heads]
        n_sites, n_layers, n_cols = self.grid.shape
        out = np.zeros((n_sites, n_layers, n_cols), dtype=np.float64)
        for s, site in enumerate(self.grid.sites):
            for li, layer in enumerate(self.grid.layers):
                contrib = per_position[(site.kind, layer)]
                if site.head is not None:
                    contrib = contrib[:, site.head]
                for c, group in enumerate(self.grid.columns):
                    out[s, li, c] = base + float(contrib[torch.as_tensor(group)].sum())
        return base, out
