from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from mmviz import _codec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_float16_round_trip():
    a = np.array([[0.25, -2.0], [1e-4, 3.0]], dtype=np.float32)
    p = _codec.encode_tensor(a, "float16")
    assert p["dtype"] == "float16" and p["shape"] == [2, 2] and len(p["data"]) == 8
    assert isinstance(p["data"], bytes)
    np.testing.assert_allclose(_codec.decode_tensor(p), a, rtol=1e-3)


def test_uint8_per_slice_keeps_small_rows_precise():
    rows = np.array([[0.0, 1e-3, 2e-3], [0.0, 0.5, 1.0]], dtype=np.float32)
    p = _codec.encode_uint8(rows, axes=1)
    assert p["dtype"] == "uint8" and len(p["data"]) == 6
    assert len(p["scale"]) == len(p["offset"]) == 2 * 4
    back = _codec.decode_tensor(p)
    np.testing.assert_allclose(back[0], rows[0], atol=1e-3 / 255)
    np.testing.assert_allclose(back[1], rows[1], atol=1 / 255)


def test_uint8_handles_constant_nan_and_empty():
    p = _codec.encode_uint8(np.array([[0.5, 0.5], [np.nan, 1.0]]), axes=1)
    back = _codec.decode_tensor(p)
    np.testing.assert_allclose(back, [[0.5, 0.5], [0.0, 1.0]], atol=1 / 255)
    assert _codec.decode_tensor(_codec.encode_uint8(np.zeros((0, 3)), axes=1)).shape == (0, 3)


def test_rejects_unknown_dtype():
    with pytest.raises(ValueError, match="wire dtype"):
        _codec.encode_tensor(np.zeros(2), "int8")


def test_payload_nbytes_counts_nested_buffers():
    p = {"a": _codec.encode_uint8(np.zeros((4, 4)), axes=1), "b": [b"xyz", memoryview(b"12")]}
    assert _codec.payload_nbytes(p) == 16 + 16 + 16 + 3 + 2


def test_golden_fixtures_are_current():
    spec = importlib.util.spec_from_file_location("make_codec_fixtures", FIXTURES / "make_codec_fixtures.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_codec_fixtures"] = module
    spec.loader.exec_module(module)
    committed = (FIXTURES / "codec_cases.json").read_text(encoding="utf-8")
    assert module.render() == committed, "run `python tests/fixtures/make_codec_fixtures.py` and commit the result"
