"""Reading and writing ``.mmviz`` files: a zip of ``meta.json`` and ``.npy`` arrays.

Arrays are written and read with ``allow_pickle=False``, so opening a file never runs code. Each
trace class registers itself under a type name; ``load`` dispatches on the ``type`` in
``meta.json``.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from mmviz.errors import TraceFileError

__all__ = ["FORMAT", "FORMAT_VERSION", "Saveable", "load", "register_type", "save"]

FORMAT = "mmviz"
FORMAT_VERSION = 1

_READERS: dict[str, Callable[[dict[str, Any], dict[str, np.ndarray]], Any]] = {}


class Saveable(Protocol):
    """What a trace class provides to be saved."""

    def to_payload(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON metadata and named arrays."""
        ...


def register_type(name: str, reader: Callable[[dict[str, Any], dict[str, np.ndarray]], Any]) -> None:
    """Registers the reader of one trace type (called by each trace module at import)."""
    _READERS[name] = reader


def save(obj: Saveable, path: str | os.PathLike[str], type_name: str) -> None:
    """Writes ``obj`` to ``path`` as a ``.mmviz`` zip.

    The file is written to a temporary name and moved into place, so a failure never leaves half a file.

    Args:
        obj: a trace with ``to_payload()``.
        path: destination file.
        type_name: the registered type name stored in ``meta.json``.
    """
    meta, arrays = obj.to_payload()
    for name, array in arrays.items():
        if array.dtype.hasobject:
            raise TypeError(f"array {name!r} holds Python objects; mmviz files store plain arrays only")
    header = {"format": FORMAT, "version": FORMAT_VERSION, "type": type_name, "arrays": sorted(arrays), **meta}
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr("meta.json", json.dumps(header))
            for name, array in arrays.items():
                buffer = io.BytesIO()
                np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
                zf.writestr(f"arrays/{name}.npy", buffer.getvalue())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load(path: str | os.PathLike[str]) -> Any:
    """Opens a ``.mmviz`` file saved by any mmviz trace (attention, attribution, cross-attention).

    Args:
        path: the file.

    Returns:
        The trace object, of the class that saved it.

    Raises:
        TraceFileError: the file is not an mmviz file, is truncated or damaged, was written by a newer
            mmviz, or holds pickled objects. Nothing in the file is executed.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    try:
        with zipfile.ZipFile(path) as zf:
            meta = _read_meta(zf, path)
            arrays = {name: _read_array(zf, name, path) for name in meta["arrays"]}
    except zipfile.BadZipFile as exc:
        raise TraceFileError(
            f"{path!r} is not an mmviz file (not a readable zip archive: {exc}). "
            "mmviz files are written by trace.save(...); the file may be truncated or of another format."
        ) from exc
    reader = _READERS.get(meta["type"])
    if reader is None:
        import mmviz.data  # noqa: F401  (registers the built-in types)

        reader = _READERS.get(meta["type"])
    if reader is None:
        raise TraceFileError(f"{path!r} holds a trace of unknown type {meta['type']!r}; upgrade mmviz to read it")
    try:
        return reader(meta, arrays)
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise TraceFileError(f"{path!r} is damaged: its contents are inconsistent ({exc})") from exc


def _read_meta(zf: zipfile.ZipFile, path: str) -> dict[str, Any]:
    try:
        raw = zf.read("meta.json")
    except KeyError:
        raise TraceFileError(f"{path!r} is a zip archive but not an mmviz file (no meta.json)") from None
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TraceFileError(f"{path!r}: meta.json is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TraceFileError(f"{path!r} is a zip archive but not an mmviz file (meta.json has no mmviz format tag)")
    version = meta.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise TraceFileError(
            f"{path!r} uses mmviz file format version {version!r}; this mmviz reads up to version "
            f"{FORMAT_VERSION}. Upgrade mmviz (reinstall it from a newer checkout or wheel)."
        )
    if not isinstance(meta.get("arrays"), list) or not isinstance(meta.get("type"), str):
        raise TraceFileError(f"{path!r}: meta.json lacks the list of arrays or the trace type")
    return meta


def _read_array(zf: zipfile.ZipFile, name: str, path: str) -> np.ndarray:
    try:
        data = zf.read(f"arrays/{name}.npy")
    except KeyError:
        raise TraceFileError(f"{path!r} is incomplete: array {name!r} is listed but missing") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise TraceFileError(f"{path!r} is damaged: array {name!r} cannot be read ({exc})") from exc
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise TraceFileError(
            f"{path!r}: array {name!r} holds pickled Python objects or is malformed; mmviz refuses to "
            f"load it, because unpickling can run code ({exc})"
        ) from exc
    except (OSError, EOFError) as exc:
        raise TraceFileError(f"{path!r} is damaged: array {name!r} is truncated ({exc})") from exc
