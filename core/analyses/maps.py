"""Attention maps that fit in a browser, computed from captured q/k without materialising all of L x L at once.

Layers whose mask is a rule (causal or full) and that have no logit softcap go through the kernels
(kernels.pooled_attention_map and kernels.attention_stats: Triton on CUDA, chunked torch on CPU). Layers with an
explicit mask (padding, sliding windows) or softcapping take the general path here, which walks the query rows in
chunks through LayerCapture.probs. Either way peak memory is O(heads x chunk x S) instead of O(heads x T x S). Long maps are pooled into square blocks of
`block` x `block` cells: "mean" averages the probabilities over the *visible* cells of a block (cells hidden by the
causal mask do not dilute it), "max" takes their maximum. Blocks with no visible cell are NaN, drawn blank.

"Hide the sink" removes key 0 from what is drawn and pooled; the remaining weights are *not* renormalised, so every
value shown is still the model's own probability.

All functions read the first sequence of the batch; tensors follow [B, H, T, D].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from attnscope import kernels
from attnscope.capture import LayerCapture

REDUCTIONS = kernels.pooled_map.REDUCTIONS


@dataclass
class PooledMap:
    values: torch.Tensor  # (h, ceil(T/block), ceil(S/block)) fp32; NaN where a block has no visible cell
    block: int  # cells per block side; 1 = not pooled


@dataclass
class HeadStats:
    entropy: torch.Tensor  # (h,) mean over query rows of the row entropy, nats
    normalized_entropy: torch.Tensor  # (h,) mean over rows with > 1 visible key of entropy / log(visible keys)
    max_weight: torch.Tensor  # (h,) mean over query rows of the largest weight
    sink_mass: torch.Tensor  # (h,) mean over query rows of the weight on key 0
    mean_distance: torch.Tensor  # (h,) mean over query rows of the expected |query position - key position|


_ROWS_PER_CHUNK = 256  # query rows whose probabilities exist at once: heads x 256 x S fp32 values


def _chunk_rows(block: int) -> int:
    """Rows per chunk: a multiple of the pooling block near _ROWS_PER_CHUNK."""
    return block * max(1, _ROWS_PER_CHUNK // block)


def _validate(layer: LayerCapture, heads: Sequence[int], block: int, reduce: str) -> None:
    bad = [h for h in heads if not 0 <= h < layer.n_heads]
    if bad:
        raise ValueError(f"Heads {bad} do not exist; this layer has heads 0..{layer.n_heads - 1}.")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}.")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}.")


class _Pooler:
    """Accumulates block x block tiles of probabilities, one chunk of query rows (a multiple of block) at a time."""

    def __init__(self, n_heads: int, n_queries: int, n_keys: int, block: int, reduce: str, hide_sink: bool):
        self.block, self.reduce, self.hide_sink = block, reduce, hide_sink
        self.n_key_blocks = math.ceil(n_keys / block)
        self.key_pad = self.n_key_blocks * block - n_keys
        self.values = torch.empty(n_heads, math.ceil(n_queries / block), self.n_key_blocks)

    def add(self, start: int, probs: torch.Tensor, visible: torch.Tensor) -> None:
        """probs, visible: (h, t, S) for query rows start..start+t."""
        if self.hide_sink:
            visible = visible.clone()
            visible[..., 0] = False
        n_heads, t, _ = probs.shape
        row_pad = math.ceil(t / self.block) * self.block - t
        probs = torch.nn.functional.pad(probs, (0, self.key_pad, 0, row_pad))
        visible = torch.nn.functional.pad(visible, (0, self.key_pad, 0, row_pad), value=False)
        tiles = probs.reshape(n_heads, -1, self.block, self.n_key_blocks, self.block)  # (h, rb, block, kb, block)
        tiles_visible = visible.reshape(tiles.shape)
        if self.reduce == "mean":
            total = (tiles * tiles_visible).sum(dim=(2, 4))
            count = tiles_visible.sum(dim=(2, 4))
            pooled = torch.where(count > 0, total / count.clamp(min=1), torch.nan)
        else:
            pooled = tiles.masked_fill(~tiles_visible, float("-inf")).amax(dim=(2, 4))
            pooled = torch.where(torch.isinf(pooled), torch.nan, pooled)
        first = start // self.block
        self.values[:, first : first + pooled.shape[1]] = pooled


class _RowStats:
    """Accumulates per-head sums of row entropy, max weight and sink mass over chunks of query rows."""

    def __init__(self, n_heads: int, n_queries: int):
        self.n_queries = n_queries
        zeros = lambda: torch.zeros(n_heads, dtype=torch.float64)  # noqa: E731
        self.entropy, self.normalized, self.n_normalized = zeros(), zeros(), zeros()
        self.max_weight, self.sink, self.distance = zeros(), zeros(), zeros()

    def add(self, start: int, probs: torch.Tensor, visible: torch.Tensor) -> None:
        probs = probs.double()
        row_entropy = -(probs * torch.log(probs.clamp(min=1e-300))).sum(-1)  # (h, t)
        n_visible = visible.sum(-1).double()  # (h, t)
        spread = n_visible > 1
        self.entropy += row_entropy.sum(-1)
        self.normalized += (row_entropy / torch.log(n_visible.clamp(min=2)) * spread).sum(-1)
        self.n_normalized += spread.sum(-1)
        self.max_weight += probs.amax(-1).sum(-1)
        self.sink += probs[..., 0].sum(-1)
        n_queries, n_keys = self.n_queries, probs.shape[-1]
        query_pos = torch.arange(start, start + probs.shape[1]) + (n_keys - n_queries)
        self.distance += (probs * (query_pos[:, None] - torch.arange(n_keys)[None, :]).abs()).sum(dim=(1, 2))

    def result(self) -> HeadStats:
        return HeadStats(
            entropy=(self.entropy / self.n_queries).float(),
            normalized_entropy=(self.normalized / self.n_normalized.clamp(min=1)).float(),
            max_weight=(self.max_weight / self.n_queries).float(),
            sink_mass=(self.sink / self.n_queries).float(),
            mean_distance=(self.distance / self.n_queries).float(),
        )


def _sweep(layer: LayerCapture, heads: list[int], block: int, consumers: Sequence) -> None:
    """Build probabilities chunk by chunk of query rows and hand each chunk to every consumer."""
    n_queries = layer.q.shape[2]
    chunk = _chunk_rows(block)
    for start in range(0, n_queries, chunk):
        rows = slice(start, min(start + chunk, n_queries))
        probs = layer.probs(heads, rows)[0]  # (h, t, S)
        visible = layer.visible(rows)[0].expand(len(heads), -1, -1)  # (h, t, S)
        for consumer in consumers:
            consumer.add(start, probs, visible)


def pooled_map(
    layer: LayerCapture,
    *,
    heads: Sequence[int],
    block: int,
    reduce: str = "mean",
    hide_sink: bool = False,
) -> PooledMap:
    """Attention probabilities of `heads` pooled into `block` x `block` tiles, computed chunk by chunk.

    Args:
        layer: a captured layer.
        heads: query-head indices.
        block: tile side in cells (1 returns the exact map).
        reduce: "mean" over visible cells or "max".
        hide_sink: leave key 0 out of every tile (not renormalised).

    Returns:
        PooledMap with values (len(heads), ceil(T/block), ceil(S/block)).
    """
    heads = list(heads)
    _validate(layer, heads, block, reduce)
    if _kernel_ready(layer):
        q, k = _kernel_inputs(layer, heads)
        values = kernels.pooled_attention_map(q, k, block=block, reduce=reduce, causal=layer.causal,
                                              scale=layer.scale, hide_sink=hide_sink)
        return PooledMap(values=values[0].cpu(), block=block)
    pooler = _Pooler(len(heads), layer.q.shape[2], layer.k.shape[2], block, reduce, hide_sink)
    _sweep(layer, heads, block, [pooler])
    return PooledMap(values=pooler.values, block=block)


def head_stats(layer: LayerCapture, *, heads: Sequence[int] | None = None) -> HeadStats:
    """Per-head row statistics (entropy, max weight, sink mass) averaged over query rows, chunk by chunk."""
    heads = list(range(layer.n_heads)) if heads is None else list(heads)
    _validate(layer, heads, 1, "mean")
    if _kernel_ready(layer):
        return _kernel_head_stats(layer, heads)
    stats = _RowStats(len(heads), layer.q.shape[2])
    _sweep(layer, heads, 1, [stats])
    return stats.result()


def _kernel_ready(layer: LayerCapture) -> bool:
    """The kernels take causal/full masks and plain softmax logits."""
    return layer.mask is None and layer.softcap is None


def _kernel_inputs(layer: LayerCapture, heads: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, k) of the first sequence for `heads`: all heads keep the grouped layout; a subset gets its own K rows."""
    if heads == list(range(layer.n_heads)):
        return layer.q[:1], layer.k[:1]
    return layer.q[:1, heads], layer.k[:1, [layer.kv_head(h) for h in heads]]


