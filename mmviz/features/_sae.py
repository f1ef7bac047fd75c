"""A sparse autoencoder's weights and its encode / decode formulas, on numpy or torch arrays.

Every layout ``load_sae`` reads becomes one ``SAE``: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``,
``W_dec [d_sae, d_in]``, ``b_dec [d_in]``, the bias subtracted from the input before encoding (``b_pre``:
``b_dec`` in SAELens's ``apply_b_dec_to_input`` and dictionary-learning layouts, zeros otherwise), and the
activation: ``relu``, ``jumprelu`` (with a per-feature ``threshold``) or ``topk`` (with ``k``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ACTIVATIONS", "SAE"]

ACTIVATIONS = ("relu", "jumprelu", "topk")
"""Activation functions an ``SAE`` applies to its pre-activations."""


def _vector(value: np.ndarray, n: int, name: str) -> np.ndarray:
    if value.shape != (n,):
        raise ValueError(f"SAE: `{name}` must have shape [{n}], got {list(value.shape)}")
    return value


@dataclass(eq=False)
class SAE:
    """A sparse autoencoder: ``f = act((x - b_pre) @ W_enc + b_enc)``, ``x̂ = f @ W_dec + b_dec``.

    ``act`` is ``relu``; ``jumprelu``: ``relu(z) · (z > threshold)``; ``topk``: the ``k`` largest
    pre-activations of each row kept (then ``relu``), every other feature zero.

    Attributes:
        W_enc: ``[d_in, d_sae]`` encoder weights.
        b_enc: ``[d_sae]`` encoder bias.
        W_dec: ``[d_sae, d_in]`` decoder weights (row ``i`` is feature ``i``'s direction).
        b_dec: ``[d_in]`` decoder bias, added after decoding.
        b_pre: ``[d_in]`` subtracted from the input before encoding (zeros when the layout does not).
        activation: one of ``ACTIVATIONS``.
        threshold: ``[d_sae]`` JumpReLU thresholds (``jumprelu`` only).
        k: features kept per row (``topk`` only).
        source: where the weights came from (a path, or ``"arrays"``).
    """

    W_enc: np.ndarray
    b_enc: np.ndarray
    W_dec: np.ndarray
    b_dec: np.ndarray
    b_pre: np.ndarray
    activation: str = "relu"
    threshold: np.ndarray | None = None
    k: int | None = None
    source: str = "arrays"

    def __post_init__(self) -> None:
        if self.W_enc.ndim != 2:
            raise ValueError(f"SAE: `W_enc` must be [d_in, d_sae], got shape {list(self.W_enc.shape)}")
        d_in, d_sae = self.W_enc.shape
        if self.W_dec.shape != (d_sae, d_in):
            raise ValueError(
                f"SAE: `W_dec` must be [d_sae, d_in] = [{d_sae}, {d_in}] to match `W_enc` [{d_in}, {d_sae}], "
                f"got {list(self.W_dec.shape)}"
            )
        _vector(self.b_enc, d_sae, "b_enc")
        _vector(self.b_dec, d_in, "b_dec")
        _vector(self.b_pre, d_in, "b_pre")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"SAE: unknown activation {self.activation!r}; use one of {ACTIVATIONS}")
        if self.activation == "jumprelu":
            if self.threshold is None:
                raise ValueError("SAE: a jumprelu SAE needs `threshold` [d_sae]")
            _vector(self.threshold, d_sae, "threshold")
        if self.activation == "topk" and (self.k is None or not 0 < self.k <= d_sae):
            raise ValueError(f"SAE: a topk SAE needs 0 < k <= d_sae ({d_sae}), got k={self.k}")

    @property
    def d_in(self) -> int:
        """Width of the activations the SAE reads."""
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        """Number of features."""
        return int(self.W_enc.shape[1])

    def __repr__(self) -> str:
        extra = f", k={self.k}" if self.activation == "topk" else ""
        return (
            f"SAE(d_in={self.d_in}, d_sae={self.d_sae}, activation={self.activation!r}{extra}, source={self.source!r})"
        )

    def check_width(self, width: int, where: str) -> None:
        """Refuses activations of another width than ``d_in``, naming where they come from.

        Raises:
            ValueError: ``width != d_in``.
        """
        if int(width) != self.d_in:
            raise ValueError(
                f"the SAE reads activations of width d_in={self.d_in}, but {where} has width {int(width)}: "
                "load an SAE trained on this site (or pick the site it was trained on)"
            )

    # -- formulas --------------------------------------------------------------------------------
    def encode(self, x: Any) -> Any:
        """Feature activations of ``x``.

        Args:
            x: ``[..., d_in]`` numpy array or torch tensor.

        Returns:
            ``[..., d_sae]`` of the same kind (torch: on ``x``'s device, in ``x``'s float dtype).
        """
        torch_in = _is_torch(x)
        xt = self._torch_in(x, "x", self.d_in)
        w, b_enc, b_pre = (self._param(a, xt) for a in (self.W_enc, self.b_enc, self.b_pre))
        feats = self._activate(_affine(xt - b_pre, w, b_enc))
        return feats if torch_in else feats.numpy()

    def decode(self, f: Any) -> Any:
        """Reconstruction ``f @ W_dec + b_dec``.

        Args:
            f: ``[..., d_sae]`` numpy array or torch tensor of feature activations.

        Returns:
            ``[..., d_in]`` of the same kind.
        """
        torch_in = _is_torch(f)
        ft = self._torch_in(f, "f", self.d_sae)
        out = _affine(ft, self._param(self.W_dec, ft), self._param(self.b_dec, ft))
        return out if torch_in else out.numpy()

    def _activate(self, pre: Any) -> Any:
        import torch

        if self.activation == "relu":
            return pre.relu_()  # ``pre`` is a fresh tensor: in place saves a pass over [positions, d_sae]
        if self.activation == "jumprelu":
            assert self.threshold is not None
            keep = pre > self._param(self.threshold, pre)
            return pre.relu_().mul_(keep)
        assert self.k is not None
        top = torch.topk(pre, self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))

    def _torch_in(self, x: Any, name: str, width: int) -> Any:
        import torch

        xt = x if _is_torch(x) else torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype=np.float32)))
        if xt.ndim == 0 or xt.shape[-1] != width:
            raise ValueError(f"SAE: `{name}` must be [..., {width}], got shape {list(xt.shape)}")
        return xt if xt.is_floating_point() else xt.float()

    def _param(self, value: np.ndarray, like: Any) -> Any:
        """``value`` as a tensor on ``like``'s device and dtype (converted once per device/dtype)."""
        import torch

        key = (id(value), str(like.device), like.dtype)
        cache: dict[tuple[int, str, Any], Any] = self.__dict__.setdefault("_tensors", {})
        if key not in cache:
            cache[key] = torch.from_numpy(value).to(device=like.device, dtype=like.dtype)
        return cache[key]


def _affine(x: Any, w: Any, b: Any) -> Any:
    """``x @ w + b`` in one fused call for ``[..., d]`` inputs (a new tensor, never a view of ``x``)."""
    import torch

    flat = x.reshape(-1, x.shape[-1])
    return torch.addmm(b, flat, w).reshape(*x.shape[:-1], w.shape[-1])


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")
