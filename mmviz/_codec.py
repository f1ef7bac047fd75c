"""Binary tensor payloads shared by the widgets and the HTML export (decoded by ``js/src/codecs.ts``).

A payload is a plain dict that ipywidgets sends with its ``bytes`` leaf as a binary frame (and the HTML
writer as base64)::

    {"dtype": "uint8", "shape": [q, k], "data": <bytes>, "axes": 1,
     "scale": <float32 bytes [q]>, "offset": <float32 bytes [q]>}

- ``dtype`` is the wire type: ``"uint8"``, ``"float16"``, ``"float32"`` or ``"int32"``, little-endian.
- ``axes`` is the number of leading axes that index a quantisation slice. With ``axes=0`` ``scale``
  and ``offset`` are plain numbers; otherwise they are float32 buffers with one value per slice
  (``prod(shape[:axes])`` values).
- A value decodes as ``offset + scale * stored``; for float and int payloads ``scale=1, offset=0``.

Floats are never sent as JSON lists. Token text and other strings travel as JSON (it is text, not
markup: the front end renders it with ``textContent``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["WIRE_DTYPES", "decode_tensor", "encode_tensor", "encode_uint8", "payload_nbytes"]

WIRE_DTYPES = ("uint8", "float16", "float32", "int32")
"""The element types a payload may carry."""


def encode_tensor(array: np.ndarray, dtype: str = "float16") -> dict[str, Any]:
    """Encodes an array without quantisation.

    Args:
        array: any numeric array.
        dtype: wire type, one of ``"float16"``, ``"float32"``, ``"int32"`` or ``"uint8"`` (values are
            cast, not scaled; use ``encode_uint8`` to quantise floats).

    Returns:
        The payload dict (``scale=1``, ``offset=0``, ``axes=0``).
    """
    if dtype not in WIRE_DTYPES:
        raise ValueError(f"unknown wire dtype {dtype!r}; use one of {WIRE_DTYPES}")
    arr = np.ascontiguousarray(np.asarray(array), dtype=np.dtype(dtype).newbyteorder("<"))
    return {
        "dtype": dtype,
        "shape": [int(s) for s in arr.shape],
        "data": arr.tobytes(),
        "axes": 0,
        "scale": 1.0,
        "offset": 0.0,
    }


def encode_uint8(array: np.ndarray, axes: int = 0) -> dict[str, Any]:
    """Quantises floats to uint8 with a separate linear range per slice.

    Each slice (one index into the leading ``axes`` axes) maps its own ``[min, max]`` onto ``0..255``,
    so a row that holds only small probabilities keeps its detail next to a row with a sink token.

    Args:
        array: ``[*slices, *values]`` float array; ``axes`` leading axes index the slices.
        axes: how many leading axes index a slice (``0``: one range for the whole array).

    Returns:
        The payload dict; ``scale``/``offset`` are floats when ``axes == 0``, else float32 bytes.
    """
    arr = np.asarray(array, dtype=np.float32)
    if not 0 <= axes <= arr.ndim:
        raise ValueError(f"axes={axes} is out of range for an array of {arr.ndim} dimensions")
    n_slices = int(np.prod(arr.shape[:axes], dtype=np.int64))
    per = int(np.prod(arr.shape[axes:], dtype=np.int64))
    flat = np.nan_to_num(arr.reshape(n_slices, per), nan=0.0, posinf=0.0, neginf=0.0)
    empty = per == 0
    lo = np.zeros(n_slices, dtype=np.float32) if empty else flat.min(axis=1)
    hi = lo if empty else flat.max(axis=1)
    scale = ((hi - lo) / 255.0).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.rint((flat - lo[:, None]) / safe[:, None])
    data = np.clip(q, 0, 255).astype(np.uint8)
    payload: dict[str, Any] = {
        "dtype": "uint8",
        "shape": [int(s) for s in arr.shape],
        "data": data.tobytes(),
        "axes": axes,
    }
    if axes == 0:
        payload["scale"] = float(scale[0]) if n_slices else 1.0
        payload["offset"] = float(lo[0]) if n_slices else 0.0
    else:
        payload["scale"] = scale.astype("<f4").tobytes()
        payload["offset"] = lo.astype("<f4").tobytes()
    return payload


def decode_tensor(payload: dict[str, Any]) -> np.ndarray:
    """Decodes a payload back to float32 (int32 stays int32); the inverse of the encoders.

    Args:
        payload: a dict made by ``encode_tensor`` or ``encode_uint8`` (``bytes`` or
            ``memoryview`` leaves).

    Returns:
        The array with ``payload["shape"]``.
    """
    dtype = payload["dtype"]
    if dtype not in WIRE_DTYPES:
        raise ValueError(f"unknown wire dtype {dtype!r}")
    shape = tuple(int(s) for s in payload["shape"])
    raw = np.frombuffer(bytes(payload["data"]), dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
    if dtype == "int32":
        return raw.astype(np.int32)
    axes = int(payload.get("axes", 0))
    values = raw.astype(np.float32)
    if axes == 0:
        return np.float32(payload["offset"]) + np.float32(payload["scale"]) * values
    scale = np.frombuffer(bytes(payload["scale"]), dtype="<f4")
    offset = np.frombuffer(bytes(payload["offset"]), dtype="<f4")
    lead = shape[:axes]
    flat = values.reshape(-1, int(np.prod(shape[axes:], dtype=np.int64)))
    out = offset[:, None] + scale[:, None] * flat
    return out.reshape(lead + shape[axes:]).astype(np.float32)


def payload_nbytes(value: Any) -> int:
    """Bytes of binary data inside a (nested) payload: what the browser receives as buffers."""
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, memoryview):
        return value.nbytes
    if isinstance(value, dict):
        return sum(payload_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(payload_nbytes(v) for v in value)
    return 0
