"""Attention maps that fit in a browser, computed from captured q/k without materialising all of L x L at once.

Every layer goes through the kernels (kernels.pooled_attention_map and kernels.attention_stats: Triton on CUDA,
chunked torch on the CPU and for layers with an explicit mask or a logit softcap, which the Triton kernels do not take
yet), so peak memory is O(heads x chunk x S) instead of O(heads x T x S). Long maps are pooled into square blocks of
`block` x `block` cells: "mean" averages the probabilities over the *visible* cells of a block (cells hidden by the
causal mask do not dilute it), "max" takes their maximum. Blocks with no visible cell are NaN, drawn blank.

"Hide the sink" removes key 0 from what is drawn and pooled; the remaining weights are *not* renormalised, so every
value shown is still the model's own probability.

A query row that sees no key at all (only under an explicit mask, e.g. a padded query) has all-zero probabilities:
it counts as a row with zero entropy, weight, sink mass and distance in the head means, and has no visible cell.

A window of the map (attention_window: query rows [q0, q1) x keys [k0, k1), exact, one head) is built from the
layer's q and k under its own rule (LayerCapture.probs: causal, sliding window, learned sinks, softcap, explicit
mask), WINDOW_ROWS query rows at a time: each row needs all S keys for its softmax denominator, so the memory is
O(WINDOW_ROWS x S) whatever the window, and the cells kept are only the window's.

All functions read the first sequence of the batch; tensors follow [B, H, T, D].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from attnscope import kernels
from attnscope.capture import LayerCapture
from attnscope.headstats import HeadStats, summarise, visible_keys  # noqa: F401  (re-exported)

REDUCTIONS = kernels.pooled_map.REDUCTIONS
WINDOW_ROWS = 256  # query rows whose probabilities over all S keys exist at once in attention_window


@dataclass
class PooledMap:
    values: torch.Tensor  # (h, ceil(T/block), ceil(S/block)) fp32; NaN where a block has no visible cell
    block: int  # cells per block side; 1 = not pooled


def _validate(layer: LayerCapture, heads: Sequence[int], block: int, reduce: str) -> None:
    bad = [h for h in heads if not 0 <= h < layer.n_heads]
    if bad:
        raise ValueError(f"Heads {bad} do not exist; this layer has heads 0..{layer.n_heads - 1}.")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}.")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}.")


def _kernel_inputs(layer: LayerCapture, heads: list[int]) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(q, k, the kernels' rule keywords) of the first sequence for `heads`: all heads keep the grouped layout; a
    subset gets its own K rows (and its own rows of a per-head mask, its own sinks)."""
    rule = layer.rule(heads, first_sequence=True)
    if heads == list(range(layer.n_heads)):
        return layer.q[:1], layer.k[:1], rule
    return layer.q[:1, heads], layer.k[:1, [layer.kv_head(h) for h in heads]], rule


def pooled_map(
    layer: LayerCapture,
    *,
    heads: Sequence[int],
    block: int,
    reduce: str = "mean",
    hide_sink: bool = False,
) -> PooledMap:
    """Attention probabilities of `heads` pooled into `block` x `block` tiles (kernels.pooled_attention_map).

    Args:
        layer: a captured layer; its causal rule or explicit mask and its softcap apply.
        heads: query-head indices.
        block: tile side in cells (1 returns the exact map).
        reduce: "mean" over visible cells or "max".
        hide_sink: leave key 0 out of every tile (not renormalised).

    Returns:
        PooledMap with values (len(heads), ceil(T/block), ceil(S/block)).
    """
    heads = list(heads)
    _validate(layer, heads, block, reduce)
    q, k, rule = _kernel_inputs(layer, heads)
    values = kernels.pooled_attention_map(q, k, block=block, reduce=reduce, scale=layer.scale, hide_sink=hide_sink,
                                          **rule)
    return PooledMap(values=values[0].cpu(), block=block)


