"""Information-flow contributions (Ferrando & Voita 2024, "Information flow routes"), as llm-transparency-tool defines
them, at long contexts: which heads and keys the residual stream of each query is made of, layer by layer.

At layer l the residual stream of query i after attention (before the MLP), the whole w_i, is the sum of parts: the
residual stream entering the layer, x_i, and for every head h and key j the query sees,

    part[h, i, j] = alpha[h, i, j] * g_i * u[h, j],      u[h, j] = v[h, j] W_O[h]

(v before the grouped-query repeat, W_O[h] the head's slice of the output projection; g_i the factor a norm after
attention applies to query i's attention output, attnscope.anatomy, 1 without one). A bias of the projection belongs
to the whole and is no part. Each part scores

    raw = |w_i|_p - |w_i - part|_p,   contribution = max(raw, FLOOR) / sum over the parts of (l, i) of max(raw, FLOOR)

so a query's contributions sum to 1 over its parts. The residual's part is x_i; a learned sink (gpt-oss) has a part of
its own with no value (so it scores the floor); keys the query cannot see (later keys, keys outside a sliding window,
padding) are no parts. BERT normalises residual + attention after adding them: its whole is that sum, before the
LayerNorm. Edges below `threshold` are dropped (no renormalisation unless asked).

Long contexts: the parts are never materialised. Queries go in chunks; for each chunk the weights alpha (H, I, S) are
rebuilt from the captured q and k and the raw scores come from kernels.contribution_scores (matrix products and a
bounded correction on the CPU, a fused Triton kernel on a GPU). Memory per layer: u (H, S, d) and a few (H, I, S)
tensors.

    layer_edges(capture.layer(l), capture.hidden_states[l][0], attention_layers(model)[l], norm=1, threshold=0.01)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from attnscope import kernels
from attnscope.anatomy import AttentionLayer
from attnscope.capture import LayerCapture

FLOOR = 1e-5  # llm-transparency-tool's floor for a part's score before the normalisation
RESIDUAL = -1  # key (and head) of the residual's part
SINK = -2  # key of a learned sink's part (head = the sink's head)
CHUNK_CELLS = 1 << 23  # H x I x S cells per chunk of queries (about 32 MB per fp32 tensor)


@dataclass
class Edges:
    """The edges of one layer: part (key, head) -> query, with its contribution."""

    query: np.ndarray  # int32
    key: np.ndarray  # int32; RESIDUAL for the residual, SINK for a learned sink
    head: np.ndarray  # int16; RESIDUAL for the residual
    contribution: np.ndarray  # float32

    @classmethod
    def join(cls, parts: list[Edges]) -> Edges:
        if not parts:
            return cls(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int16), np.zeros(0, np.float32))
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("query", "key", "head", "contribution")))


@torch.no_grad()
def head_values(layer: LayerCapture, anatomy: AttentionLayer, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """u[h, j] = v[kv(h), j] W_O[h]: (H, S, d_model) for the first sequence."""
    n_heads = layer.n_heads
    v = layer.v[0].to(dtype).repeat_interleave(layer.groups, dim=0)  # (H, S, Dv)
    weight = anatomy.matrix().to(device=v.device, dtype=dtype)  # (d, H * Dv)
    weight = weight.view(weight.shape[0], n_heads, v.shape[-1])  # (d, H, Dv)
    return torch.einsum("hsk,dhk->hsd", v, weight)


def _key_range(layer: LayerCapture, rows: slice) -> slice:
    """The keys any query of `rows` may see (the causal rule and a sliding window bound them)."""
    n_queries, n_keys = layer.q.shape[2], layer.k.shape[2]
    if layer.mask is not None or not layer.causal:
        return slice(0, n_keys)
    offset = n_keys - n_queries
    low = 0 if layer.window is None else max(0, rows.start + offset - layer.window + 1)
    return slice(low, rows.stop + offset)


def _weights(layer: LayerCapture, rows: slice, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha (H, I, S) of the first sequence (the rows' softmax, sinks included) and the visibility (H or 1, I, S)."""
    logits = layer.logits(rows=rows, dtype=dtype)[0]  # (H, I, S), -inf where hidden
    if layer.sinks is not None:
        cell = layer.sinks.to(logits)[:, None, None].expand(*logits.shape[:2], 1)
        weights = torch.softmax(torch.cat([logits, cell], dim=-1), dim=-1)[..., :-1]
    else:
        weights = torch.softmax(logits, dim=-1)
    visible = layer.visible(rows)[0]  # (1 or H, I, S)
    return weights.nan_to_num(0.0), visible


