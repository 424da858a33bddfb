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

The same pass also gives, per head:
- **collapse slopes** (paper B's vanishing attention): the least-squares slope of max weight and of entropy against
  log L, L the number of keys a row sees, over the rows that see at least MIN_KEYS keys. Under the causal rule each row
  is its own context length (row t's weights do not depend on later tokens, so row t is the model at L = t + 1, the
  reading the context-collapse page takes from prefixes); a bidirectional model's rows all see the whole text, so its
  slopes come from extra passes on the document's prefixes of T/4 and T/2 tokens. Uniform attention has an entropy
  slope of 1 and a max-weight slope of -1/L; a head whose attention vanishes as the context grows has a positive
  entropy slope and a negative max-weight slope.
- **Taylor order needed** (paper A): the smallest order n <= TAYLOR_MAX_ORDER whose truncated softmax (exact softmax
  denominator) reproduces the head's outputs on the first `taylor_tokens` rows (a bidirectional model's rows still
  seeing every key) with relative error below TAYLOR_TOLERANCE, as on the Softmax vs Taylor page; TAYLOR_MAX_ORDER
  + 1 when no order up to it does.
- **N_s/N** (paper B's distinguishability) at N = SATURATION_N on the last COLLAPSE_ROWS rows (fewer in texts under
  4 COLLAPSE_ROWS tokens: the collapse analysis reads at most a quarter of a causal text's rows), as on the context
  collapse page, and whether it lies in the paper's saturated band (0.70-0.85); NaN when a row sees too few keys for
  N = SATURATION_N.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from attnscope import kernels
from attnscope.analyses import collapse, maps, taylor
from attnscope.capture import LayerCapture

STATISTICS = ("entropy", "normalized_entropy", "max_weight", "sink_mass", "mean_distance")
PREVIOUS_TOKEN = "previous_token"
SLOPES = ("max_weight_slope", "entropy_slope")
TAYLOR_ORDER = "taylor_order"
RATIO, SATURATED = "ns_ratio", "saturated"
INDUCTION = "induction"
INDUCTION_PERIOD = 64  # random tokens per copy: long enough that chance hits are rare, short enough to be quick
INDUCTION_SEQUENCES = 4  # random sequences the induction score is averaged over (its spread is reported)
MIN_KEYS = 32  # rows seeing fewer keys are left out of the slopes (the context-collapse page starts at L = 32)
TAYLOR_MAX_ORDER, TAYLOR_TOLERANCE, TAYLOR_DENOMINATOR = 10, 1e-2, "softmax"  # the Taylor page's defaults
TAYLOR_TOKENS = 128  # rows the Taylor sweep reads: its cost grows with T^2 x orders, its answer with the logits' size
COLLAPSE_ROWS = 8  # the context-collapse page's analysed rows (the last ones)
SATURATION_N = 16  # the N at which paper B reads N_s/N (fig. 3)
_OFFSET = "offset"  # _run's name for the weight on the key `offset` back (offset 1: PREVIOUS_TOKEN)


def offset_weights(layer: LayerCapture, lse: torch.Tensor, offset: int, rows: slice | None = None) -> torch.Tensor:
    """(Hq,) mean over the query rows `rows` (default all) of the first sequence of the weight on the key `offset`
    positions back, over the rows that see it; NaN for a head with no such row. lse: (B, Hq, T) from the kernel."""
    return offset_rows(layer, lse, offset, rows)[0]


def offset_rows(layer: LayerCapture, lse: torch.Tensor, offset: int,
                rows: slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(offset_weights, (Hq,) int64 how many rows it averaged: those that see the key `offset` back)."""
    n_queries, n_keys = layer.q.shape[2], layer.k.shape[2]
    rows = rows or slice(0, n_queries)
    first = rows.start + n_keys - n_queries  # key position of the first row
    positions = torch.arange(first, first + (rows.stop - rows.start))  # key positions of the rows
    targets = positions - offset
    usable = targets >= 0
    if layer.mask is None:  # the rule alone decides, the same for every row: no (t, S) visibility is built
        windowed = layer.causal and layer.window is not None
        seen = (usable & (offset < layer.window if windowed else True))[None]  # (1, t)
    else:
        visible = layer.visible(rows)[0].to("cpu")  # (Hq or 1, t, S)
        seen = visible[..., torch.arange(len(positions)), targets.clamp(min=0)] & usable  # (Hq or 1, t)
    q = layer.q[0, :, rows].float()  # (Hq, t, D)
    k = layer.k[0][:, targets.clamp(min=0).to(layer.k.device)].float()  # (Hkv, t, D): only the keys read
    k = k[[layer.kv_head(h) for h in range(layer.n_heads)]]  # (Hq, t, D)
    logits = (q * k).sum(-1) * layer.scale  # (Hq, t)
    if layer.softcap is not None:
        logits = layer.softcap * torch.tanh(logits / layer.softcap)
    weights = torch.exp(logits - lse[0, :, rows].float()).cpu().masked_fill(~seen, 0.0)
    counts = seen.expand_as(weights).sum(-1)
    return torch.where(counts > 0, weights.sum(-1) / counts.clamp(min=1), float("nan")), counts


def log_slope(n_keys: torch.Tensor, values: torch.Tensor, *, min_keys: int = MIN_KEYS) -> torch.Tensor:
    """(H,) least-squares slope of values (H, T) against log n_keys (T,) over the rows seeing >= min_keys keys; NaN
    when those rows see fewer than two different numbers of keys."""
    n_keys = n_keys.double().cpu()
    values = values.double().cpu()
    used = n_keys >= min_keys
    x = n_keys[used].log()
    if x.numel() < 2 or float(x.max() - x.min()) == 0.0:
        return torch.full((values.shape[0],), float("nan"))
    x = x - x.mean()
    y = values[:, used]
    return ((y - y.mean(-1, keepdim=True)) @ x / (x @ x)).float()


def _per_layer(layer: LayerCapture, stats: kernels.AttentionStats, taylor_tokens: int) -> dict[str, torch.Tensor]:
    """The fields one layer's live q/k/v give beyond the engine's statistics: each (Hq,)."""
    n_keys = maps.visible_keys(layer)[0]  # (T,): a padding mask would differ per head, but the atlas never pads
    out = {"max_weight_slope": log_slope(n_keys, stats.max_weight[0]),
           "entropy_slope": log_slope(n_keys, stats.entropy[0])}
    if layer.causal and layer.mask is None:
        part = layer.prefix(taylor_tokens)
    else:  # bidirectional: the first rows, each still seeing every key (a prefix would change what they see)
        part = dataclasses.replace(layer, q=layer.q[:, :, :taylor_tokens],
                                   mask=None if layer.mask is None else layer.mask[..., :taylor_tokens, :])
    sweep = taylor.sweep_layer(part, max_order=TAYLOR_MAX_ORDER)
    needed = taylor.order_needed(sweep.error[TAYLOR_DENOMINATOR], TAYLOR_TOLERANCE)
    out[TAYLOR_ORDER] = torch.from_numpy(np.where(needed < 0, TAYLOR_MAX_ORDER + 1, needed).astype(np.float32))
    rows = collapse.analyse_layer(layer, rows=COLLAPSE_ROWS)
    if SATURATION_N in rows.n_values:
        ratio = torch.from_numpy(rows.ratio[..., rows.n_values.index(SATURATION_N)].mean(1)).float()
        low, high = collapse.SATURATED_BAND
        out[RATIO], out[SATURATED] = ratio, ((ratio >= low) & (ratio <= high)).float()
    else:
        out[RATIO] = out[SATURATED] = torch.full((layer.n_heads,), float("nan"))
    return out


def _run(model: torch.nn.Module, input_ids: torch.Tensor, offset: int, rows: slice | None, *,
         taylor_tokens: int | None = None):
    """engine.run (the statistics, the layers' outputs) with each layer's weight on the key `offset` back, measured
    from the same pass, and with taylor_tokens the per-layer fields of _per_layer: (the EngineRun, layer index ->
    name -> (Hq,), whether the layers were causal)."""
    from attnscope import engine

    found: dict[int, dict[str, torch.Tensor]] = {}
    causal: list[bool] = []

    def measure(index: int, layer: LayerCapture, stats: kernels.AttentionStats) -> None:
        found[index] = {_OFFSET: offset_weights(layer, stats.lse, offset, rows)}
        if taylor_tokens is not None:
            found[index].update(_per_layer(layer, stats, taylor_tokens))
        causal.append(layer.causal)

    return engine.run(model, input_ids, on_layer=measure), found, all(causal)


def _prefix_slopes(model: torch.nn.Module, input_ids: torch.Tensor, run) -> dict[str, np.ndarray]:
    """A bidirectional model's slopes: each pass's mean over rows at T/4, T/2 (at least MIN_KEYS tokens) and T."""
    n_tokens = input_ids.shape[1]
    lengths = [n for n in (n_tokens // 4, n_tokens // 2) if n >= MIN_KEYS] + [n_tokens]
    from attnscope import engine

    runs = [engine.run(model, input_ids[:, :n]) for n in lengths[:-1]] + [run]  # statistics only
    x = torch.tensor(lengths, dtype=torch.float64)
    out = {}
    for name, field in (("max_weight_slope", "max_weight"), ("entropy_slope", "entropy")):
        values = torch.stack([r.stacked(field) for r in runs], -1)  # (layers, heads, lengths)
        out[name] = log_slope(x, values.flatten(0, 1)).reshape(values.shape[:2]).numpy()
    return out


def document_fingerprint(model: torch.nn.Module, input_ids: torch.Tensor, *, taylor_tokens: int = TAYLOR_TOKENS
                         ) -> dict[str, np.ndarray]:
    """Name -> (layers, heads) float32 for one document (1, T): STATISTICS, the learned sink's mass when the model
    has learned sinks, PREVIOUS_TOKEN, SLOPES, TAYLOR_ORDER, RATIO and SATURATED."""
    run, found, causal = _run(model, input_ids, 1, None, taylor_tokens=taylor_tokens)
    layers = sorted(run.head_stats)
    out = {name: run.stacked(name).numpy() for name in STATISTICS}
    if run.has_learned_sinks:
        out["learned_sink_mass"] = run.stacked("learned_sink_mass").numpy()
    for name in found[layers[0]]:
        out[PREVIOUS_TOKEN if name == _OFFSET else name] = np.stack([found[i][name].numpy() for i in layers])
    if not causal:
        out.update(_prefix_slopes(model, input_ids, run))
    return {name: values.astype(np.float32) for name, values in out.items()}


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
    _, found, _ = _run(model, input_ids, period - 1, slice(n_tokens - period, n_tokens))
    return np.stack([found[i][_OFFSET].numpy() for i in sorted(found)]).astype(np.float32)
