"""A diffusion pipeline that raises keeps its finished pipeline calls and the finished steps of the failing one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

import mmviz  # noqa: E402
from tests.capture.test_diffusion import PROMPT, build, call_args, denoiser  # noqa: E402


class Boom(Exception):
    pass


def test_failing_call_keeps_earlier_calls_and_finished_steps(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    pipe = build("sd")
    den = denoiser(pipe)
    calls: list[int] = []

    def fail_at_third_step_of_second_call(*args: Any) -> None:
        calls.append(1)
        if len(calls) == 4 + 3:  # the first call's 4 steps, then the second call's third
            raise Boom

    handle = den.register_forward_pre_hook(fail_at_third_step_of_second_call)
    try:
        with pytest.raises(Boom), mmviz.capture(pipe) as cap:
            pipe(PROMPT, **call_args("sd", steps=4))
            pipe(PROMPT, **call_args("sd", steps=4))
    finally:
        handle.remove()
    first, second = cap.traces
    assert first.complete is True and first.num_steps == 4 and first.images is not None
    assert second.complete is False and second.num_steps == 2 and second.images is None
    assert "complete=False" in repr(second)
    assert np.array_equal(second.maps(0), first.maps(0)[:2])  # same seed: the same first two steps
    path = tmp_path / "partial.mmviz"
    second.save(path)
    assert mmviz.load(path).complete is False
