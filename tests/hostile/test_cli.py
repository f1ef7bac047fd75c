"""Careless command lines: each ends in one ``mmviz: error: …`` line and exit status 2, input untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmviz.cli import main
from tests.hostile.files import small_trace

# (arguments after "export <trace>", or a whole command line with {trace}; regex the error line must match)
CASES = [
    (["--out", "{tmp}/a.png", "--layer", "99"], r"layer 99 was not captured.*captured: \[0, 1\]"),
    (["--out", "{tmp}/a.png", "--head", "7"], r"head 7 was not captured"),
    (["--out", "{tmp}/a.png", "--batch-index", "5"], r"batch_index 5 is out of range.*1 item"),
    (["--out", "{tmp}/a.png", "--batch-index", "-1"], r"--batch-index -1 is negative"),
    (["--out", "{tmp}/a.png", "--cmap", "jet"], r"--cmap 'jet' is not one of.*viridis"),
    (["--out", "{tmp}", "--layer", "0"], r"cannot write .*give a path ending in"),
    (["--out", "{tmp}/folder.png"], r"--out .*folder\.png' is a directory"),
    (["--out", "{tmp}/a.png", "--dpi", "1e5"], r"--dpi 100000 is out of range; give 10 to 1200"),
    (["--out", "{tmp}/a.png", "--dpi", "lots"], r"argument --dpi: invalid float value"),
    (["--out", "{tmp}/a.png", "--module", "vision"], r"no module 'vision'.*language_model"),
    (["--out", "{tmp}/missing/a.png"], r"the folder .*missing' does not exist"),
    (["--out", "{tmp}/a.png", "--aggregate", "median"], r"invalid choice: 'median'"),
    (["--out", "{trace_as_png}"], r"is the input file"),
    (["--layer", "0"], r"the following arguments are required: --out"),
]


@pytest.mark.parametrize(("args", "expected"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_export_mistake_is_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    import re

    trace = tmp_path / "run.mmviz"
    small_trace().save(trace)
    (tmp_path / "folder.png").mkdir()
    as_png = tmp_path / "run.png"  # an input that happens to have the output's extension
    as_png.write_bytes(trace.read_bytes())
    source = as_png if "{trace_as_png}" in args else trace
    before = source.read_bytes()
    filled = [a.format(tmp=tmp_path, trace_as_png=as_png) for a in args]
    assert main(["export", str(source), *filled]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmviz: error: "), err
    assert re.search(expected, lines[0]), lines[0]
    assert source.read_bytes() == before


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["info", "{tmp}"], r"is a directory"),
        (["info", "{tmp}/nothing.mmviz"], r"no such file"),
        (["info", "/dev/zero"], r"not a regular file"),
        (["inflate", "x"], r"invalid choice: 'inflate'"),
    ],
)
def test_info_mistake_is_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], expected: str
) -> None:
    import re

    assert main([c.format(tmp=tmp_path) for c in command]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and re.search(expected, lines[0]), lines


def test_info_reads_no_array(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mmviz.data import io

    path = tmp_path / "run.mmviz"
    small_trace().save(path)

    def no_arrays(*args: object) -> None:
        raise AssertionError("info inflated an array")

    monkeypatch.setattr(io, "_read_array", no_arrays)
    assert main(["info", str(path)]) == 0
    assert "language_model: 2 layers × 2 heads, 4×4 (dense), batch 1" in capsys.readouterr().out
