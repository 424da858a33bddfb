"""CPU (and fallback) torch path for attention statistics: query rows in chunks, memory O(chunk x S) per head.

Grouped-query attention without repeating K/V: the G query heads that share a key/value head are folded into the
row dimension, so one matmul against the un-repeated keys serves all of them. Scores and everything after them are
fp32 whatever the input dtype.
"""

from __future__ import annotations

import torch

from attnscope.kernels.attention_stats.naive import AttentionStats
from attnscope.kernels.utils import key_positions_visible

# Bytes of fp32 scores per chunk; with the exp buffer and the mask about 2.3x this is alive at once.
CHUNK_BYTES = 4 * 2**20
_MASKED = -1e30  # finite stand-in for -inf logits of hidden keys


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
    key_pos = torch.arange(n_keys, device=q.device, dtype=torch.float32)
    chunk = rows_per_chunk(n_heads, n_keys)
    for start in range(0, n_queries, chunk):
        rows = slice(start, min(start + chunk, n_queries))
        t = rows.stop - rows.start
        # Under the causal mask no row of this chunk sees past key `hi`: leave those keys out of the work.
        hi = min(n_keys, max(rows.stop + n_keys - n_queries, topk)) if causal else n_keys
        q_rows = q[:, :, rows].float().reshape(batch, n_kv, groups * t, head_dim)  # heads of a group folded into rows
        shifted = torch.matmul(q_rows, k32[:, :, :hi].transpose(-1, -2)).mul_(scale).view(batch, n_kv, groups, t, hi)
        # Only keys after the chunk's first row position can be hidden from some row: mask that corner alone.
        # A finite stand-in for -inf keeps 0 * (masked logit) = 0 in the dot products below; exp of it is exactly 0.
        low = min(hi, rows.start + n_keys - n_queries + 1) if causal else hi
        hidden = ~key_positions_visible(n_queries, n_keys, rows, causal, q.device)[:, low:hi]  # (t, hi - low)
        shifted[..., low:].masked_fill_(hidden, _MASKED)
        top_score, argmax = shifted.max(dim=-1)  # (B, Hkv, G, t)
        shifted.sub_(top_score[..., None])  # s - m, in place
        weights = torch.exp(shifted)  # unnormalised probabilities exp(s - m), the only other (t, hi) buffer
        total = weights.sum(-1)  # l
        lse = top_score + torch.log(total)
        # entropy = lse - E[s] = log l - E[s - m], with E[s - m] as one dot product per row (no (t, hi) temporary)
        expected_shift = (weights.unsqueeze(-2) @ shifted.unsqueeze(-1)).squeeze(-1).squeeze(-1) / total
        query_pos = torch.arange(rows.start, rows.stop, device=q.device, dtype=torch.float32) + (n_keys - n_queries)
        expected_key = (weights @ key_pos[:hi]) / total  # E[j]
        if causal:  # every visible j <= position, so E|position - j| = position - E[j]
            distance = query_pos - expected_key
        else:
            distance = (weights * (query_pos[:, None] - key_pos[None, :hi]).abs()).sum(-1) / total
        to_heads = lambda x: x.reshape(batch, n_heads, t, *x.shape[4:])  # noqa: E731
        out.lse[:, :, rows] = to_heads(lse)
        out.entropy[:, :, rows] = to_heads(torch.log(total) - expected_shift)
        out.max_weight[:, :, rows] = to_heads(1.0 / total)
        out.argmax[:, :, rows] = to_heads(argmax)
        out.sink_mass[:, :, rows] = to_heads(weights[..., 0] / total)
        out.mean_distance[:, :, rows] = to_heads(distance)
        if topk > 0:
            top_shifted, top_indices = shifted.topk(topk, dim=-1)
            out.topk_weights[:, :, rows] = to_heads(torch.exp(top_shifted) / total[..., None])
            out.topk_indices[:, :, rows] = to_heads(top_indices.masked_fill(top_shifted < _MASKED / 2, -1))
        if v is not None:
            o = torch.matmul(weights.view(batch, n_kv, groups * t, hi), v32[:, :, :hi])  # (B, Hkv, G*t, Dv)
            o = o.view(batch, n_kv, groups, t, -1) / total[..., None]
            out.output[:, :, rows] = o.reshape(batch, n_heads, t, -1).to(v.dtype)
    return out
