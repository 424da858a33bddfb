"""CPU (and fallback) torch path for Taylor-order attention: chunks of query rows, memory O(chunk x S) per head."""

from __future__ import annotations

import torch

from kernels.attention_stats.chunked import rows_per_chunk
from kernels.utils import key_positions_visible


def horner(scores: torch.Tensor, order: int) -> torch.Tensor:
    """sum_{n<=order} s^n / n! by Horner's rule: p = 1; p = 1 + p * s / j for j = order .. 1."""
    weights = torch.ones_like(scores)
    for j in range(order, 0, -1):
        weights = 1.0 + weights * scores / j
    return weights


def clamp_bounds(clamp) -> tuple[float | None, float | None]:
    """(low, high) from the public clamp argument: a number clamps from above only, a pair both sides."""
    if clamp is None:
        return None, None
    if isinstance(clamp, (tuple, list)):
        return float(clamp[0]), float(clamp[1])
    return None, float(clamp)


def taylor_attention(q, k, v, *, order: int, denominator: str, clamp, causal: bool, scale: float) -> torch.Tensor:
    batch, n_heads, n_queries, head_dim = q.shape
    n_kv, n_keys = k.shape[1], k.shape[2]
    groups = n_heads // n_kv
    low, high = clamp_bounds(clamp)
    k32, v32 = k.float(), v.float()
    out = torch.empty(batch, n_heads, n_queries, v.shape[-1])
    chunk = rows_per_chunk(n_heads, n_keys)
    for start in range(0, n_queries, chunk):
        rows = slice(start, min(start + chunk, n_queries))
        t = rows.stop - rows.start
        hi = min(n_keys, rows.stop + n_keys - n_queries) if causal else n_keys  # later keys are masked for all rows
        q_rows = q[:, :, rows].float().reshape(batch, n_kv, groups * t, head_dim)
        scores = torch.matmul(q_rows, k32[:, :, :hi].transpose(-1, -2)).mul_(scale)
        if low is not None or high is not None:
            scores.clamp_(min=low, max=high)
        scores = scores.view(batch, n_kv, groups, t, hi)
        visible = key_positions_visible(n_queries, n_keys, rows, causal, q.device)[:, :hi]  # (t, hi)
        weights = horner(scores, order).masked_fill_(~visible, 0.0)
        numerator = torch.matmul(weights.view(batch, n_kv, groups * t, hi), v32[:, :, :hi])
        numerator = numerator.view(batch, n_kv, groups, t, -1)
        if denominator == "taylor":
            numerator /= weights.sum(-1, keepdim=True)
        elif denominator == "softmax":
            numerator *= torch.exp(-torch.logsumexp(scores.masked_fill(~visible, float("-inf")), -1, keepdim=True))
        elif denominator == "l2":
            numerator /= numerator.norm(dim=-1, keepdim=True)
        else:
            numerator /= visible.sum(-1, keepdim=True)
        out[:, :, rows] = numerator.reshape(batch, n_heads, t, -1)
    return out
