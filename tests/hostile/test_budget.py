"""A dense capture past its budget is refused before the model runs, naming store="qk", layers= and heads=."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import mmviz  # noqa: E402
from mmviz.capture import _budget  # noqa: E402
from mmviz.capture._arguments import DenseEstimate  # noqa: E402
from mmviz.errors import BudgetError  # noqa: E402
from tests.capture.conftest import make_llama  # noqa: E402

KNOBS = r"store=\"qk\".*layers=\[\.\.\.\].*heads=\[\.\.\.\].*max_bytes="


@pytest.fixture(scope="module")
def llama() -> Any:
    torch.set_num_threads(1)
    return make_llama()


def _counting(model: Any) -> list[int]:
    calls: list[int] = []
    model.model.embed_tokens.register_forward_hook(lambda *a: calls.append(1))
    return calls


def test_dense_store_past_the_budget_is_refused_before_the_forward(llama: Any) -> None:
    ids = torch.randint(5, 18, (1, 48))
    dense = 2 * 2 * 4 * 48 * 48  # layers × heads × N² float16
    calls = _counting(llama)
    implementation = llama.config._attn_implementation_internal
    with pytest.raises(BudgetError, match=r"before the forward: .*2 layer\(s\) × 4 head\(s\) over 48 tokens.*" + KNOBS):
        with mmviz.capture(llama, store="dense", max_bytes=dense - 1):
            llama(input_ids=ids)
    assert calls == []
    assert llama.config._attn_implementation_internal == implementation
    with torch.no_grad(), mmviz.capture(llama, store="dense", max_bytes=dense) as cap:
        llama(input_ids=ids)
    assert cap.attention.module().dense.nbytes == dense


def test_fewer_heads_fit_the_same_budget(llama: Any) -> None:
    ids = torch.randint(5, 18, (1, 48))
    with torch.no_grad(), mmviz.capture(llama, store="dense", heads=[0], layers=[1], max_bytes=2 * 48 * 48) as cap:
        llama(input_ids=ids)
    assert cap.attention.module().shape == (1, 1, 1, 48, 48)


def test_qk_store_is_not_charged(llama: Any) -> None:
    ids = torch.randint(5, 18, (1, 48))
    with torch.no_grad(), mmviz.capture(llama, store="qk", max_bytes=1) as cap:
        llama(input_ids=ids)
    assert cap.attention.module().store == "qk"


def test_generation_is_refused_from_prompt_plus_new_tokens(llama: Any) -> None:
    ids = torch.randint(5, 18, (1, 4))
    calls = _counting(llama)
    with pytest.raises(BudgetError, match=r"before generate: .*over 204 tokens"):
        with mmviz.capture(llama, store="dense", max_bytes=2 * 2 * 4 * 100 * 100):
            llama.generate(input_ids=ids, max_new_tokens=200, do_sample=False)
    assert calls == []


def test_a_store_the_estimate_missed_is_refused_before_it_is_allocated(
    llama: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(DenseEstimate, "bytes", lambda self, *a: None)  # as for a stack fed by pixels
    ids = torch.randint(5, 18, (1, 48))
    with pytest.raises(BudgetError, match=r"recording 'language_model' layer 0: .*" + KNOBS):
        with torch.no_grad(), mmviz.capture(llama, store="dense", max_bytes=1000):
            llama(input_ids=ids)
    out = llama(input_ids=ids)  # the model is back to its own attention
    assert out.logits.shape == (1, 48, 64)


def test_default_budget_follows_memory_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_budget.MAX_BYTES_ENV, raising=False)
    assert _budget.default_max_bytes() > 1 << 20
    monkeypatch.setenv(_budget.MAX_BYTES_ENV, "12345")
    assert _budget.Budget(None).max_bytes == 12345
    with pytest.raises(ValueError, match="max_bytes must be a positive number"):
        _budget.Budget(0)
