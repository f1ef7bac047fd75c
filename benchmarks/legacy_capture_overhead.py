"""What capturing a model with attention modules of its own costs, against eager ``output_attentions=True``.

For BLOOM (decoder) and DeBERTa-v2 (encoder), random and small enough for a CPU, the script times one
forward call three ways, interleaved, and prints the median of each and the ratio to the baseline:

* baseline: the model called with ``output_attentions=True`` (what a user does by hand today);
* plain: the model called without attentions (what it costs not to look);
* capture: ``with mmviz.capture(model): model(...)`` (hooks, the float16 copy to the trace; the trace
  itself is built lazily and not timed).

Run: ``python benchmarks/legacy_capture_overhead.py [--repeats 7] [--length 256]``. One CPU thread.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mmviz


def models() -> dict[str, Any]:
    import transformers

    torch.manual_seed(0)
    bloom = transformers.BloomModel(transformers.BloomConfig(hidden_size=256, n_layer=4, n_head=8, vocab_size=512))
    deberta = transformers.DebertaV2Model(
        transformers.DebertaV2Config(
            hidden_size=256, num_hidden_layers=4, num_attention_heads=8, intermediate_size=512, vocab_size=512
        )
    )
    return {"BLOOM": bloom.eval(), "DeBERTa-v2": deberta.eval()}


def timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--length", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ids = torch.randint(5, 500, (1, args.length), generator=torch.Generator().manual_seed(0))

    for name, model in models().items():

        def baseline(model: Any = model) -> Any:
            return model(input_ids=ids, output_attentions=True)

        def plain(model: Any = model) -> Any:
            return model(input_ids=ids)

        def captured(model: Any = model) -> Any:
            with mmviz.capture(model):
                return model(input_ids=ids)

        ways = {"baseline": baseline, "plain": plain, "capture": captured}
        seconds: dict[str, list[float]] = {k: [] for k in ways}
        with torch.no_grad():
            for way in ways.values():  # warm-up
                way()
            for _ in range(args.repeats):
                for key, way in ways.items():  # interleaved
                    seconds[key].append(timed(way))
        base = statistics.median(seconds["baseline"])
        print(f"{name} ({args.length} tokens)")
        for key in ways:
            median = statistics.median(seconds[key])
            print(f"  {key:9s} {median * 1e3:8.1f} ms   × {median / base:.2f} of baseline")


if __name__ == "__main__":
    main()
