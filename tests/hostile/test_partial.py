"""An interrupted or failing run keeps what it recorded, marked ``complete=False`` (also in files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import mmviz  # noqa: E402
from tests.capture.conftest import make_llama  # noqa: E402


@pytest.fixture(scope="module")
def llama() -> Any:
    torch.set_num_threads(1)
    return make_llama()


class Stop(Exception):
    pass


def test_forward_that_raises_keeps_its_recorded_layers(llama: Any, tmp_path: Path) -> None:
    ids = torch.tensor([[2, 5, 6, 7, 8]])
    with torch.no_grad(), mmviz.capture(llama) as full:
        llama(input_ids=ids)

    def boom(*args: Any) -> None:
        raise Stop

    handle = llama.model.layers[1].mlp.register_forward_pre_hook(boom)
    try:
        with pytest.raises(Stop), torch.no_grad(), mmviz.capture(llama) as cap:
            llama(input_ids=ids)
    finally:
        handle.remove()
    trace = cap.attention
    assert trace.complete is False
    assert trace.module().layers == (0, 1)  # layer 1's attention ran before its MLP raised
    assert np.array_equal(trace.probs(layers=[0]), full.attention.probs(layers=[0]))
    assert full.attention.complete is True
    path = tmp_path / "partial.mmviz"
    trace.save(path)
    assert mmviz.load(path).complete is False


def test_error_after_the_forward_leaves_the_trace_complete(llama: Any) -> None:
    ids = torch.tensor([[2, 5, 6, 7]])
    with pytest.raises(Stop), torch.no_grad(), mmviz.capture(llama) as cap:
        llama(input_ids=ids)
        raise Stop
    assert cap.attention.complete is True


def test_interrupted_generation_keeps_its_steps(llama: Any) -> None:
    from transformers import LogitsProcessor, LogitsProcessorList

    class InterruptAtStep(LogitsProcessor):
        def __init__(self) -> None:
            self.calls = 0

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            self.calls += 1
            if self.calls == 3:
                raise KeyboardInterrupt
            return scores

    ids = torch.tensor([[2, 5, 6, 7]])
    with pytest.raises(KeyboardInterrupt), torch.no_grad(), mmviz.capture(llama) as cap:
        llama.generate(
            input_ids=ids, max_new_tokens=6, do_sample=False, logits_processor=LogitsProcessorList([InterruptAtStep()])
        )
    trace = cap.attention
    assert trace.complete is False
    _, _, _, queries, keys = trace.module().shape
    assert queries == keys == len(trace.tokens())
    assert queries >= 4
    rows = trace.probs()[:, :, :queries].sum(-1)
    assert np.allclose(rows, 1.0, atol=1e-2)
    assert llama.config._attn_implementation_internal != "mmviz_record"
