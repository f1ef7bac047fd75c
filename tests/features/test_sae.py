"""SAE files and formulas: every layout's encode/decode equals its formula written out by hand."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

import mmviz
from mmviz.errors import TraceFileError
from mmviz.features._load import sae_from_arrays
from tests.features.conftest import random_arrays, relu


def saelens_dir(tmp_path: Path, cfg: dict[str, object], arrays: dict[str, np.ndarray]) -> Path:
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 32, "d_sae": 64, **cfg}))
    save_file(arrays, str(tmp_path / "sae_weights.safetensors"))
    return tmp_path


X = np.random.default_rng(1).normal(size=(7, 32)).astype(np.float32)


def test_saelens_relu_equals_formula(tmp_path: Path) -> None:
    a = random_arrays()
    sae = mmviz.load_sae(saelens_dir(tmp_path, {"architecture": "standard"}, a))
    assert (sae.d_in, sae.d_sae, sae.activation) == (32, 64, "relu")
    f = relu((X - a["b_dec"]) @ a["W_enc"] + a["b_enc"])
    np.testing.assert_allclose(sae.encode(X), f, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sae.decode(f), f @ a["W_dec"] + a["b_dec"], rtol=1e-5, atol=1e-5)


def test_saelens_without_b_dec_on_input(tmp_path: Path) -> None:
    a = random_arrays()
    sae = mmviz.load_sae(saelens_dir(tmp_path, {"apply_b_dec_to_input": False}, a))
    np.testing.assert_allclose(sae.encode(X), relu(X @ a["W_enc"] + a["b_enc"]), rtol=1e-5, atol=1e-5)


def test_jumprelu_equals_formula(tmp_path: Path) -> None:
    a = random_arrays()
    a["threshold"] = np.abs(np.random.default_rng(2).normal(size=64)).astype(np.float32)
    sae = mmviz.load_sae(saelens_dir(tmp_path, {"architecture": "jumprelu"}, a))
    pre = (X - a["b_dec"]) @ a["W_enc"] + a["b_enc"]
    expected = np.where(pre > a["threshold"], relu(pre), 0.0)
    got = sae.encode(X)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert (got > 0).sum() < (relu(pre) > 0).sum()  # the thresholds removed some activations


@pytest.mark.parametrize(
    "cfg", [{"architecture": "topk", "k": 3}, {"activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3}}]
)
def test_topk_equals_formula(tmp_path: Path, cfg: dict[str, object]) -> None:
    a = random_arrays()
    sae = mmviz.load_sae(saelens_dir(tmp_path, cfg, a))
    assert (sae.activation, sae.k) == ("topk", 3)
    pre = (X - a["b_dec"]) @ a["W_enc"] + a["b_enc"]
    expected = np.zeros_like(pre)
    for row in range(len(pre)):
        keep = np.argsort(-pre[row])[:3]
        expected[row, keep] = relu(pre[row, keep])
    np.testing.assert_allclose(sae.encode(X), expected, rtol=1e-5, atol=1e-5)


def test_torch_in_torch_out() -> None:
    sae = sae_from_arrays(random_arrays())
    xt = torch.from_numpy(X).double()
    out = sae.encode(xt)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), sae.encode(X), rtol=1e-5, atol=1e-5)
    assert isinstance(sae.decode(out), torch.Tensor)


def dictionary_arrays(pre_name: str | None, post: bool) -> dict[str, np.ndarray]:
    a = random_arrays()
    out = {"encoder.weight": a["W_enc"].T.copy(), "encoder.bias": a["b_enc"], "decoder.weight": a["W_dec"].T.copy()}
    if pre_name:
        out[pre_name] = a["b_dec"]
    if post:
        out["decoder.bias"] = a["b_dec"] * 2
    return out


@pytest.mark.parametrize(
    ("pre_name", "post", "suffix"), [("bias", False, "npz"), ("b_dec", False, "safetensors"), (None, True, "npz")]
)
def test_dictionary_learning_layouts(tmp_path: Path, pre_name: str | None, post: bool, suffix: str) -> None:
    arrays = dictionary_arrays(pre_name, post)
    path = tmp_path / f"ae.{suffix}"
    np.savez(path, **arrays) if suffix == "npz" else save_file(arrays, str(path))
    sae = mmviz.load_sae(path)
    w_enc, w_dec = arrays["encoder.weight"].T, arrays["decoder.weight"].T
    b_pre = arrays.get(pre_name or "", np.zeros(32, np.float32))
    f = relu((X - b_pre) @ w_enc + arrays["encoder.bias"])
    np.testing.assert_allclose(sae.encode(X), f, rtol=1e-5, atol=1e-5)
    b_out = b_pre + arrays.get("decoder.bias", np.zeros(32, np.float32))
    np.testing.assert_allclose(sae.decode(f), f @ w_dec + b_out, rtol=1e-5, atol=1e-5)


def test_dictionary_topk_from_k_entry(tmp_path: Path) -> None:
    arrays = {**dictionary_arrays("b_dec", False), "k": np.asarray(4)}
    np.savez(tmp_path / "ae.npz", **arrays)
    sae = mmviz.load_sae(tmp_path)
    assert (sae.activation, sae.k) == ("topk", 4)
    assert ((sae.encode(X) > 0).sum(axis=1) <= 4).all()


# -- refusals ---------------------------------------------------------------------------------------
def test_shapes_that_disagree_are_refused(tmp_path: Path) -> None:
    a = random_arrays()
    a["W_dec"] = a["W_dec"][:, :31].copy()
    with pytest.raises(ValueError, match=r"`W_dec` must be \[d_sae, d_in\] = \[64, 32\]"):
        mmviz.load_sae(saelens_dir(tmp_path, {}, a))


def test_cfg_that_disagrees_with_weights_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 16}))
    save_file(random_arrays(), str(tmp_path / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match="d_in=16 but the weights have d_in=32"):
        mmviz.load_sae(tmp_path)


def test_wrong_input_width_is_refused() -> None:
    sae = sae_from_arrays(random_arrays())
    with pytest.raises(ValueError, match=r"`x` must be \[\.\.\., 32\], got shape \[7, 16\]"):
        sae.encode(X[:, :16])


def test_unread_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TraceFileError, match="no SAE at"):
        mmviz.load_sae(tmp_path / "missing")
    with pytest.raises(TraceFileError, match="holds no SAE weights"):
        mmviz.load_sae(tmp_path)
    (tmp_path / "ae.pt").write_bytes(b"\x80\x04")
    with pytest.raises(TraceFileError, match="never pickles"):
        mmviz.load_sae(tmp_path / "ae.pt")
    np.savez(tmp_path / "obj.npz", a=np.asarray([{"x": 1}], dtype=object))
    with pytest.raises(TraceFileError, match="object arrays are refused"):
        mmviz.load_sae(tmp_path / "obj.npz")


def test_malformed_and_oversized_safetensors_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(TraceFileError, match="header length"):
        mmviz.load_sae(bad)
    header = json.dumps({"W_enc": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 4 * 10**10]}})
    lying = tmp_path / "lying.safetensors"
    lying.write_bytes(struct.pack("<Q", len(header)) + header.encode())
    with pytest.raises(TraceFileError, match="past the file end"):
        mmviz.load_sae(lying)
    save_file(random_arrays(), str(tmp_path / "ok.safetensors"))
    with pytest.raises(TraceFileError, match="more than max_bytes=1000"):
        mmviz.load_sae(tmp_path / "ok.safetensors", max_bytes=1000)


def test_unknown_architecture_and_normalisation_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="architecture 'gated'"):
        mmviz.load_sae(saelens_dir(tmp_path, {"architecture": "gated"}, random_arrays()))
    with pytest.raises(ValueError, match="normalises its inputs"):
        mmviz.load_sae(saelens_dir(tmp_path, {"normalize_activations": "expected_average_only_in"}, random_arrays()))


def test_bfloat16_weights_are_widened(tmp_path: Path) -> None:
    from safetensors.torch import save_file as save_torch

    a = random_arrays()
    save_torch({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in a.items()}, str(tmp_path / "sae.safetensors"))
    sae = mmviz.load_sae(tmp_path)
    assert sae.W_enc.dtype == np.float32
    np.testing.assert_allclose(sae.W_enc, a["W_enc"], rtol=1e-2, atol=1e-2)
