"""Threads and overlapping captures: a capture records the calls of the thread that opened it; others run
unrecorded; captures closed out of order still restore the model."""

from __future__ import annotations

import contextvars
import threading
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import mmviz  # noqa: E402
from mmviz.errors import CaptureError  # noqa: E402
from tests.capture.conftest import make_llama  # noqa: E402

IDS = torch.tensor([[2, 5, 6, 7, 8, 9]])


@pytest.fixture(scope="module")
def llama() -> Any:
    torch.set_num_threads(1)
    return make_llama()


def _in_thread(fn: Any, inherit_context: bool = False) -> Any:
    result: dict[str, Any] = {}

    def work() -> None:
        result["out"] = fn()

    target = (lambda: contextvars.copy_context().run(work)) if inherit_context else work
    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    return result["out"]


def _restored(model: Any, implementation: Any) -> bool:
    return model.config._attn_implementation_internal == implementation and "generate" not in vars(model)


def test_model_run_only_in_a_worker_thread_is_explained(llama: Any) -> None:
    implementation = llama.config._attn_implementation_internal
    with pytest.raises(CaptureError, match=r"in another thread than the one that opened the capture"):
        with torch.no_grad(), mmviz.capture(llama):
            _in_thread(lambda: llama(input_ids=IDS))
    assert _restored(llama, implementation)


@pytest.mark.parametrize("inherit_context", [False, True], ids=["plain thread", "copied context"])
def test_other_thread_during_a_captured_forward_runs_unrecorded(llama: Any, inherit_context: bool) -> None:
    with torch.no_grad():
        reference = llama(input_ids=IDS).logits
    outputs: list[Any] = []
    started: list[int] = []

    def run_elsewhere(*args: Any) -> None:
        if threading.get_ident() == main and not started:  # the worker's own forward passes here too
            started.append(1)
            outputs.append(_in_thread(lambda: llama(input_ids=IDS).logits, inherit_context))

    main = threading.get_ident()

    handle = llama.model.layers[0].mlp.register_forward_pre_hook(run_elsewhere)
    try:
        with torch.no_grad(), mmviz.capture(llama) as cap:
            llama(input_ids=IDS)
    finally:
        handle.remove()
    assert len(cap.traces) == 1
    assert cap.attention.module().layers == (0, 1)
    assert cap.attention.complete is True
    torch.testing.assert_close(outputs[0], reference, atol=1e-5, rtol=1e-4)


def test_captures_closed_out_of_order_restore_the_model(llama: Any) -> None:
    implementation = llama.config._attn_implementation_internal
    outer, inner = mmviz.capture(llama), mmviz.capture(llama, layers=[1])
    with torch.no_grad():
        outer.__enter__()
        inner.__enter__()
        llama(input_ids=IDS)
        outer.__exit__(None, None, None)  # closed first, though opened first
        assert llama.config._attn_implementation_internal == "mmviz_record"  # inner is still open
        llama(input_ids=IDS)
        llama.generate(input_ids=IDS, max_new_tokens=2, do_sample=False)
        inner.__exit__(None, None, None)
    assert _restored(llama, implementation)
    assert len(outer.traces) == 1  # it recorded nothing after it closed
    assert [t.module().layers for t in inner.traces] == [(1,), (1,), (1,)]
    with torch.no_grad(), mmviz.capture(llama) as again:  # and a later capture works as usual
        llama(input_ids=IDS)
    assert again.attention.module().layers == (0, 1)
    assert _restored(llama, implementation)
