"""Per-head fingerprints for the head atlas: what one forward pass says about every head, one layer at a time.

A fingerprint of a document holds, per layer and head, the means over its query rows of the engine's statistics
(entropy, entropy / log(visible keys), max weight, weight on the first token, the learned sink's mass where the model
has one, mean distance) and the **previous-token score**: the mean weight a row puts on the key one position back.
The **induction score** is the mean weight that rows of the second copy of a repeated random token sequence put on
the key just after their token's previous occurrence (period P: the key P - 1 positions back), the pattern induction
heads complete (Olsson et al. 2022; TransformerLens's detector measures the same): a property of the model, measured
once on random tokens, not per document.

Both scores come from the same streaming pass as the statistics (attnscope.engine.run's on_layer; no layer's q/k/v
is kept): the weight on the key `offset` positions back is exp(s - lse) with s that key's logit (the layer's scale, its
softcap) and lse the row's log-normaliser from kernels.attention_stats (learned sinks included), over the rows that
see that key under the layer's rule (a sliding window narrower than the offset hides it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from attnscope import kernels
from attnscope.capture import LayerCapture

STATISTICS = ("entropy", "normalized_entropy", "max_weight", "sink_mass", "mean_distance")
PREVIOUS_TOKEN = "previous_token"
INDUCTION = "induction"
INDUCTION_PERIOD = 64  # random tokens per copy: long enough that chance hits are rare, short enough to be quick


def offset_weights(layer: LayerCapture, lse: torch.Tensor, offset: int, rows: slice | None = None) -> torch.Tensor:
    """(Hq,) mean over the query rows `rows` (default all) of the first sequence of the weight on the key `offset`
    positions back, over the rows that see it; NaN for a head with no such row. lse: (B, Hq, T) from the kernel."""
    n_queries, n_keys = layer.q.shape[2], layer.k.shape[2]
    rows = rows or slice(0, n_queries)
    first = rows.start + n_keys - n_queries  # key position of the first row
    positions = torch.arange(first, first + (rows.stop - rows.start))  # key positions of the rows
    targets = positions - offset
    usable = targets >= 0
    visible = layer.visible(rows)[0].to("cpu")  # (Hq or 1, t, S)
    seen = visible[..., torch.arange(len(positions)), targets.clamp(min=0)] & usable  # (Hq or 1, t)
    q = layer.q[0, :, rows].float()  # (Hq, t, D)
    k = layer.k[0][[layer.kv_head(h) for h in range(layer.n_heads)]].float()  # (Hq, S, D)
    logits = (q * k[:, targets.clamp(min=0).to(k.device)]).sum(-1) * layer.scale  # (Hq, t)
    if layer.softcap is not None:
        logits = layer.softcap * torch.tanh(logits / layer.softcap)
    weights = torch.exp(logits - lse[0, :, rows].float()).cpu().masked_fill(~seen, 0.0)
    counts = seen.expand_as(weights).sum(-1)
    return torch.where(counts > 0, weights.sum(-1) / counts.clamp(min=1), float("nan"))


def _run(model: torch.nn.Module, input_ids: torch.Tensor, offset: int, rows: slice | None):
    """engine.run (the statistics, the layers' outputs) with each layer's weight on the key `offset` back, measured
    from the same pass: (the EngineRun, layer index -> (Hq,) scores)."""
    from attnscope import engine

    scores: dict[int, torch.Tensor] = {}

    def measure(index: int, layer: LayerCapture, stats: kernels.AttentionStats) -> None:
        scores[index] = offset_weights(layer, stats.lse, offset, rows)

    return engine.run(model, input_ids, on_layer=measure), scores


def document_fingerprint(model: torch.nn.Module, input_ids: torch.Tensor) -> dict[str, np.ndarray]:
    """Name -> (layers, heads) float32 for one document (1, T): STATISTICS, the learned sink's mass when the model
    has learned sinks, and PREVIOUS_TOKEN."""
    run, scores = _run(model, input_ids, 1, None)
    layers = sorted(run.head_stats)
    out = {name: run.stacked(name).numpy() for name in STATISTICS}
    if run.has_learned_sinks:
        out["learned_sink_mass"] = run.stacked("learned_sink_mass").numpy()
    out[PREVIOUS_TOKEN] = np.stack([scores[i].numpy() for i in layers]).astype(np.float32)
    return out


def repeated_tokens(vocab_size: int, *, period: int = INDUCTION_PERIOD, seed: int = 0, start: Sequence[int] = (),
                    avoid: Sequence[int] = ()) -> torch.Tensor:
    """(1, len(start) + 2 period) ids: `start` (e.g. the tokenizer's start token), then `period` random ids (none
    of `avoid`, e.g. special tokens) twice."""
    generator = torch.Generator().manual_seed(seed)
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[list(avoid)] = False
    pool = torch.nonzero(allowed).squeeze(1)
    half = pool[torch.randint(0, len(pool), (period,), generator=generator)]
    return torch.cat([torch.tensor(list(start), dtype=torch.long), half, half])[None]


def induction_scores(model: torch.nn.Module, input_ids: torch.Tensor, *, period: int) -> np.ndarray:
    """(layers, heads) induction score on repeated tokens `input_ids` (its last 2 `period` ids are the two copies):
    the mean weight rows of the second copy put on the key period - 1 positions back."""
    n_tokens = input_ids.shape[1]
    _, scores = _run(model, input_ids, period - 1, slice(n_tokens - period, n_tokens))
    return np.stack([scores[i].numpy() for i in sorted(scores)]).astype(np.float32)