def _kernel_head_stats(layer: LayerCapture, heads: list[int]) -> HeadStats:
    q, k = _kernel_inputs(layer, heads)
    stats = kernels.attention_stats(q, k, causal=layer.causal, scale=layer.scale)
    n_queries, n_keys = q.shape[2], k.shape[2]
    if layer.causal:
        n_visible = torch.arange(n_queries, dtype=torch.float64) + (n_keys - n_queries) + 1
    else:
        n_visible = torch.full((n_queries,), float(n_keys), dtype=torch.float64)
    spread = n_visible > 1
    entropy = stats.entropy[0].double().cpu()  # (h, T)
    normalized = (entropy[:, spread] / torch.log(n_visible[spread])).mean(-1) if spread.any() else entropy[:, :0].sum(-1)
    return HeadStats(
        entropy=entropy.mean(-1).float(),
        normalized_entropy=normalized.float(),
        max_weight=stats.max_weight[0].mean(-1).cpu(),
        sink_mass=stats.sink_mass[0].mean(-1).cpu(),
        mean_distance=stats.mean_distance[0].mean(-1).cpu(),
    )


def block_for(n_cells: int, max_cells: int) -> int:
    """Smallest block so that ceil(n_cells / block) <= max_cells."""
    return max(1, math.ceil(n_cells / max_cells))


def query_weights(layer: LayerCapture, *, head: int, query: int) -> torch.Tensor:
    """(S,) attention weights of one query token for one head; invisible keys are 0."""
    _validate(layer, [head], 1, "mean")
    if not 0 <= query < layer.q.shape[2]:
        raise ValueError(f"Query {query} does not exist; this text has query positions 0..{layer.q.shape[2] - 1}.")
    return layer.probs([head], slice(query, query + 1))[0, 0, 0]
