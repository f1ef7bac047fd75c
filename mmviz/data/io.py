"""Reading and writing ``.mmviz`` files: a zip of ``meta.json`` and ``.npy`` arrays.

Arrays are written and read with ``allow_pickle=False``, so opening a file never runs code. Each
trace class registers itself under a type name; ``load`` dispatches on the ``type`` in
``meta.json``.

A file may come from anyone, so ``load`` reads it within a budget and checks before it inflates:

* only regular files are opened (a directory, a pipe or ``/dev/zero`` is refused);
* ``meta.json`` is at most ``MAX_META_BYTES``, nested at most ``MAX_JSON_DEPTH`` deep, and has the
  fields its trace type declares (``register_type(..., schema=...)``);
* every array's size is taken from the zip directory and its ``.npy`` header (and compared with the
  shape ``meta.json`` lists for it) before a byte is inflated; together they must fit ``max_bytes``;
* arrays are inflated in bounded chunks into an array of the size announced, never more.

Every failure is a ``TraceFileError`` naming the member and the limit, and how to raise the limit for
a trusted big file.
"""

from __future__ import annotations

import io
import json
import os
import stat
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Protocol

import numpy as np
from numpy.lib import format as npy_format

from mmviz._memory import memory_budget
from mmviz.errors import TraceFileError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_JSON_DEPTH",
    "MAX_META_BYTES",
    "ArraySpec",
    "FileSummary",
    "Saveable",
    "default_max_bytes",
    "inspect",
    "load",
    "register_type",
    "save",
]

FORMAT = "mmviz"
FORMAT_VERSION = 1

MAX_META_BYTES = 64 << 20
"""Largest ``meta.json`` (bytes, inflated) ``load`` parses; raise it for a trusted file with huge metadata."""
MAX_JSON_DEPTH = 32
"""Deepest nesting of lists and objects ``load`` accepts in ``meta.json`` (mmviz writes at most 6)."""
MAX_BYTES_ENV = "MMVIZ_MAX_FILE_BYTES"
"""Environment variable that sets the default array budget of ``load`` (bytes)."""
_CHUNK = 16 << 20
_NPY_HEADER_LIMIT = 10000

Reader = Callable[[dict[str, Any], dict[str, np.ndarray]], Any]
Describer = Callable[[dict[str, Any], dict[str, "ArraySpec"]], list[str]]
_READERS: dict[str, Reader] = {}
_SCHEMAS: dict[str, dict[str, Any]] = {}
_DESCRIBERS: dict[str, Describer] = {}


