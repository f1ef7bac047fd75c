"""PatchingTrace: normalisation, reading by site/layer/patch, and .mmviz files (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

import mmviz
from mmviz.data import PatchingTrace, TokenTable
from mmviz.data.patching import normalise_effects
from mmviz.errors import TraceFileError


def table() -> TokenTable:
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    return TokenTable.build(
        ["<bos>", "(0,0)", "(0,1)", "(1,0)", "(1,1)", " red"],
        kind=["special", "image", "image", "image", "image", "text"],
        image_index=[-1, 0, 0, 0, 0, -1],
        patch_row=[-1, 0, 0, 1, 1, -1],
        patch_col=[-1, 0, 1, 0, 1, -1],
        images=[image],
        grids=[(2, 2)],
    )


def trace() -> PatchingTrace:
    patched = np.array([[[-2.0, -1.0, 0.0], [-3.0, -2.5, -4.0]], [[-4.0, -4.0, -3.0], [-1.5, -4.0, -4.0]]])
    return PatchingTrace(
        effects=normalise_effects(patched, clean=-1.0, corrupt=-4.0),
        patched=patched,
        sites=("residual", "mlp"),
        layers=np.array([0, 2]),
        groups=(np.array([0]), np.array([1, 2]), np.array([3, 4])),
        tokens=table(),
        clean_metric=-1.0,
        corrupt_metric=-4.0,
        metric="log p(' red')",
        corruption="mask",
        info={"model": "Tiny"},
    )


def test_effects_are_zero_at_corrupt_and_one_at_clean():
    np.testing.assert_allclose(normalise_effects(np.array([-4.0, -1.0, -2.5]), -1.0, -4.0), [0, 1, 0.5])
    assert not normalise_effects(np.array([3.0, 5.0]), 2.0, 2.0).any()  # nothing separates the runs


def test_reading_by_site_layer_and_patch():
    res = trace()
    assert res.labels == ["<bos>", "img0 r0-0 c0-1", "img0 r1-1 c0-1"]
    assert res.effects[0, 0].tolist() == pytest.approx([2 / 3, 1.0, 4 / 3])
    np.testing.assert_allclose(res.position_effects("residual", 0), [2 / 3, 1, 1, 4 / 3, 4 / 3, np.nan])
    np.testing.assert_allclose(res.patch_map("mlp", 0), [[0, 0], [1 / 3, 1 / 3]])
    assert res.top(1) == [("residual", 0, "img0 r1-1 c0-1", pytest.approx(4 / 3))]
    assert res.top(1, site="mlp")[0][:3] == ("mlp", 2, "<bos>")
    assert res.layer_index(-1) == 1
    with pytest.raises(KeyError, match="layer 1 was not patched"):
        res.position_effects("residual", 1)
    with pytest.raises(KeyError, match=r"site 'head\.0' was not patched"):
        res.patch_map("head.0", 0)


def test_save_and_load_round_trip(tmp_path):
    res = trace()
    res.save(tmp_path / "p.mmviz")
    back = mmviz.load(tmp_path / "p.mmviz")
    assert isinstance(back, PatchingTrace)
    np.testing.assert_array_equal(back.effects, res.effects)
    np.testing.assert_array_equal(back.patched, res.patched)
    assert [g.tolist() for g in back.groups] == [[0], [1, 2], [3, 4]]
    assert (back.sites, back.metric, back.corruption, back.info) == (res.sites, res.metric, res.corruption, res.info)
    assert back.clean_metric == -1.0 and back.corrupt_metric == -4.0
    assert back.tokens.grids == ((2, 2),)


def test_inconsistent_traces_and_files_are_refused(tmp_path):
    res = trace()
    with pytest.raises(ValueError, match=r"\[sites, layers, columns\]"):
        PatchingTrace(res.effects[:1], res.patched, res.sites, res.layers, res.groups, res.tokens, 0.0, 1.0)
    with pytest.raises(ValueError, match="column 1"):
        PatchingTrace(res.effects, res.patched, res.sites, res.layers, (res.groups[0], np.array([9]), res.groups[2]),
                      res.tokens, 0.0, 1.0)  # fmt: skip
    import json
    import zipfile

    res.save(tmp_path / "p.mmviz")
    with zipfile.ZipFile(tmp_path / "p.mmviz") as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    meta = json.loads(files["meta.json"])
    meta["sites"] = ["residual"]
    files["meta.json"] = json.dumps(meta).encode()
    with zipfile.ZipFile(tmp_path / "bad.mmviz", "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    with pytest.raises(TraceFileError, match="damaged"):
        mmviz.load(tmp_path / "bad.mmviz")
