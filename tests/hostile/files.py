"""Builders of hostile ``.mmviz`` files: each writes one file and names what its error must say.

A zip is written by hand where ``zipfile`` would refuse (a bomb is not inflated to write it: its
deflate stream repeats one fully flushed chunk of zeros, so a 3.5 GB member takes a few MB).
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mmviz.data import AttentionTrace, ModuleAttention, TokenTable


def small_trace() -> AttentionTrace:
    table = TokenTable.build(["<s>", " a", " b", " c"], kind=["special", "text", "text", "text"])
    dense = np.full((1, 2, 2, 4, 4), 0.25, np.float16)
    module = ModuleAttention("language_model", (0, 1), (0, 1), "text", "text", dense=dense)
    return AttentionTrace({"language_model": module}, {"text": [table]})


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _rewrite(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _with_meta(path: Path, change: Callable[[dict], object]) -> None:
    """Saves the small trace, then replaces its meta.json by ``change(meta)``."""
    small_trace().save(path)
    members = _members(path)
    meta = json.loads(members["meta.json"])
    members["meta.json"] = json.dumps(change(meta)).encode()
    _rewrite(path, members)


def _npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _deflated_zeros(n: int) -> bytes:
    """A raw deflate stream of ``n`` zero bytes (``n`` a multiple of 1 MiB), built without inflating it."""
    chunk = 1 << 20
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = packer.compress(bytes(chunk)) + packer.flush(zlib.Z_FULL_FLUSH)
    end = zlib.compressobj(9, zlib.DEFLATED, -15)
    return piece * (n // chunk) + end.compress(b"") + end.flush()


def _raw_zip(path: Path, members: list[tuple[str, bytes, int, int]]) -> None:
    """Writes a zip of ``(name, deflated data, inflated size, crc)`` members as given (sizes < 4 GiB)."""
    out = bytearray()
    central = bytearray()
    for name, data, size, crc in members:
        offset = len(out)
        encoded = name.encode()
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(data), size, len(encoded), 0)
        out += encoded + data
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,
            20,
            20,
            0,
            8,
            0,
            0,
            crc,
            len(data),
            size,
            len(encoded),
            0,
            0,
            0,
            0,
            0,
            offset,
        )
        central += encoded
    start = len(out)
    out += central
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), start, 0)
    path.write_bytes(bytes(out))


def _meta_for(arrays: dict[str, tuple[tuple[int, ...], str]]) -> bytes:
    meta = {
        "format": "mmviz",
        "version": 1,
        "type": "attribution",
        "tokens": {"prefix": "tokens", "images": 0, "grids": []},
        "method": "saliency",
        "targets": ["logit"],
        "pixel_maps": 0,
        "arrays": sorted(arrays),
        "shapes": {k: {"shape": list(s), "dtype": d} for k, (s, d) in arrays.items()},
    }
    return json.dumps(meta).encode()


def _stored(name: str, data: bytes) -> tuple[str, bytes, int, int]:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return name, packer.compress(data) + packer.flush(), len(data), zlib.crc32(data)


# -- the cases: each writes ``path`` and returns (a regex the TraceFileError must match) -----------------


def array_bomb(path: Path) -> str:
    """3.5 GB of zeros in one member, a few MB on disk; the shapes agree, only the budget stops it."""
    n = 3500 << 20
    header = _npy_header((n,))
    body = _deflated_zeros(n)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = packer.compress(header) + packer.flush(zlib.Z_FULL_FLUSH) + body
    meta = _meta_for({"scores": ((n,), "|u1")})
    _raw_zip(path, [_stored("meta.json", meta), ("arrays/scores.npy", data, len(header) + n, 0)])
    return r"'scores'.*past the budget.*max_bytes="


def meta_bomb(path: Path) -> str:
    """A meta.json that inflates to 96 MiB of spaces."""
    n = 96 << 20
    _raw_zip(path, [("meta.json", _deflated_zeros(n), n, 0)])
    return r"'meta\.json'.*MAX_META_BYTES"


def header_claims_7_tib(path: Path) -> str:
    """An .npy header announcing 7 TiB in a member of a few bytes."""
    header = _npy_header((7 << 40,))
    meta = _meta_for({"scores": ((7 << 40,), "|u1")})
    _raw_zip(path, [_stored("meta.json", meta), _stored("arrays/scores.npy", header + b"\0" * 16)])
    return r"'scores'.*7\.0 TiB"


def header_disagrees_with_meta(path: Path) -> str:
    header = _npy_header((1000,))
    meta = _meta_for({"scores": ((10,), "|u1")})
    _raw_zip(path, [_stored("meta.json", meta), _stored("arrays/scores.npy", header + bytes(1000))])
    return r"'scores'.*meta\.json lists"


def negative_dimensions(path: Path) -> str:
    """Two negative dimensions whose product (6) matches the member's size."""
    data = _npy_header((-2, -3)) + bytes(6)
    meta = _meta_for({"scores": ((-2, -3), "|u1")})
    _raw_zip(path, [_stored("meta.json", meta), _stored("arrays/scores.npy", data)])
    return r"'scores'.*negative dimension"