def head_stats(layer: LayerCapture, *, heads: Sequence[int] | None = None) -> HeadStats:
    """Per-head row statistics (entropy, max weight, sink mass, mean distance) averaged over the query rows, from
    kernels.attention_stats on the first sequence.

    Args:
        layer: a captured layer; its causal rule or explicit mask and its softcap apply.
        heads: query-head indices (default all).

    Returns:
        HeadStats with (len(heads),) fields.
    """
    heads = list(range(layer.n_heads)) if heads is None else list(heads)
    _validate(layer, heads, 1, "mean")
    q, k, rule = _kernel_inputs(layer, heads)
    stats = kernels.attention_stats(q, k, scale=layer.scale, **rule)
    return summarise(stats, visible_keys(layer, heads))


def block_for(n_cells: int, max_cells: int) -> int:
    """Smallest block so that ceil(n_cells / block) <= max_cells."""
    return max(1, math.ceil(n_cells / max_cells))


def query_weights(layer: LayerCapture, *, head: int, query: int) -> torch.Tensor:
    """(S,) attention weights of one query token for one head; invisible keys are 0."""
    _validate(layer, [head], 1, "mean")
    if not 0 <= query < layer.q.shape[2]:
        raise ValueError(f"Query {query} does not exist; this text has query positions 0..{layer.q.shape[2] - 1}.")
    return layer.probs([head], slice(query, query + 1))[0, 0, 0]


def check_range(name: str, span, n_positions: int) -> tuple[int, int]:
    """(start, end) of a half-open range of positions in [0, n_positions), or a ValueError naming it.

    Args:
        name: what the range selects ("queries" or "keys"), for the message.
        span: a pair (start, end), end excluded.
        n_positions: positions that exist (0 .. n_positions - 1).
    """
    pair = tuple(span) if isinstance(span, (tuple, list)) else ()
    whole = len(pair) == 2 and all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in pair)
    if not whole or not 0 <= pair[0] < pair[1] <= n_positions:
        raise ValueError(f"{name}={span!r} is not a range of this text's {n_positions} positions: give (start, end) "
                         f"with 0 <= start < end <= {n_positions}, the end excluded.")
    return int(pair[0]), int(pair[1])


def attention_window(
    layer: LayerCapture,
    *,
    head: int,
    queries: tuple[int, int],
    keys: tuple[int, int],
    hide_sink: bool = False,
) -> torch.Tensor:
    """The exact attention weights of one head for query rows [q0, q1) and keys [k0, k1), from the first sequence.

    Built WINDOW_ROWS rows at a time with LayerCapture.probs, so the layer's rule (causal, sliding window, learned
    sinks, softcap, explicit mask) applies and memory is O(WINDOW_ROWS x S), never T x S.

    Args:
        layer: a captured layer, q (B, Hq, T, D) and k (B, Hkv, S, D).
        head: query-head index.
        queries: (q0, q1), query rows 0 <= q0 < q1 <= T, q1 excluded.
        keys: (k0, k1), key positions 0 <= k0 < k1 <= S, k1 excluded.
        hide_sink: blank key 0 (NaN) as pooled_map does; the other weights are not renormalised.

    Returns:
        (q1 - q0, k1 - k0) fp32 on the CPU: the model's probabilities; NaN where the key is not visible to the query
        (as in pooled maps: blank, never a weight of 0 the model did not give).
    """
    _validate(layer, [head], 1, "mean")
    q0, q1 = check_range("queries", queries, layer.q.shape[2])
    k0, k1 = check_range("keys", keys, layer.k.shape[2])
    out = torch.empty(q1 - q0, k1 - k0, dtype=torch.float32)
    for start in range(q0, q1, WINDOW_ROWS):
        rows = slice(start, min(start + WINDOW_ROWS, q1))
        probs = layer.probs([head], rows)[0, 0]  # (t, S)
        visible = layer.visible(rows)[0]  # (1 or Hq, t, S)
        visible = visible[head if visible.shape[0] > 1 else 0]
        if hide_sink:
            visible = visible.clone()
            visible[:, 0] = False
        window = probs[:, k0:k1].masked_fill(~visible[:, k0:k1], float("nan"))
        out[start - q0 : rows.stop - q0] = window.float().cpu()
    return out
