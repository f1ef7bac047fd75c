"""The pieces of one ``features`` run: token tables of the run, and the top-k accumulator.

The accumulator encodes a site's activations a chunk of positions at a time, so the dense ``[chunk, d_sae]``
activations never exceed ``CHUNK_BYTES``; what it keeps is ``O(positions × k)`` plus ``O(d_sae)`` statistics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from mmviz.data.features import FeatureTrace
from mmviz.data.tokens import TokenTable
from mmviz.features._sae import SAE

__all__ = [
    "CHUNK_BYTES",
    "Accumulator",
    "SiteReached",
    "on_device",
    "stop_after",
    "table_of_row",
]

CHUNK_BYTES = 64 * 2**20
"""Bytes of dense ``[positions, d_sae]`` activations encoded at once."""


def on_device(batch: Mapping[str, Any], model: Any) -> dict[str, Any]:
    """``batch`` with its tensors on the model's device."""
    device = getattr(model, "device", None)
    return {
        k: v.to(device) if device is not None and hasattr(v, "to") and hasattr(v, "device") else v
        for k, v in batch.items()
    }


class SiteReached(Exception):
    """Raised by ``stop_after``'s hook once the site's block has run: the rest of the forward is not needed."""


class _Stopper:
    def run(self, model: Any, batch: Mapping[str, Any]) -> None:
        """Runs ``model(**batch)`` in evaluation mode (no dropout) up to the block; the mode restored after."""
        training = bool(getattr(model, "training", False))
        model.eval()
        try:
            with contextlib.suppress(SiteReached):
                model(**batch)
        finally:
            model.train(training)


@contextlib.contextmanager
def stop_after(block: Any) -> Iterator[_Stopper]:
    """Ends the model's forward right after ``block`` (registered after the recording hook, so it runs last).

    Nothing after the site changes what is recorded there; skipping it saves the later blocks and the output
    head (for a language model's vocabulary, often the largest single matrix product).
    """

    def hook(module: Any, args: Any, output: Any) -> None:
        raise SiteReached

    handle = block.register_forward_hook(hook)
    try:
        yield _Stopper()
    finally:
        handle.remove()


def table_of_row(
    tables: list[TokenTable], row: int, length: int, batch: Mapping[str, Any], processor: Any
) -> TokenTable:
    """The table of batch row ``row``: from capture when it fits, else from the input ids, else positions."""
    from mmviz._hf.tokens import position_table, text_table, tokenizer_of

    if row < len(tables) and len(tables[row]) == length:
        return tables[row]
    ids = batch.get("input_ids")
    if ids is not None and ids.ndim == 2 and ids.shape[1] == length and row < ids.shape[0]:
        mask = batch.get("attention_mask")
        tokenizer = tokenizer_of(processor) if processor is not None else None
        return text_table(ids[row].cpu(), None if mask is None else mask[row].cpu(), tokenizer)
    return position_table(length)


class Accumulator:
    """Encodes activations row by row and keeps the top ``k`` features of each position.

    Args:
        sae: the autoencoder.
        k: features kept per position.
        named: features whose activation is kept at every position.
    """

    def __init__(self, sae: SAE, k: int, named: np.ndarray) -> None:
        self.sae, self.k, self.named = sae, k, named
        self.parts: dict[str, list[np.ndarray]] = {n: [] for n in ("item", "feat", "act", "err", "norm", "named")}
        self.tables: list[TokenTable] = []
        self.feature_max = np.zeros(sae.d_sae, np.float32)
        self.feature_count = np.zeros(sae.d_sae, np.int64)
        self.chunk = max(1, CHUNK_BYTES // (4 * sae.d_sae))

    def add(self, hidden: Any, table: TokenTable) -> None:
        """Encodes one item's ``[positions, d_in]`` activations (a torch tensor)."""
        import torch

        item = len(self.tables)
        self.tables.append(table)
        x_all = hidden.float()
        named = torch.from_numpy(self.named).to(x_all.device)
        peak = torch.zeros(self.sae.d_sae, device=x_all.device)
        count = torch.zeros(self.sae.d_sae, dtype=torch.int64, device=x_all.device)
        for start in range(0, x_all.shape[0], self.chunk):
            x = x_all[start : start + self.chunk]
            f = self.sae.encode(x)
            err = torch.linalg.vector_norm(x - self.sae.decode(f), dim=-1)
            top = torch.topk(f, self.k, dim=-1)
            active = top.values > 0
            feats = torch.where(active, top.indices, torch.full_like(top.indices, -1))
            self._keep(item, x.shape[0], feats, torch.where(active, top.values, 0.0), err, x, f[:, named])
            peak = torch.maximum(peak, f.amax(dim=0))
            count += torch.count_nonzero(f, dim=0)  # activations are never negative
        self.feature_max = np.maximum(self.feature_max, peak.cpu().numpy())
        self.feature_count += count.cpu().numpy()

    def _keep(self, item: int, n: int, feats: Any, acts: Any, err: Any, x: Any, named: Any) -> None:
        import torch

        self.parts["item"].append(np.full(n, item, np.int32))
        self.parts["feat"].append(feats.to(torch.int32).cpu().numpy())
        self.parts["act"].append(acts.cpu().numpy())
        self.parts["err"].append(err.cpu().numpy())
        self.parts["norm"].append(torch.linalg.vector_norm(x, dim=-1).cpu().numpy())
        self.parts["named"].append(named.cpu().numpy())

    def trace(self, site: str) -> FeatureTrace:
        """The ``FeatureTrace`` of everything added."""
        tokens = self.tables[0]
        for table in self.tables[1:]:
            tokens = tokens.concat(table)
        cat = {name: np.concatenate(chunks) for name, chunks in self.parts.items()}
        sae = self.sae
        exact = sae.activation == "topk" and sae.k is not None and sae.k <= self.k
        return FeatureTrace(
            tokens=tokens,
            item=cat["item"],
            top_features=cat["feat"],
            top_activations=cat["act"].astype(np.float32),
            reconstruction_error=cat["err"].astype(np.float32),
            norms=cat["norm"].astype(np.float32),
            named=self.named.astype(np.int64),
            named_activations=cat["named"].astype(np.float32).reshape(len(tokens), len(self.named)),
            feature_max=self.feature_max,
            feature_count=self.feature_count,
            site=site,
            info={
                "d_in": sae.d_in,
                "d_sae": sae.d_sae,
                "activation": sae.activation,
                "sae_k": sae.k,
                "source": sae.source,
                "exact_topk": bool(exact),
            },
        )