@torch.no_grad()
def layer_edges(layer: LayerCapture, entering: torch.Tensor, anatomy: AttentionLayer, *, norm: int = 1,
                threshold: float = 0.0, queries: torch.Tensor | None = None, renormalize: bool = False,
                dtype: torch.dtype = torch.float32, backend: str = "auto") -> Edges:
    """The contributions of one layer's parts to each query's residual stream after attention, above `threshold`.

    Args:
        layer: the layer's capture (its first sequence is read).
        entering: (T, d_model) the residual stream entering the layer (capture's hidden_states[l][0]).
        anatomy: the layer's output projection and norms (attnscope.anatomy.attention_layers(model)[l]).
        norm: 1 or 2, the norm of the distances.
        threshold: keep edges whose contribution is at least this (0 keeps every part).
        queries: sorted query positions to compute (default all).
        renormalize: divide the kept edges of each query by their sum, so they sum to 1 again.
        dtype: the precision of the computation (float32; float64 for references).

    Returns:
        Edges with the residual's part as key = head = RESIDUAL and a learned sink's as key = SINK.
    """
    n_queries = layer.q.shape[2]
    entering = entering.to(dtype)
    u = head_values(layer, anatomy, dtype)  # (H, S, d)
    v = layer.v[0].to(dtype).repeat_interleave(layer.groups, dim=0)  # (H, S, Dv)
    n_heads, n_keys = u.shape[0], u.shape[1]
    wanted = None if queries is None else torch.zeros(n_queries, dtype=torch.bool).index_fill_(0, queries.cpu(), True)
    step = max(1, CHUNK_CELLS // max(1, n_heads * n_keys))
    out = []
    for start in range(0, n_queries, step):
        rows = slice(start, min(start + step, n_queries))
        if wanted is not None and not bool(wanted[rows].any()):
            continue
        keys = _key_range(layer, rows)
        weights, visible = _weights(layer, rows, dtype)  # (H, I, S)
        heads_out = torch.matmul(weights, v)  # (H, I, Dv): what each head hands the output projection
        projected = anatomy.project(heads_out.transpose(0, 1).reshape(heads_out.shape[1], -1))  # (I, d)
        factor = anatomy.post_factor(projected)
        added = projected if factor is None else projected * factor
        whole = entering[rows] + added
        raw = kernels.contribution_scores(whole, u[:, keys].contiguous(), weights[..., keys].contiguous(),
                                          factor=factor, norm=norm, backend=backend)  # (H, I, K)
        seen = visible[..., keys].expand_as(raw)
        scores = torch.where(seen, raw.clamp_min(FLOOR), 0.0)
        whole_norm = torch.linalg.vector_norm(whole, ord=norm, dim=-1)
        residual = (whole_norm - torch.linalg.vector_norm(added, ord=norm, dim=-1)).clamp_min(FLOOR)  # (I,)
        total = scores.sum(dim=(0, 2)) + residual
        if layer.sinks is not None:  # each head's sink cell: a part with no value scores the floor
            total = total + FLOOR * n_heads
        share = scores / total[None, :, None]
        residual_share = residual / total
        sink_share = (torch.full((n_heads, share.shape[1]), FLOOR, dtype=dtype) / total[None, :]
                      if layer.sinks is not None else None)
        pick = torch.arange(rows.start, rows.stop)
        keep_rows = torch.ones(len(pick), dtype=torch.bool) if wanted is None else wanted[rows]
        out.append(_chunk_edges(pick, keep_rows, keys.start, share, residual_share, sink_share, threshold, renormalize))
    return Edges.join(out)


def _chunk_edges(pick, keep_rows, key_start, share, residual_share, sink_share, threshold, renormalize) -> Edges:
    """Edges of one chunk of queries at or above the threshold (a share of 0 is no part: a hidden key)."""
    kept = (share >= threshold) & (share > 0) & keep_rows[None, :, None]
    head, row, key = kept.nonzero(as_tuple=True)
    values = share[head, row, key]
    res_kept = (residual_share >= threshold) & keep_rows
    res_rows = res_kept.nonzero(as_tuple=True)[0]
    queries = [pick[row], pick[res_rows]]
    keys = [key + key_start, torch.full_like(res_rows, RESIDUAL)]
    heads = [head, torch.full_like(res_rows, RESIDUAL)]
    contributions = [values, residual_share[res_rows]]
    if sink_share is not None:
        sink_kept = (sink_share >= threshold) & keep_rows[None, :]
        sink_head, sink_row = sink_kept.nonzero(as_tuple=True)
        queries.append(pick[sink_row])
        keys.append(torch.full_like(sink_row, SINK))
        heads.append(sink_head)
        contributions.append(sink_share[sink_head, sink_row])
    query, key, head, value = (torch.cat(x) for x in (queries, keys, heads, contributions))
    if renormalize:
        sums = torch.zeros(int(pick[-1]) + 1, dtype=value.dtype).index_add_(0, query, value)
        value = value / sums[query]
    order = torch.argsort(query * (1 << 40) + (head.long() + 2) * (1 << 20) + (key.long() + 2), stable=True)
    return Edges(query[order].numpy().astype(np.int32), key[order].numpy().astype(np.int32),
                 head[order].numpy().astype(np.int16), value[order].float().numpy())


def edge_sources(query: np.ndarray, key: np.ndarray) -> np.ndarray:
    """The position each edge comes from: a head part's key, the residual part's own query; a learned sink's part
    keeps SINK (negative: no position)."""
    return np.where(key == RESIDUAL, query, key)


def sources_of(edges: Edges) -> tuple[int, ...]:
    """The positions the kept edges of a layer come from (edge_sources). llm-transparency-tool's traversal follows
    these down to the layer below (the MLP between layers is not a node here: a token's stream after a layer is taken
    as that layer's whole)."""
    sources = edge_sources(edges.query, edges.key)
    return tuple(int(p) for p in np.unique(sources[sources >= 0]))
