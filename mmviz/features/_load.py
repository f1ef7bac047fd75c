"""Reads sparse autoencoders from disk: SAELens directories and plain dictionary-learning state dicts.

Files are untrusted: only safetensors and ``.npz`` (without pickles) are read, and every array's shape and
size is checked from the file's header before anything is loaded.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmviz.errors import TraceFileError
from mmviz.features._sae import ACTIVATIONS, SAE

__all__ = ["MAX_SAE_BYTES", "load_sae", "sae_from_arrays"]

MAX_SAE_BYTES = 16 * 2**30
"""Largest total size of the arrays in an SAE file ``load_sae`` reads unless told otherwise."""

_WEIGHT_FILES = (
    "sae_weights.safetensors",
    "sae.safetensors",
    "model.safetensors",
    "ae.safetensors",
    "sae.npz",
    "ae.npz",
)
_CONFIG_FILES = ("cfg.json", "config.json")
_MAX_HEADER = 100 * 2**20
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def load_sae(
    path: str | os.PathLike[str],
    *,
    activation: str | None = None,
    k: int | None = None,
    apply_b_dec_to_input: bool | None = None,
    max_bytes: int = MAX_SAE_BYTES,
) -> SAE:
    """Reads a sparse autoencoder from a directory or a weights file.

    Layouts read:

    * **SAELens** — a directory with ``cfg.json`` and ``sae_weights.safetensors`` holding ``W_enc``
      ``[d_in, d_sae]``, ``W_dec`` ``[d_sae, d_in]``, ``b_enc``, ``b_dec`` and, for JumpReLU, ``threshold``.
      The activation comes from ``architecture`` / ``activation_fn_str`` (``relu``, ``jumprelu``, ``topk``
      with ``k`` from ``k`` or ``activation_fn_kwargs``); ``b_dec`` is subtracted from the input first when
      ``apply_b_dec_to_input`` is true (SAELens's default).
    * **dictionary learning** — a state dict with ``encoder.weight`` ``[d_sae, d_in]``, ``encoder.bias``,
      ``decoder.weight`` ``[d_in, d_sae]`` and a pre-bias ``bias`` or ``b_dec`` (subtracted before encoding,
      added after decoding) or a plain ``decoder.bias`` (added after decoding only); ``threshold`` makes it
      JumpReLU and a ``k`` entry top-k.

    Args:
        path: a directory, a ``.safetensors`` file or an ``.npz`` file (pickles are never read).
        activation: overrides the activation (``"relu"``, ``"jumprelu"``, ``"topk"``).
        k: overrides ``k`` of a top-k SAE.
        apply_b_dec_to_input: overrides whether ``b_dec`` is subtracted before encoding (SAELens layout).
        max_bytes: refuse files whose arrays take more than this many bytes.

    Returns:
        An ``SAE``.

    Raises:
        TraceFileError: the path holds no SAE file, the file is malformed, too large or of a kind not read.
        ValueError: the arrays do not form an SAE (missing names, shapes that do not agree).

    Example::

        sae = mmviz.load_sae("saes/layer3")     # cfg.json + sae_weights.safetensors
        sae.d_in, sae.d_sae                     # (768, 24576)
    """
    weights, config = _find_files(Path(path))
    arrays = _read_arrays(weights, max_bytes)
    cfg = dict(config)
    if activation is not None:
        cfg["activation"] = activation
    if k is not None:
        cfg["k"] = k
    if apply_b_dec_to_input is not None:
        cfg["apply_b_dec_to_input"] = apply_b_dec_to_input
    return sae_from_arrays(arrays, cfg, source=str(weights))


def _find_files(path: Path) -> tuple[Path, dict[str, Any]]:
    if path.is_dir():
        weights = next((path / n for n in _WEIGHT_FILES if (path / n).is_file()), None)
        only = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".npz"))
        if weights is None and len(only) == 1:
            weights = only[0]
        if weights is None:
            found = sorted(p.name for p in path.iterdir())[:12]
            raise TraceFileError(
                f"{path} holds no SAE weights: expected one of {', '.join(_WEIGHT_FILES)} "
                f"or a single .safetensors/.npz file (found {found})"
            )
    elif path.is_file():
        weights = path
    else:
        raise TraceFileError(f"no SAE at {path}: give a directory (cfg.json + weights) or a .safetensors/.npz file")
    config: dict[str, Any] = {}
    cfg_path = next((weights.parent / n for n in _CONFIG_FILES if (weights.parent / n).is_file()), None)
    if cfg_path is not None:
        if cfg_path.stat().st_size > _MAX_HEADER:
            raise TraceFileError(f"{cfg_path} is too large for an SAE config")
        try:
            loaded = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise TraceFileError(f"{cfg_path} is not valid JSON: {err}") from err
        if not isinstance(loaded, dict):
            raise TraceFileError(f"{cfg_path} must hold a JSON object")
        config = loaded
    return weights, config


def _check_sizes(path: Path, shapes: Mapping[str, tuple[tuple[int, ...], int]], max_bytes: int) -> None:
    total = 0
    for name, (shape, itemsize) in shapes.items():
        if any(d < 0 for d in shape):
            raise TraceFileError(f"{path}: array {name!r} has a negative dimension {list(shape)}")
        total += int(np.prod(shape, dtype=np.float64)) * itemsize
    if total > max_bytes:
        raise TraceFileError(
            f"{path}: its arrays take {total / 2**20:.0f} MiB, more than max_bytes={max_bytes} allows; "
            "raise max_bytes if you trust the file"
        )


def _read_arrays(path: Path, max_bytes: int) -> dict[str, np.ndarray]:
    if path.suffix == ".safetensors":
        return _read_safetensors(path, max_bytes)
    if path.suffix == ".npz":
        return _read_npz(path, max_bytes)
    raise TraceFileError(f"{path}: SAE weights are read from .safetensors or .npz files only (never pickles)")


def _read_safetensors(path: Path, max_bytes: int) -> dict[str, np.ndarray]:
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise TraceFileError(f"{path} is not a safetensors file (shorter than its header)")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise TraceFileError(f"{path} is not a safetensors file (header length {n} does not fit the file)")
        try:
            header = json.loads(fh.read(n).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise TraceFileError(f"{path} is not a safetensors file: {err}") from err
    if not isinstance(header, dict):
        raise TraceFileError(f"{path} is not a safetensors file (its header is not a JSON object)")
    shapes: dict[str, tuple[tuple[int, ...], int]] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            shape = tuple(int(d) for d in entry["shape"])
            itemsize = _DTYPE_BYTES[entry["dtype"]]
            start, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as err:
            raise TraceFileError(f"{path}: malformed entry {name!r} in the safetensors header") from err
        if end - start != int(np.prod(shape, dtype=np.float64)) * itemsize or end > size - 8 - n:
            raise TraceFileError(f"{path}: entry {name!r} does not match its stated shape or lies past the file end")
        shapes[name] = (shape, itemsize)
    _check_sizes(path, shapes, max_bytes)
    try:
        from safetensors.numpy import load_file
    except ImportError as err:  # pragma: no cover - safetensors ships with transformers
        raise ImportError("reading .safetensors SAEs needs the `safetensors` package: pip install safetensors") from err
    if any(header[name].get("dtype") == "BF16" for name in shapes):
        return _read_bf16(path)
    try:
        return dict(load_file(str(path)))
    except Exception as err:  # safetensors raises its own error types
        raise TraceFileError(f"{path}: could not read the safetensors file: {err}") from err


def _read_bf16(path: Path) -> dict[str, np.ndarray]:
    """bfloat16 has no numpy dtype: read through torch and widen to float32."""
    from safetensors.torch import load_file

    return {name: t.float().numpy() for name, t in load_file(str(path)).items()}


def _read_npz(path: Path, max_bytes: int) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except zipfile.BadZipFile as err:
        raise TraceFileError(f"{path} is not an .npz file: {err}") from err
    total = sum(info.file_size for info in infos)
    if total > max_bytes:
        raise TraceFileError(
            f"{path}: its arrays take {total / 2**20:.0f} MiB, more than max_bytes={max_bytes} allows; "
            "raise max_bytes if you trust the file"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: np.asarray(data[name]) for name in data.files}
    except ValueError as err:
        raise TraceFileError(f"{path}: could not read the .npz file (object arrays are refused): {err}") from err


# -- layouts --------------------------------------------------------------------------------------------
def _pick(arrays: Mapping[str, np.ndarray], *names: str) -> np.ndarray | None:
    return next((arrays[n] for n in names if n in arrays), None)


def _activation_of(cfg: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> tuple[str, int | None]:
    kwargs = cfg.get("activation_fn_kwargs") or {}
    k_value = cfg.get("k", kwargs.get("k") if isinstance(kwargs, dict) else None)
    if k_value is None and "k" in arrays:
        k_value = int(np.asarray(arrays["k"]).reshape(-1)[0])
    name = cfg.get("activation")
    if name is None:
        arch = str(cfg.get("architecture", "")).lower().replace("_", "")
        fn = str(cfg.get("activation_fn_str", cfg.get("activation_fn", ""))).lower().replace("_", "")
        if "jumprelu" in (arch, fn):
            name = "jumprelu"
        elif "topk" in (arch, fn) or "batchtopk" in (arch, fn):
            name = "topk"
        elif arch in ("", "standard") and fn in ("", "relu"):
            name = "jumprelu" if "threshold" in arrays else "topk" if k_value is not None else "relu"
        else:
            raise ValueError(
                f"SAE config names architecture {cfg.get('architecture')!r} / activation "
                f"{cfg.get('activation_fn_str')!r}, which mmviz does not read; it reads {ACTIVATIONS} "
                "(pass activation= to override)"
            )
    return str(name), None if k_value is None else int(k_value)


def sae_from_arrays(
    arrays: Mapping[str, np.ndarray], cfg: Mapping[str, Any] | None = None, *, source: str = "arrays"
) -> SAE:
    """Builds an ``SAE`` from named arrays in one of the layouts ``load_sae`` reads.

    Args:
        arrays: the state dict (numpy arrays).
        cfg: the SAELens ``cfg.json`` contents, or overrides (``activation``, ``k``, ``apply_b_dec_to_input``).
        source: where the arrays came from, for messages.

    Raises:
        ValueError: the arrays are in no known layout or their shapes disagree.
    """
    cfg = dict(cfg or {})
    norm = cfg.get("normalize_activations")
    if norm not in (None, "none", "None"):
        raise ValueError(
            f"{source}: the SAE normalises its inputs ({norm!r}), which needs statistics mmviz does not have; "
            "fold the scaling into W_enc/W_dec first"
        )
    f32 = {name: np.asarray(a, dtype=np.float32) for name, a in arrays.items()}
    if "W_enc" in f32:
        missing = [n for n in ("W_enc", "W_dec", "b_enc", "b_dec") if n not in f32]
        if missing:
            raise ValueError(f"{source}: SAELens layout is missing {missing} (found {sorted(f32)})")
        w_enc, w_dec, b_enc, b_dec = f32["W_enc"], f32["W_dec"], f32["b_enc"], f32["b_dec"]
        subtract = bool(cfg.get("apply_b_dec_to_input", True))
        b_pre = b_dec if subtract else np.zeros_like(b_dec)
    elif "encoder.weight" in f32 and "decoder.weight" in f32:
        w_enc, w_dec = f32["encoder.weight"].T, f32["decoder.weight"].T
        d_sae, d_in = f32["encoder.weight"].shape if f32["encoder.weight"].ndim == 2 else (0, 0)
        enc_bias = _pick(f32, "encoder.bias")
        b_enc = np.zeros(d_sae, np.float32) if enc_bias is None else enc_bias
        pre = _pick(f32, "bias", "b_dec", "pre_bias")
        post = _pick(f32, "decoder.bias")
        zeros = np.zeros(d_in, np.float32)
        b_pre = zeros if pre is None else pre
        b_dec = (zeros if pre is None else pre) + (zeros if post is None else post)
    else:
        raise ValueError(
            f"{source}: not an SAE layout mmviz reads (found arrays {sorted(f32)[:12]}); expected SAELens "
            "W_enc/W_dec/b_enc/b_dec or dictionary-learning encoder.weight/decoder.weight"
        )
    activation, k = _activation_of(cfg, f32)
    threshold = f32.get("threshold")
    if activation == "jumprelu" and threshold is not None and threshold.ndim == 0:
        threshold = np.full(w_enc.shape[-1], float(threshold), np.float32)
    for name, d in (("d_in", w_enc.shape[0]), ("d_sae", w_enc.shape[-1])):
        if name in cfg and int(cfg[name]) != int(d):
            raise ValueError(f"{source}: cfg.json says {name}={cfg[name]} but the weights have {name}={d}")
    return SAE(
        W_enc=np.ascontiguousarray(w_enc),
        b_enc=b_enc,
        W_dec=np.ascontiguousarray(w_dec),
        b_dec=b_dec,
        b_pre=np.ascontiguousarray(b_pre),
        activation=activation,
        threshold=threshold if activation == "jumprelu" else None,
        k=k if activation == "topk" else None,
        source=source,
    )
