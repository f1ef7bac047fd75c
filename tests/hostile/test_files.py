"""Hostile ``.mmviz`` files: each case is refused with a ``TraceFileError`` that names what was wrong.

All cases load in one subprocess whose address space is capped (``RLIMIT_AS``), so a regression that
inflates a bomb fails with a ``MemoryError`` here instead of swapping the machine. Add a case to
``tests/hostile/files.py`` for each new finding.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mmviz
from mmviz.data import io as mmviz_io
from mmviz.errors import TraceFileError
from tests.hostile.files import FILE_CASES, small_trace

ADDRESS_SPACE = 1536 << 20
"""The cap of the loading subprocess: numpy and mmviz fit; a 3.5 GB bomb does not."""

_RUNNER = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
import mmviz
from mmviz.errors import TraceFileError
results = {{}}
for name, path in json.loads(sys.argv[1]).items():
    try:
        mmviz.load(path)
        results[name] = ["loaded", ""]
    except TraceFileError as exc:
        results[name] = ["TraceFileError", str(exc)]
    except BaseException as exc:
        results[name] = [type(exc).__name__, str(exc)[:500]]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str, str]]:
    """Every case written, then loaded in one capped subprocess: name → (error class, message, expected)."""
    folder = tmp_path_factory.mktemp("hostile")
    paths, expected = {}, {}
    for name, build in FILE_CASES.items():
        path = folder / f"{name}.mmviz"
        expected[name] = build(path)
        paths[name] = str(path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("MMVIZ_MAX_FILE_BYTES", None)
    done = subprocess.run(
        [sys.executable, "-c", _RUNNER.format(cap=ADDRESS_SPACE), json.dumps(paths)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=Path(mmviz.__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)
    return {name: (*results[name], expected[name]) for name in FILE_CASES}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_hostile_file_is_refused_clearly(outcomes: dict[str, tuple[str, str, str]], case: str) -> None:
    kind, message, expected = outcomes[case]
    assert kind == "TraceFileError", f"{case}: {kind}: {message}"
    assert re.search(expected, message, re.S), f"{case}: {message!r} does not match {expected!r}"


def test_dev_zero_is_refused_without_reading(tmp_path: Path) -> None:
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    with pytest.raises(TraceFileError, match="not a regular file"):
        mmviz.load("/dev/zero")


def test_budget_is_named_and_can_be_raised(tmp_path: Path) -> None:
    path = tmp_path / "run.mmviz"
    small_trace().save(path)
    with pytest.raises(TraceFileError, match=r"module0\.dense.*max_bytes=.*MMVIZ_MAX_FILE_BYTES"):
        mmviz.load(path, max_bytes=64)
    assert mmviz.load(path, max_bytes=1 << 20).module().shape == (1, 2, 2, 4, 4)


def test_env_variable_sets_the_default_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run.mmviz"
    small_trace().save(path)
    monkeypatch.setenv("MMVIZ_MAX_FILE_BYTES", "100")
    assert mmviz_io.default_max_bytes() == 100
    with pytest.raises(TraceFileError, match="past the budget of 100 bytes"):
        mmviz.load(path)


def test_inspect_reads_headers_only(tmp_path: Path) -> None:
    path = tmp_path / "run.mmviz"
    small_trace().save(path)
    summary = mmviz_io.inspect(path)
    assert summary.type == "attention"
    assert summary.arrays["module0.dense"].shape == (1, 2, 2, 4, 4)
    assert summary.nbytes == sum(a.nbytes for a in small_trace().to_payload()[1].values())


def test_partial_trace_round_trips(tmp_path: Path) -> None:
    trace = small_trace()
    trace.complete = False
    path = tmp_path / "partial.mmviz"
    trace.save(path)
    back = mmviz.load(path)
    assert back.complete is False
    assert "complete=False" in repr(back)
    assert any("partial" in line for line in mmviz_io.inspect(path).lines())


def test_old_file_without_shapes_still_loads(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "old.mmviz"
    small_trace().save(path)
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    meta = json.loads(members["meta.json"])
    del meta["shapes"], meta["complete"]
    members["meta.json"] = json.dumps(meta).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    back = mmviz.load(path)
    assert back.complete is True
    assert np.array_equal(back.module().dense, small_trace().module().dense)


def test_fortran_ordered_array_is_read_in_its_order(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "run.mmviz"
    small_trace().save(path)
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    dense = np.asfortranarray(np.arange(64, dtype=np.float16).reshape(1, 2, 2, 4, 4))
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, dense)
    members["arrays/module0.dense.npy"] = buffer.getvalue()
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    assert np.array_equal(mmviz.load(path).module().dense, dense)