class Saveable(Protocol):
    """What a trace class provides to be saved."""

    def to_payload(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON metadata and named arrays."""
        ...


@dataclass(frozen=True)
class ArraySpec:
    """What an array member of a file holds, read from its ``.npy`` header (nothing inflated).

    Attributes:
        name: the array's name (member ``arrays/<name>.npy``).
        shape: its shape.
        dtype: its element type.
        fortran_order: whether its data is stored column-major.
        offset: bytes of ``.npy`` header before the data.
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fortran_order: bool
    offset: int

    @property
    def nbytes(self) -> int:
        """Bytes of the array once inflated."""
        count = 1
        for n in self.shape:
            count *= n
        return count * self.dtype.itemsize


@dataclass(frozen=True)
class FileSummary:
    """A ``.mmviz`` file described from its metadata and array headers (``inspect``).

    Attributes:
        path: the file.
        type: the trace type (``"attention"``, ``"attribution"``, ``"cross_attention"``, ...).
        meta: the parsed ``meta.json``.
        arrays: each array's header.
    """

    path: str
    type: str
    meta: dict[str, Any]
    arrays: dict[str, ArraySpec]

    @property
    def nbytes(self) -> int:
        """Bytes the arrays take once loaded."""
        return sum(spec.nbytes for spec in self.arrays.values())

    def lines(self) -> list[str]:
        """A few human-readable lines: the type, its contents (per type), the loaded size."""
        _registered_types()
        describe = _DESCRIBERS.get(self.type)
        body = describe(self.meta, self.arrays) if describe is not None else []
        if not body:
            body = [f"  {spec.name}: {spec.dtype} {list(spec.shape)}" for spec in self.arrays.values()]
        complete = "" if self.meta.get("complete", True) is not False else " (partial: the run was interrupted)"
        kind = getattr(getattr(_READERS.get(self.type), "__self__", None), "__name__", f"{self.type} trace")
        head = f"{self.path}: {kind}{complete}, {len(self.arrays)} arrays, {_size(self.nbytes)} once loaded"
        return [head, *body]


def register_type(
    name: str, reader: Reader, schema: dict[str, Any] | None = None, describe: Describer | None = None
) -> None:
    """Registers the reader of one trace type (called by each trace module at import).

    Args:
        name: the type name written in ``meta.json``.
        reader: builds the trace from ``(meta, arrays)``.
        schema: the fields ``meta.json`` must have, checked before any array is read. A schema is a
            Python type (``str``, ``int``, ``float``, ``bool``, ``dict``, ``list``), a one-item list
            ``[item_schema]`` (a list of such items), a dict of field name → schema (an object with
            those fields; a name ending in ``"?"`` is optional), or ``{str: value_schema}`` (an object
            whose every value follows ``value_schema``). ``None`` in a tuple of schemas allows null.
        describe: summary lines for ``mmviz info`` from ``(meta, arrays)`` without loading arrays.
    """
    _READERS[name] = reader
    if schema is not None:
        _SCHEMAS[name] = schema
    if describe is not None:
        _DESCRIBERS[name] = describe


def default_max_bytes() -> int:
    """The array budget ``load`` uses when given none.

    ``$MMVIZ_MAX_FILE_BYTES`` when set; else half the machine's memory, and at most half the address
    space the process may use (``ulimit -v``).
    """
    try:
        return memory_budget(MAX_BYTES_ENV)
    except ValueError as exc:
        raise TraceFileError(str(exc)) from None


def save(obj: Saveable, path: str | os.PathLike[str], type_name: str) -> None:
    """Writes ``obj`` to ``path`` as a ``.mmviz`` zip.

    The file is written to a temporary name and moved into place, so a failure never leaves half a file.
    ``meta.json`` lists each array's shape and dtype, which ``load`` checks against the array headers.

    Args:
        obj: a trace with ``to_payload()``.
        path: destination file.
        type_name: the registered type name stored in ``meta.json``.
    """
    meta, arrays = obj.to_payload()
    for name, array in arrays.items():
        if array.dtype.hasobject:
            raise TypeError(f"array {name!r} holds Python objects; mmviz files store plain arrays only")
    shapes = {name: {"shape": list(a.shape), "dtype": a.dtype.str} for name, a in arrays.items()}
    header = {"format": FORMAT, "version": FORMAT_VERSION, "type": type_name, "arrays": sorted(arrays), **meta}
    header["shapes"] = shapes
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


def load(path: str | os.PathLike[str], max_bytes: int | None = None) -> Any:
    """Opens a ``.mmviz`` file saved by any mmviz trace (attention, attribution, cross-attention).

    Args:
        path: the file.
        max_bytes: most bytes the arrays may take once loaded (default: ``default_max_bytes()``, half
            the machine's memory or ``$MMVIZ_MAX_FILE_BYTES``). Checked from the file's headers before
            anything is inflated.

    Returns:
        The trace object, of the class that saved it.

    Raises:
        TraceFileError: the file is not an mmviz file, is truncated or damaged, was written by a newer
            mmviz, holds pickled objects, or is bigger than the budget. Nothing in the file is executed.
    """
    limit = default_max_bytes() if max_bytes is None else int(max_bytes)
    with _open(path) as (zf, name):
        summary = _summarise(zf, name)
        total = 0
        for spec in summary.arrays.values():
            total += spec.nbytes
            if total > limit:
                raise TraceFileError(
                    f"{name!r}: array {spec.name!r} ({_size(spec.nbytes)}) brings the arrays to {_size(total)}, "
                    f"past the budget of {_size(limit)}. If you trust this file and have the memory, "
                    f"load it with mmviz.load(path, max_bytes={_round_up(summary.nbytes)}) or set "
                    f"{MAX_BYTES_ENV}."
                )
        arrays = {spec.name: _read_array(zf, spec, name) for spec in summary.arrays.values()}
    reader = _READERS[summary.type]
    try:
        return reader(summary.meta, arrays)
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise TraceFileError(f"{name!r} is damaged: its contents are inconsistent ({exc})") from exc


def inspect(path: str | os.PathLike[str]) -> FileSummary:
    """Describes a ``.mmviz`` file from its ``meta.json`` and array headers, without loading any array.

    Args:
        path: the file.

    Returns:
        A ``FileSummary`` (type, metadata, each array's shape and dtype).

    Raises:
        TraceFileError: as ``load`` (except the array budget, which ``inspect`` does not need).
    """
    with _open(path) as (zf, name):
        return _summarise(zf, name)


class _open:
    """Opens a regular file as a zip archive, turning every failure into a ``TraceFileError``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.zf: zipfile.ZipFile | None = None

    def __enter__(self) -> tuple[zipfile.ZipFile, str]:
        path = self.path
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise FileNotFoundError(f"no such file: {path!r}") from None
        except OSError as exc:
            raise TraceFileError(f"{path!r} cannot be read ({exc.strerror or exc})") from exc
        if not stat.S_ISREG(mode):
            what = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a device, pipe or socket)"
            raise TraceFileError(f"{path!r} is {what}; give the path of a .mmviz file written by trace.save(...)")
        try:
            self.zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise TraceFileError(
                f"{path!r} is not an mmviz file (not a readable zip archive: {exc}). "
                "mmviz files are written by trace.save(...); the file may be truncated or of another format."
            ) from exc
        return self.zf, path

    def __exit__(self, *exc: Any) -> None:
        if self.zf is not None:
            self.zf.close()


def _summarise(zf: zipfile.ZipFile, path: str) -> FileSummary:
    meta = _read_meta(zf, path)
    _registered_types()
    if meta["type"] not in _READERS:
        raise TraceFileError(f"{path!r} holds a trace of unknown type {meta['type']!r}; upgrade mmviz to read it")
    schema = _SCHEMAS.get(meta["type"])
    if schema is not None:
        _check(meta, schema, "meta.json", path)
    declared = meta.get("shapes")
    if declared is not None:
        _check(declared, {str: {"shape": [int], "dtype": str}}, "meta.json: shapes", path)
    arrays = {}
    for name in meta["arrays"]:
        spec = _array_spec(zf, name, path)
        if declared is not None:
            want = declared.get(name)
            if want is None or tuple(want["shape"]) != spec.shape or want["dtype"] != spec.dtype.str:
                raise TraceFileError(
                    f"{path!r} is damaged: array {name!r} holds {spec.dtype.str} {list(spec.shape)}, but meta.json "
                    f"lists {want}"
                )
        arrays[name] = spec
    return FileSummary(path, meta["type"], meta, arrays)


def _registered_types() -> None:
    if not {"attention", "attribution", "cross_attention"} <= set(_READERS):
        import mmviz.data  # noqa: F401  (registers the built-in types)


def _member(zf: zipfile.ZipFile, member: str, path: str, what: str) -> zipfile.ZipInfo:
    try:
        return zf.getinfo(member)
    except KeyError:
        raise TraceFileError(f"{path!r} is incomplete: {what} is listed but missing") from None


def _read_meta(zf: zipfile.ZipFile, path: str) -> dict[str, Any]:
    try:
        info = zf.getinfo("meta.json")
    except KeyError:
        raise TraceFileError(f"{path!r} is a zip archive but not an mmviz file (no meta.json)") from None
    if info.file_size > MAX_META_BYTES:
        raise TraceFileError(
            f"{path!r}: member 'meta.json' inflates to {_size(info.file_size)}, past the limit of "
            f"{_size(MAX_META_BYTES)} (mmviz.data.io.MAX_META_BYTES). If you trust this file, raise that limit "
            "before loading it."
        )
    with _member_stream(zf, info, path, "member 'meta.json'") as stream:
        raw = b"".join(_chunks(stream, info.file_size, path, "member 'meta.json'"))
    try:
        meta = json.loads(raw)
    except RecursionError:
        raise TraceFileError(
            f"{path!r}: meta.json is nested deeper than Python can parse; mmviz writes at most "
            f"{MAX_JSON_DEPTH} levels (mmviz.data.io.MAX_JSON_DEPTH)"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise TraceFileError(f"{path!r}: meta.json is not valid JSON ({exc})") from exc
    if _depth(meta) > MAX_JSON_DEPTH:
        raise TraceFileError(
            f"{path!r}: meta.json is nested more than {MAX_JSON_DEPTH} levels deep, the limit "
            "(mmviz.data.io.MAX_JSON_DEPTH); mmviz files nest at most 6"
        )
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TraceFileError(f"{path!r} is a zip archive but not an mmviz file (meta.json has no mmviz format tag)")
    version = meta.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise TraceFileError(
            f"{path!r} uses mmviz file format version {version!r}; this mmviz reads up to version "
            f"{FORMAT_VERSION}. Upgrade mmviz (reinstall it from a newer checkout or wheel)."
        )
    _check(meta, {"arrays": [str], "type": str, "info?": dict, "complete?": bool}, "meta.json", path)
    return meta


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level <= MAX_JSON_DEPTH:
                stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _check(value: Any, schema: Any, where: str, path: str) -> None:
    """Raises ``TraceFileError`` naming the field where ``value`` does not follow ``schema``."""
    if isinstance(schema, tuple):
        if value is None and None in schema:
            return
        (schema,) = (s for s in schema if s is not None)
    if isinstance(schema, list):
        _expect(value, list, where, path)
        for i, item in enumerate(value):
            _check(item, schema[0], f"{where}[{i}]", path)
    elif isinstance(schema, dict):
        _expect(value, dict, where, path)
        if str in schema:
            for key, item in value.items():
                _check(item, schema[str], f"{where}[{key!r}]", path)
            return
        for key, sub in schema.items():
            optional = key.endswith("?")
            field = key.rstrip("?")
            if field not in value:
                if optional:
                    continue
                raise TraceFileError(f"{path!r} is damaged: {where} has no field {field!r}")
            _check(value[field], sub, f"{where}[{field!r}]", path)
    else:
        _expect(value, schema, where, path)


_JSON_NAMES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true/false",
}


def _expect(value: Any, kind: type, where: str, path: str) -> None:
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise TraceFileError(
            f"{path!r} is damaged: {where} should be {_JSON_NAMES.get(kind, kind.__name__)}, "
            f"not {type(value).__name__} {str(value)[:40]!r}"
        )


def _array_spec(zf: zipfile.ZipFile, name: str, path: str) -> ArraySpec:
    """Reads one array's ``.npy`` header (a few hundred bytes) and checks it against the zip directory."""
    what = f"array {name!r} (member 'arrays/{name}.npy')"
    info = _member(zf, f"arrays/{name}.npy", path, what)
    with _member_stream(zf, info, path, what) as stream:
        try:
            version = npy_format.read_magic(stream)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(stream, max_header_size=_NPY_HEADER_LIMIT)
            else:
                shape, fortran, dtype = npy_format.read_array_header_2_0(stream, max_header_size=_NPY_HEADER_LIMIT)
        except (ValueError, OSError, EOFError, SyntaxError, TypeError, zipfile.BadZipFile) as exc:
            raise TraceFileError(f"{path!r}: {what} is not a plain .npy array ({exc})") from exc
        offset = int(stream.tell())
    if dtype.hasobject:
        raise TraceFileError(
            f"{path!r}: {what} holds pickled Python objects; mmviz refuses to load it, because unpickling can run code"
        )
    if any(int(n) < 0 for n in shape):
        raise TraceFileError(f"{path!r} is damaged: {what} announces a negative dimension {list(shape)}")
    spec = ArraySpec(name, tuple(int(n) for n in shape), dtype, bool(fortran), offset)
    if offset + spec.nbytes != info.file_size:
        raise TraceFileError(
            f"{path!r} is damaged: {what} announces {dtype.str} {list(spec.shape)} ({_size(spec.nbytes)}) but the "
            f"archive says it inflates to {_size(max(info.file_size - offset, 0))}"
        )
    return spec


def _read_array(zf: zipfile.ZipFile, spec: ArraySpec, path: str) -> np.ndarray:
    """Inflates one array into a buffer of the announced size, a bounded chunk at a time."""
    what = f"array {spec.name!r} (member 'arrays/{spec.name}.npy')"
    info = _member(zf, f"arrays/{spec.name}.npy", path, what)
    try:
        out = np.empty(spec.shape, dtype=spec.dtype, order="F" if spec.fortran_order else "C")
    except MemoryError:
        raise TraceFileError(
            f"{path!r}: {what} needs {_size(spec.nbytes)}, more memory than is free; load it on a bigger machine "
            "or with a smaller max_bytes= to be told early"
        ) from None
    target = out.reshape(-1, order="A").view(np.uint8) if out.size else np.empty(0, np.uint8)
    with _member_stream(zf, info, path, what) as stream:
        stream.read(spec.offset)
        done = 0
        for chunk in _chunks(stream, spec.nbytes, path, what):
            target[done : done + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
            done += len(chunk)
    return out


class _member_stream:
    """``zf.open`` with errors turned into ``TraceFileError``."""

    def __init__(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: str, what: str) -> None:
        self.args = (zf, info, path, what)
        self.stream: IO[bytes] | None = None

    def __enter__(self) -> IO[bytes]:
        zf, info, path, what = self.args
        try:
            self.stream = zf.open(info)
        except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError, RuntimeError) as exc:
            raise TraceFileError(f"{path!r} is damaged: {what} cannot be read ({exc})") from exc
        return self.stream

    def __exit__(self, *exc: Any) -> None:
        if self.stream is not None:
            self.stream.close()


def _chunks(stream: IO[bytes], size: int, path: str, what: str) -> Iterator[bytes]:
    """Yields exactly ``size`` bytes of ``stream`` in chunks of at most 16 MiB, then checks its end (CRC)."""
    left = size
    try:
        while left > 0:
            chunk = stream.read(min(left, _CHUNK))
            if not chunk:
                raise TraceFileError(f"{path!r} is damaged: {what} is truncated")
            left -= len(chunk)
            yield chunk
        stream.read(1)  # reaching the end checks the CRC
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise TraceFileError(f"{path!r} is damaged: {what} cannot be read ({exc})") from exc


def _size(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _round_up(n: int) -> str:
    """A readable budget at least ``n`` (e.g. ``8 << 30``)."""
    gib = -(-n // (1 << 30))
    return f"{gib} << 30" if gib > 0 else str(n)
