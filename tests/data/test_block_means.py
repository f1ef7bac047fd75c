"""Block means of attention maps (what thumbnails show): exact against the definition, computed once."""

from __future__ import annotations

import numpy as np
import pytest

from mmviz.data import AttentionTrace, ModuleAttention, TokenTable
from mmviz.data import attention as attention_module
from mmviz.data.qk import QKAttention
from tests.data.test_qk import expected

RNG = np.random.default_rng(3)


def definition(p: np.ndarray, q_step: int, k_step: int) -> np.ndarray:
    """Block means by loops, edge blocks smaller: ``[..., rows, cols]``."""
    nq, nk = p.shape[-2:]
    rows, cols = -(-nq // q_step), -(-nk // k_step)
    out = np.zeros((*p.shape[:-2], rows, cols))
    for i in range(rows):
        for j in range(cols):
            out[..., i, j] = p[..., i * q_step : (i + 1) * q_step, j * k_step : (j + 1) * k_step].mean(axis=(-1, -2))
    return out


def qk_attention(nq: int, nk: int, causal: bool = True, mask: np.ndarray | None = None, **kw: object) -> QKAttention:
    args: dict[str, object] = {
        "query": RNG.normal(size=(1, 2, 4, nq, 8)).astype(np.float32),
        "key": RNG.normal(size=(1, 2, 2, nk, 8)).astype(np.float32),
        "scaling": np.asarray([0.5, 10.0]),  # layer 1: logits past the no-max bound, so the max pass runs
        "mask": mask,
        "causal": causal,
        "head_index": np.arange(4),
        "group": 2,
    }
    args.update(kw)
    return QKAttention(**args)  # type: ignore[arg-type]


def probabilities(a: QKAttention) -> np.ndarray:
    """``[layers, heads, query, key]`` of batch item 0 from ``rows`` (itself tested against eager)."""
    _, n_layers, n_heads, nq, _ = a.shape
    return np.stack([np.stack([a.rows(0, li, hi, np.arange(nq)) for hi in range(n_heads)]) for li in range(n_layers)])


def module(a: QKAttention) -> ModuleAttention:
    return ModuleAttention("language_model", (0, 1), (0, 1, 2, 3), "text", "text", qk=a)


CASES = {
    "causal, uneven blocks": (qk_attention(150, 150), 7, 9),
    "cache longer than queries": (qk_attention(70, 200), 16, 33),
    "bidirectional": (qk_attention(130, 130, causal=False), 64, 1),
    "soft-capped": (qk_attention(90, 90, softcap=5.0), 10, 10),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_qk_block_means_equal_the_definition(case: str) -> None:
    a, q_step, k_step = CASES[case]
    p = probabilities(a)
    per_head, maxed = module(a).block_means(0, q_step, k_step, head_max=True)
    np.testing.assert_allclose(per_head, definition(p, q_step, k_step), atol=2e-6)
    assert maxed is not None
    np.testing.assert_allclose(maxed, definition(p.max(axis=1), q_step, k_step), atol=2e-6)


def test_mask_with_rows_that_see_nothing() -> None:
    nq = nk = 40
    allowed = np.tril(np.ones((nq, nk), bool))
    allowed[:5] = False  # left padding: these queries see no key, so their rows are uniform
    allowed[:, 30:35] = False
    packed = np.packbits(allowed, axis=-1)[None]
    a = qk_attention(nq, nk, causal=False, mask=packed)
    p = probabilities(a)
    np.testing.assert_allclose(p[0, 0], expected_rows(a, allowed), atol=2e-6)
    per_head, maxed = module(a).block_means(0, 6, 7, head_max=True)
    np.testing.assert_allclose(per_head, definition(p, 6, 7), atol=2e-6)
    np.testing.assert_allclose(maxed, definition(p.max(axis=1), 6, 7), atol=2e-6)


def expected_rows(a: QKAttention, allowed: np.ndarray) -> np.ndarray:
    return expected(a, lambda b, layer: allowed)[0, 0, 0]


def test_dense_module_gives_the_same_blocks() -> None:
    a, q_step, k_step = CASES["causal, uneven blocks"]
    dense = probabilities(a)[None].astype(np.float16)
    m = ModuleAttention("language_model", (0, 1), (0, 1, 2, 3), "text", "text", dense=dense)
    per_head, maxed = m.block_means(0, q_step, k_step, layers=[1], heads=[1, 3], head_max=True)
    p = dense[0, 1:2][:, [1, 3]].astype(np.float32)
    np.testing.assert_allclose(per_head, definition(p, q_step, k_step), atol=1e-6)
    np.testing.assert_allclose(maxed, definition(p.max(axis=1), q_step, k_step), atol=1e-6)


def test_computed_once_and_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    a = qk_attention(64, 64)
    table = TokenTable.build([f"t{i}" for i in range(64)])
    trace = AttentionTrace({"language_model": module(a)}, {"text": [table]})
    calls: list[list[int]] = []
    original = attention_module.qk_block_means

    def counting(qk: QKAttention, batch: int, layers: list[int], *args: object, **kw: object) -> object:
        calls.append(list(layers))
        return original(qk, batch, layers, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(attention_module, "qk_block_means", counting)
    reports: list[tuple[int, int]] = []
    first, _ = trace.module().block_means(q_step=8, k_step=8, layers=[1], progress=lambda d, t: reports.append((d, t)))
    both, _ = trace.module().block_means(q_step=8, k_step=8)  # layer 1 is reused, only layer 0 is computed
    again, maxed = trace.module().block_means(q_step=8, k_step=8, head_max=True)  # the max needs another sweep
    trace.module().block_means(q_step=8, k_step=8, head_max=True)
    trace.module().block_means(q_step=8, k_step=8)
    assert calls == [[1], [0], [0, 1]]
    assert reports[-1][0] == reports[-1][1] and len(reports) == reports[-1][1]
    np.testing.assert_array_equal(first[0], both[1])
    np.testing.assert_array_equal(again, both)
    assert maxed is not None and maxed.shape == (2, 8, 8)


def test_block_means_check_arguments() -> None:
    m = module(qk_attention(16, 16))
    with pytest.raises(ValueError, match="q_step and k_step must be at least 1"):
        m.block_means(0, 0, 4)
    with pytest.raises(KeyError, match="layer 5 was not captured"):
        m.block_means(0, 4, 4, layers=[5])
    with pytest.raises(IndexError, match="batch_index 1 is out of range"):
        m.block_means(1, 4, 4)


def test_single_threaded_blas_restores_the_thread_count() -> None:
    from mmviz.data import _blas

    api = _blas._openblas()
    if api is None:
        pytest.skip("numpy's BLAS is not OpenBLAS here")
    getter, _ = api
    before = getter()
    with _blas.single_threaded_blas():
        assert getter() == 1
    assert getter() == before
