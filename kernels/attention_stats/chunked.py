"""CPU (and fallback) torch path for attention statistics: query rows in chunks, memory O(chunk x S) per head.

Grouped-query attention without repeating K/V: the G query heads that share a key/value head are folded into the
row dimension, so one matmul against the un-repeated keys serves all of them. Scores and everything after them are
fp32 whatever the input dtype.
"""

from __future__ import annotations

import torch

from kernels.attention_stats.naive import AttentionStats
from kernels.utils import key_positions_visible

# Bytes of fp32 scores (and their few same-sized temporaries) alive at once; sets the rows per chunk.
CHUNK_BYTES = 8 * 2**20


def rows_per_chunk(n_heads: int, n_keys: int) -> int:
    return max(1, CHUNK_BYTES // (4 * n_heads * n_keys))


def attention_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor | None,
    *,
    causal: bool,
    scale: float,
    topk: int,
) -> AttentionStats:
    batch, n_heads, n_queries, head_dim = q.shape
    n_kv, n_keys = k.shape[1], k.shape[2]
    groups = n_heads // n_kv
    k32 = k.float()  # (B, Hkv, S, D)
    v32 = None if v is None else v.float()
    shape = (batch, n_heads, n_queries)
    out = AttentionStats(
        lse=torch.empty(shape), entropy=torch.empty(shape), max_weight=torch.empty(shape),
        argmax=torch.empty(shape, dtype=torch.int64), sink_mass=torch.empty(shape), mean_distance=torch.empty(shape),
    )
    if topk > 0:
        out.topk_weights = torch.empty(*shape, topk)
        out.topk_indices = torch.empty(*shape, topk, dtype=torch.int64)
    if v is not None:
        out.output = torch.empty(*shape, v.shape[-1], dtype=v.dtype)
    key_pos = torch.arange(n_keys, device=q.device)
    chunk = rows_per_chunk(n_heads, n_keys)
    for start in range(0, n_queries, chunk):
        rows = slice(start, min(start + chunk, n_queries))
        t = rows.stop - rows.start
        # Under the causal mask no row of this chunk sees past key `hi`: leave those keys out of the work.
        hi = min(n_keys, max(rows.stop + n_keys - n_queries, topk)) if causal else n_keys
        q_rows = q[:, :, rows].float().reshape(batch, n_kv, groups * t, head_dim)  # heads of a group folded into rows
        scores = torch.matmul(q_rows, k32[:, :, :hi].transpose(-1, -2)).mul_(scale).view(batch, n_kv, groups, t, hi)
        visible = key_positions_visible(n_queries, n_keys, rows, causal, q.device)[:, :hi]  # (t, hi)
        scores.masked_fill_(~visible, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)  # (B, Hkv, G, t)
        top_score, argmax = scores.max(dim=-1)
        probs = torch.exp(scores - lse[..., None])
        expected_score = (probs * scores.masked_fill(~visible, 0.0)).sum(-1)
        query_pos = torch.arange(rows.start, rows.stop, device=q.device) + (n_keys - n_queries)
        distance = (query_pos[:, None] - key_pos[None, :hi]).abs().float()  # (t, hi)
        to_heads = lambda x: x.reshape(batch, n_heads, t, *x.shape[4:])  # noqa: E731
        out.lse[:, :, rows] = to_heads(lse)
        out.entropy[:, :, rows] = to_heads(lse - expected_score)
        out.max_weight[:, :, rows] = to_heads(torch.exp(top_score - lse))
        out.argmax[:, :, rows] = to_heads(argmax)
        out.sink_mass[:, :, rows] = to_heads(probs[..., 0])
        out.mean_distance[:, :, rows] = to_heads((probs * distance).sum(-1))
        if topk > 0:
            top_scores, top_indices = scores.topk(topk, dim=-1)
            out.topk_weights[:, :, rows] = to_heads(torch.exp(top_scores - lse[..., None]))
            out.topk_indices[:, :, rows] = to_heads(top_indices.masked_fill(torch.isinf(top_scores), -1))
        if v is not None:
            o = torch.matmul(probs.view(batch, n_kv, groups * t, hi), v32[:, :, :hi])  # (B, Hkv, G*t, Dv)
            out.output[:, :, rows] = o.view(batch, n_heads, t, -1).to(v.dtype)
    return out
