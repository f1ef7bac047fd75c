from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

import mmviz
from mmviz.errors import TraceFileError


def test_round_trip(trace, tmp_path):
    path = tmp_path / "run.mmviz"
    trace.save(path)
    back = mmviz.load(path)
    assert isinstance(back, mmviz.AttentionTrace)
    assert np.array_equal(back.module().dense, trace.module().dense)
    assert back.info == trace.info
    for a, b in zip(back.tables["text"], trace.tables["text"]):
        for field in ("text", "kind", "word_id", "image_index", "patch_row", "patch_col", "token_id", "generated"):
            assert np.array_equal(getattr(a, field), getattr(b, field))
        assert np.array_equal(a.images[0], b.images[0])
        assert a.grids == b.grids


def test_foreign_file_is_refused(tmp_path):
    path = tmp_path / "notes.mmviz"
    path.write_text("hello")
    with pytest.raises(TraceFileError, match="not an mmviz file"):
        mmviz.load(path)


def test_foreign_zip_is_refused(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(TraceFileError, match=r"no meta\.json"):
        mmviz.load(path)


def test_truncated_file_is_refused(trace, tmp_path):
    path = tmp_path / "run.mmviz"
    trace.save(path)
    data = path.read_bytes()
    cut = tmp_path / "cut.mmviz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(TraceFileError):
        mmviz.load(cut)


def test_newer_format_is_refused(trace, tmp_path):
    path = tmp_path / "new.mmviz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("meta.json", json.dumps({"format": "mmviz", "version": 99, "type": "attention", "arrays": []}))
    with pytest.raises(TraceFileError, match=r"version 99"):
        mmviz.load(path)


class Boom:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_pickle_bearing_file_is_refused_and_runs_nothing(trace, tmp_path, capsys):
    path = tmp_path / "run.mmviz"
    trace.save(path)
    evil = tmp_path / "evil.mmviz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("table0.0.text.npy"):
                buf = io.BytesIO()
                np.save(buf, np.array([Boom()], dtype=object), allow_pickle=True)
                data = buf.getvalue()
            dst.writestr(item, data)
    with pytest.raises(TraceFileError, match="pickled"):
        mmviz.load(evil)
    assert "pickle code ran" not in capsys.readouterr().out


def test_missing_array_is_reported(trace, tmp_path):
    path = tmp_path / "run.mmviz"
    trace.save(path)
    broken = tmp_path / "broken.mmviz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(broken, "w") as dst:
        for item in src.infolist():
            if not item.filename.endswith("module0.dense.npy"):
                dst.writestr(item, src.read(item.filename))
    with pytest.raises(TraceFileError, match="missing"):
        mmviz.load(broken)


def test_save_failure_leaves_no_partial_file(trace, tmp_path):
    path = tmp_path / "run.mmviz"
    trace.module().dense = np.array([object()] * 1, dtype=object).reshape(1, 1, 1, 1, 1)
    with pytest.raises(TypeError):
        trace.save(path)
    assert not any(tmp_path.iterdir())


def test_missing_file_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        mmviz.load(tmp_path / "nope.mmviz")