def huge_npy_header(path: Path) -> str:
    data = b"\x93NUMPY\x01\x00" + struct.pack("<H", 60000) + b" " * 60000
    meta = _meta_for({"scores": ((1,), "|u1")})
    _raw_zip(path, [_stored("meta.json", meta), _stored("arrays/scores.npy", data)])
    return r"'scores'.*not a plain \.npy"


def tables_as_a_list(path: Path) -> str:
    _with_meta(path, lambda m: {**m, "tables": [1, 2]})
    return r"meta\.json\['tables'\] should be an object"


def modules_without_prefix(path: Path) -> str:
    _with_meta(path, lambda m: {**m, "modules": [{k: v for k, v in m["modules"][0].items() if k != "prefix"}]})
    return r"meta\.json\['modules'\]\[0\] has no field 'prefix'"


def arrays_not_names(path: Path) -> str:
    _with_meta(path, lambda m: {**m, "arrays": {"a": 1}})
    return r"meta\.json\['arrays'\] should be a list"


def json_100000_deep(path: Path) -> str:
    small_trace().save(path)
    members = _members(path)
    members["meta.json"] = b"[" * 100000 + b"]" * 100000
    _rewrite(path, members)
    return r"meta\.json is nested"


def json_50_deep_in_info(path: Path) -> str:
    deep: object = 0
    for _ in range(50):
        deep = [deep]
    _with_meta(path, lambda m: {**m, "info": {"x": deep}})
    return r"nested more than 32 levels deep.*MAX_JSON_DEPTH"


def array_listed_but_missing(path: Path) -> str:
    small_trace().save(path)
    members = _members(path)
    del members["arrays/module0.dense.npy"]
    _rewrite(path, members)
    return r"incomplete: array 'module0\.dense'"


def layers_disagree_with_array(path: Path) -> str:
    _with_meta(path, lambda m: {**m, "modules": [{**m["modules"][0], "layers": [0, 1, 2]}]})
    return r"inconsistent.*3 layer"


def pickled_array(path: Path) -> str:
    small_trace().save(path)
    members = _members(path)
    buffer = io.BytesIO()
    np.save(buffer, np.array([print], dtype=object), allow_pickle=True)
    members["arrays/table0.0.text.npy"] = buffer.getvalue()
    meta = json.loads(members["meta.json"])
    del meta["shapes"]  # an old file, without the shapes: the header alone refuses it
    members["meta.json"] = json.dumps(meta).encode()
    _rewrite(path, members)
    return r"'table0\.0\.text'.*pickled"


def crc_mismatch(path: Path) -> str:
    data = _npy_header((16,)) + bytes(16)
    name, packed, size, _ = _stored("arrays/scores.npy", data)
    _raw_zip(path, [_stored("meta.json", _meta_for({"scores": ((16,), "|u1")})), (name, packed, size, 1234)])
    return r"'scores'.*(CRC|cannot be read)"


def a_directory(path: Path) -> str:
    path.mkdir()
    return r"is a directory"


def not_a_zip(path: Path) -> str:
    path.write_bytes(b"\0" * 1000)
    return r"not an mmviz file"


FILE_CASES: dict[str, Callable[[Path], str]] = {
    f.__name__: f
    for f in (
        array_bomb,
        meta_bomb,
        header_claims_7_tib,
        header_disagrees_with_meta,
        negative_dimensions,
        huge_npy_header,
        tables_as_a_list,
        modules_without_prefix,
        arrays_not_names,
        json_100000_deep,
        json_50_deep_in_info,
        array_listed_but_missing,
        layers_disagree_with_array,
        pickled_array,
        crc_mismatch,
        a_directory,
        not_a_zip,
    )
}
