"""The function ``mmviz.attribute`` explains, opened for perturbation: ``f(input with some positions removed)``.

``explained(model, inputs, target=...)`` resolves a target exactly as ``mmviz.attribute`` does and yields a
``Perturbable``: its ``tokens`` are the attribution's positions, and calling it with a ``[k, positions]``
boolean *keep* mask runs the model on ``k`` copies of the input in which every position not kept is replaced
by the baseline (a text token's input embedding; an image token's patch of pixels). Deletion and insertion
curves (``mmviz.evaluate``) are built on it.

Image baselines (what a removed patch's pixels become), in ``pixel_values`` space:

* ``"zeros"`` / ``"blank"``: zero — the dataset-mean colour after the processor's normalisation;
* ``"mean"``: each image's own per-channel mean;
* ``"blur"``: a box blur of the image (``BLUR_CELLS`` patch-cells wide), which keeps the colours and the
  layout but removes the detail of the patch;
* a tensor shaped like ``pixel_values`` (e.g. a blank scene), or ``{"text": ..., "image": ...}``.

Text baselines: ``"zeros"`` (zero embeddings) or ``"pad"`` (the pad token's embedding).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from mmviz.data import TokenTable

__all__ = ["BLUR_CELLS", "IMAGE_BASELINES", "Perturbable", "explained"]

IMAGE_BASELINES = ("zeros", "blank", "mean", "blur", "pad")
"""Named image baselines (``"pad"`` means zero pixels, as for ``mmviz.attribute``)."""

BLUR_CELLS = 2
"""Width of the ``"blur"`` baseline's box filter, in patch cells of the image's grid."""


class Perturbable:
    """``f(keep)``: the explained target on copies of one input with positions replaced by a baseline.

    Built by ``explained``; valid inside its ``with`` block (the model is in evaluation mode, parameters
    frozen, no gradients).

    Attributes:
        tokens: the positions (the same table ``mmviz.attribute`` returns for these inputs).
        units: ``[units]`` positions that can be removed: text tokens (not specials such as ``<bos>``,
            not padding, not image placeholders) and image patches.
        labels: description of each target row.
    """

    def __init__(self, problem: Any, baseline: Any) -> None:
        import torch

        self._problem = problem
        self.tokens: TokenTable = problem.table
        self.labels: tuple[str, ...] = tuple(problem.plan.labels)
        table = problem.table
        units: list[int] = [p for p in problem.embedding_units() if table.kind[p] in ("text", "image")]
        self._text_units = np.asarray(units, dtype=np.int64)
        cells: list[int] = []  # position of each image cell
        self._cell_of: Any = None  # shaped like pixel_values: 1 + index into `cells` (0: in no cell)
        if problem.x_pixels is not None and problem.layout is not None:
            cell_of = torch.zeros(problem.x_pixels.shape, dtype=torch.long)
            for image in range(min(len(table.images), len(problem.layout.sizes))):
                grid = table.image_positions(image)
                for (row, col), pos in np.ndenumerate(grid):
                    if pos >= 0:
                        cells.append(int(pos))
                        cell_of[problem.layout.cell_mask(image, row, col, table.grids[image])] = len(cells)
            self._cell_of = cell_of.to(problem.x_pixels.device)
        self._cells = np.asarray(cells, dtype=np.int64)
        self.units = np.asarray(units + cells, dtype=np.int64)
        if isinstance(baseline, str) and baseline not in IMAGE_BASELINES:
            raise ValueError(f"unknown baseline {baseline!r}; use one of {IMAGE_BASELINES}, a tensor or a dict")
        if isinstance(baseline, (str, dict)):
            given: dict[str, Any] = baseline if isinstance(baseline, dict) else {"text": baseline, "image": baseline}
            text_b, image_b = given.get("text"), given.get("image")
            if text_b is None or isinstance(text_b, str):
                text_b = "pad" if text_b == "pad" else "zeros"
            named = image_b is None or isinstance(image_b, str)
            b_e, b_p = problem.baselines({"text": text_b, "image": None if named else image_b})
            if named and problem.x_pixels is not None:
                b_p = _image_baseline(problem, "zeros" if image_b is None else str(image_b))
        else:
            b_e, b_p = problem.baselines(baseline)
        self._b_e, self._b_p = b_e, b_p
        self._torch = torch

    def __call__(self, keep: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """The target on copies of the input that keep only some positions.

        Args:
            keep: ``[k, positions]`` bool (or ``[positions]``): ``True`` keeps a position as given, ``False``
                replaces it with the baseline. Positions that are not ``units`` are always kept.
            batch_size: copies per forward pass.

        Returns:
            ``[k, targets]`` float64 values of the target.
        """
        keep = np.asarray(keep, dtype=bool)
        if keep.ndim == 1:
            keep = keep[None]
        if keep.ndim != 2 or keep.shape[1] != len(self.tokens):
            raise ValueError(f"keep must be [k, {len(self.tokens)}] booleans, got shape {keep.shape}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        out = [self._run(keep[i : i + batch_size]) for i in range(0, keep.shape[0], batch_size)]
        return np.concatenate(out, 0)

    def _run(self, keep: np.ndarray) -> np.ndarray:
        torch = self._torch
        problem = self._problem
        k = keep.shape[0]
        x_e, x_p = problem.x_embed, problem.x_pixels
        emb = None
        if x_e is not None and self._b_e is not None:
            emb = x_e.expand(k, -1, -1).clone()
            drop = torch.zeros((k, x_e.shape[1]), dtype=torch.bool)
            drop[:, self._text_units] = torch.from_numpy(~keep[:, self._text_units])
            emb[drop.to(emb.device)] = self._b_e[0].expand(k, -1, -1)[drop.to(emb.device)]
        pix = None
        if x_p is not None and self._b_p is not None and self._cell_of is not None:
            removed = torch.zeros((k, len(self._cells) + 1), dtype=torch.bool)
            removed[:, 1:] = torch.from_numpy(~keep[:, self._cells])
            mask = removed.to(x_p.device)[:, self._cell_of]  # [k, *pixel_values.shape]
            pix = torch.where(mask, self._b_p[None], x_p[None])
        with torch.no_grad():
            return problem.run(emb, pix, k=k).double().cpu().numpy()


def _image_baseline(problem: Any, name: str) -> Any:
    """Baseline pixels for a named image baseline (see the module docstring)."""
    import torch

    x = problem.x_pixels
    if name not in IMAGE_BASELINES:
        raise ValueError(f"unknown image baseline {name!r}; use one of {IMAGE_BASELINES} or a tensor")
    if name in ("zeros", "blank", "pad"):
        return torch.zeros_like(x)
    if x.ndim < 3:  # flattened patches (Qwen2-VL): the mean of each image's rows stands for both
        return x.mean(0, keepdim=True).expand_as(x).clone()
    images = x.reshape(-1, *x.shape[-3:])
    if name == "mean":
        return images.mean((-2, -1), keepdim=True).expand_as(images).reshape(x.shape).clone()
    rows, cols = problem.table.grids[0] if problem.table.grids else (1, 1)
    h, w = images.shape[-2:]
    kh, kw = max(1, BLUR_CELLS * h // rows) | 1, max(1, BLUR_CELLS * w // cols) | 1
    blurred = torch.nn.functional.avg_pool2d(
        images, (kh, kw), stride=1, padding=(kh // 2, kw // 2), count_include_pad=False
    )
    return blurred.reshape(x.shape)


@contextlib.contextmanager
def explained(
    model: Any,
    inputs: Any,
    *,
    target: Any = None,
    processor: Any = None,
    baseline: Any = "zeros",
    per_token: bool = False,
    sources: tuple[str, ...] | list[str] | None = None,
) -> Iterator[Perturbable]:
    """Opens the function ``mmviz.attribute`` explains for perturbation.

    Example::

        with mmviz.attribution.explained(model, inputs, processor=processor, target=" red") as f:
            keep = np.ones((2, len(f.tokens)), bool)
            keep[1, f.units[:3]] = False          # copy 1: the first three units removed
            f(keep)                               # [2, targets]

    Args:
        model: a transformers model (as for ``mmviz.attribute``).
        inputs: the processor's output for one example.
        target: what to explain (as for ``mmviz.attribute``).
        processor: the processor or tokenizer.
        baseline: what a removed position becomes (see the module docstring).
        per_token: one row per answer token.
        sources: ``"text"``, ``"image"`` (pixels) and/or ``"image_embeddings"`` (a VLM's image tokens, replaced
            row by row): which inputs can be removed (default: text and pixels when present).

    Yields:
        A ``Perturbable``. The model's mode and ``requires_grad`` flags are restored on exit, also on errors.
    """
    import torch

    from mmviz._hf.run import prepared
    from mmviz.attribution._problem import Problem

    if hasattr(inputs, "data") and not isinstance(inputs, dict):
        inputs = dict(inputs.data)
    with prepared(model), torch.no_grad():
        problem = Problem(
            model,
            dict(inputs),
            processor,
            target,
            per_token=per_token,
            sources=None if sources is None else tuple(sources),
        )
        yield Perturbable(problem, baseline)
