"""Per-head fingerprints for the head atlas: what one forward pass says about every head, one layer at a time.

A fingerprint of a document holds, per layer and head, the means over its query rows of the engine's statistics
(entropy, entropy / log(visible keys), max weight, weight on the first token, the learned sink's mass where the model
has one, mean distance) and the **previous-token score**: the mean weight a row puts on the key one position back.
The **induction score** is the mean weight that rows of the second copy of a repeated random token sequence put on
the key just after their token's previous occurrence (period P: the key P - 1 positions back), the pattern induction
heads complete (Olsson et al. 2022; TransformerLens's detector measures the same): a property of the model, measured
once on random tokens, not per document.

Both scores come from the same streaming pass as the statistics (attnscope.capture.streaming; no layer's q/k/v is
kept): the weight on the key `offset` positions back is exp(s - lse) with s that key's logit (the layer's scale, its
softcap) and lse the row's log-normaliser from kernels.attention_stats (learned sinks included), over the rows that
see that key under the layer's rule (a sliding window narrower than the offset hides it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from attnscope import kernels
from attnscope.analyses import maps
from attnscope.capture import LayerCapture, input_device, no_attention_message, streaming

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


class _Fingerprinter:
    """The streaming consumer: each layer's output and row statistics from one kernel call, reduced to head means
    and the weight on the key `offset` positions back (over `rows`)."""

    def __init__(self, offset: int, rows: slice | None):
        self.offset, self.rows = offset, rows
        self.heads: dict[int, maps.HeadStats] = {}
        self.scores: dict[int, torch.Tensor] = {}

    def __call__(self, index: int, layer: LayerCapture) -> torch.Tensor:
        stats = kernels.attention_stats(layer.q, layer.k, layer.v, scale=layer.scale, argmax=False, **layer.rule())
        self.heads[index] = maps.summarise(stats, maps.visible_keys(layer))
        self.scores[index] = offset_weights(layer, stats.lse, self.offset, self.rows)
        return stats.output


@torch.no_grad()
def _run(model: torch.nn.Module, input_ids: torch.Tensor, offset: int, rows: slice | None) -> _Fingerprinter:
    consumer = _Fingerprinter(offset, rows)
    options = {"use_cache": False} if getattr(model.config, "use_cache", None) is not None else {}
    with streaming(consumer):
        model(input_ids=input_ids.to(input_device(model)), **options)
    if not consumer.heads:
        raise ValueError(no_attention_message(model, "streamed"))
    return consumer


def document_fingerprint(model: torch.nn.Module, input_ids: torch.Tensor) -> dict[str, np.ndarray]:
    """Name -> (layers, heads) float32 for one document (1, T): STATISTICS, the learned sink's mass when the model
    has learned sinks, and PREVIOUS_TOKEN."""
    run = _run(model, input_ids, 1, None)
    layers = sorted(run.heads)
    out = {name: np.stack([getattr(run.heads[i], name).numpy() for i in layers]) for name in STATISTICS}
    if all(run.heads[i].learned_sink_mass is not None for i in layers):
        out["learned_sink_mass"] = np.stack([run.heads[i].learned_sink_mass.numpy() for i in layers])
    out[PREVIOUS_TOKEN] = np.stack([run.scores[i].numpy() for i in layers]).astype(np.float32)
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
    run = _run(model, input_ids, period - 1, slice(n_tokens - period, n_tokens))
    return np.stack([run.scores[i].numpy() for i in sorted(run.scores)]).astype(np.float32)
