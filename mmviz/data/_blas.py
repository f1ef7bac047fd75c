"""One BLAS thread for a block of code, for work that runs its own threads over many small products.

numpy's OpenBLAS splits every matrix product over all cores; for the ``64 × 64 · 64 × N`` products of
``QKAttention.block_means``, run from one thread per layer, that costs far more in synchronisation than it
gains (50× more CPU time on a loaded 2-core machine). The OpenBLAS library numpy loaded is found among the
process's shared libraries (Linux ``/proc/self/maps``) and its thread count set through its C API, as
``threadpoolctl`` does; where it is not found, nothing changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable, Iterator

_SYMBOLS = (
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
)
_found: list[tuple[Callable[[], int], Callable[[int], None]] | None] = []


def _openblas() -> tuple[Callable[[], int], Callable[[int], None]] | None:
    """The get/set thread-count functions of the loaded OpenBLAS, or ``None`` (looked up once)."""
    if _found:
        return _found[0]
    import numpy  # noqa: F401  (loads numpy's BLAS)

    result = None
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line})
        for path in paths:
            if not os.path.exists(path):
                continue
            lib = ctypes.CDLL(path)
            for get_name, set_name in _SYMBOLS:
                if hasattr(lib, get_name) and hasattr(lib, set_name):
                    getter, setter = getattr(lib, get_name), getattr(lib, set_name)
                    getter.restype, setter.argtypes = ctypes.c_int, [ctypes.c_int]
                    result = (getter, setter)
                    break
            if result is not None:
                break
    except OSError:
        result = None
    _found.append(result)
    return result


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Runs the block with one OpenBLAS thread, then restores the count (process-wide while it runs)."""
    api = _openblas()
    if api is None:
        yield
        return
    getter, setter = api
    before = int(getter())
    setter(1)
    try:
        yield
    finally:
        setter(before)
