"""CPU (and fallback) torch path for Taylor-order attention: chunks of query rows, memory O(chunk x S) per head."""

from __future__ import annotations

import math

import torch

from attnscope.kernels.attention_stats.chunked import rows_per_chunk
from attnscope.kernels.taylor.naive import (DENOMINATORS, LOGIT_BINS, LOGIT_RANGE, SMALL_DENOMINATOR, TaylorSweep)
from attnscope.kernels.utils import key_positions_visible


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


def taylor_sweep(q, k, v, *, max_order: int, clamp, causal: bool, scale: float,
                 dtype: torch.dtype = torch.float64, errors: bool = True) -> TaylorSweep:
    """Every order 0..max_order and every denominator from one pass over chunks of query rows.

    The logits, the exact softmax output and each order's weights are built once per chunk; order n adds one term
    (term_n = term_{n-1} * s / n) and one (rows x S) @ (S x Dv) product, so the sweep costs about N + 2 attention
    passes instead of 4 (N + 1) + 1 separate calls. Computed in `dtype` (fp64 by default: the sum denominator
    cancels badly for large logits, and the page compares orders whose errors differ by many decades).
    With errors=False only the diagnostics are computed (the Triton path measures the errors itself).
    """
    batch, n_heads, n_queries, head_dim = q.shape
    n_kv, n_keys = k.shape[1], k.shape[2]
    groups = n_heads // n_kv
    n_orders = max_order + 1
    low, high = clamp_bounds(clamp)
    device = q.device
    kd, vd = k.to(dtype), v.to(dtype)
    error = {name: torch.full((n_orders, batch, n_heads, n_queries), math.nan, device=device)
             for name in DENOMINATORS}
    target_norm = torch.empty(batch, n_heads, n_queries, device=device)
    # Per order and head: negative weights, rows with denominator <= 0, rows with a small one, sum of |term|.
    per_head = torch.zeros(4, n_orders, batch, n_kv, groups, dtype=torch.float64, device=device)
    visible_total = torch.zeros(batch, n_kv, groups, dtype=torch.float64, device=device)
    logit_min = torch.full((batch, n_kv, groups), math.inf, dtype=dtype, device=device)
    logit_max = torch.full((batch, n_kv, groups), -math.inf, dtype=dtype, device=device)
    hist = torch.zeros(batch * n_heads * LOGIT_BINS, dtype=torch.int64, device=device)
    bin_low, bin_width = LOGIT_RANGE[0], (LOGIT_RANGE[1] - LOGIT_RANGE[0]) / LOGIT_BINS
    head_offset = (torch.arange(batch * n_heads, device=device).view(batch, n_kv, groups, 1, 1) * LOGIT_BINS)
    chunk = max(1, rows_per_chunk(n_heads, n_keys) // 2)
    for start in range(0, n_queries, chunk):
        rows = slice(start, min(start + chunk, n_queries))
        t = rows.stop - rows.start
        hi = min(n_keys, rows.stop + n_keys - n_queries) if causal else n_keys
        visible = key_positions_visible(n_queries, n_keys, rows, causal, q.device)[:, :hi]  # (t, hi)
        count = visible.sum(-1).to(dtype)  # (t,)
        q_rows = q[:, :, rows].to(dtype).reshape(batch, n_kv, groups * t, head_dim)
        raw = torch.matmul(q_rows, kd[:, :, :hi].transpose(-1, -2)).mul_(scale).view(batch, n_kv, groups, t, hi)
        raw.masked_fill_(~visible, 0.0)
        vis_f = visible.to(dtype)

        # Exact softmax output (the target) from the unclamped logits.
        masked = raw.masked_fill(~visible, -math.inf)
        target = torch.matmul(torch.softmax(masked, -1).view(batch, n_kv, groups * t, hi), vd[:, :, :hi])
        target = target.view(batch, n_kv, groups, t, -1)
        norm = target.norm(dim=-1)  # (B, Hkv, G, t)
        target_norm[:, :, rows] = norm.reshape(batch, n_heads, t).float()
        unit_target = target / norm[..., None]

        # Logit range and histogram, on the unclamped logits of visible cells.
        logit_min = torch.minimum(logit_min, raw.masked_fill(~visible, math.inf).amin((-1, -2)))
        logit_max = torch.maximum(logit_max, masked.amax((-1, -2)))
        bins = ((raw - bin_low) / bin_width).floor_().clamp_(0, LOGIT_BINS - 1).long() + head_offset
        hist += torch.bincount(bins[visible.expand_as(bins)], minlength=hist.numel())
        visible_total += visible.sum().item()

        s = raw.clamp(min=low, max=high) if (low is not None or high is not None) else raw
        log_exact = torch.logsumexp(s.masked_fill(~visible, -math.inf), -1)  # (B, Hkv, G, t)
        term = vis_f.expand_as(s).clone()
        weights = torch.zeros_like(s)
        for n in range(n_orders):
            if n > 0:
                term.mul_(s).div_(n)
            weights += term
            denominator = weights.sum(-1)  # masked cells hold 0
            per_head[0, n] += ((weights < 0) & visible).sum((-1, -2))
            per_head[1, n] += (denominator <= 0).sum(-1)
            per_head[2, n] += (denominator * torch.exp(-log_exact) < SMALL_DENOMINATOR).sum(-1)
            per_head[3, n] += term.abs().sum((-1, -2))
            if not errors:
                continue
            numerator = torch.matmul(weights.view(batch, n_kv, groups * t, hi), vd[:, :, :hi])
            numerator = numerator.view(batch, n_kv, groups, t, -1)
            outputs = {
                "taylor": numerator / denominator[..., None],
                "softmax": numerator * torch.exp(-log_exact)[..., None],
                "l2": numerator / numerator.norm(dim=-1, keepdim=True),
                "none": numerator / count[:, None],
            }
            for name, output in outputs.items():
                if name == "l2":
                    rel = (output - unit_target).norm(dim=-1)
                else:
                    rel = (output - target).norm(dim=-1) / norm
                error[name][n, :, :, rows] = rel.reshape(batch, n_heads, t).float()
    shape = (n_orders, batch, n_heads)
    return TaylorSweep(
        error=error,
        target_norm=target_norm,
        negative_weights=(per_head[0] / visible_total).reshape(shape).float(),
        nonpositive_denominator=(per_head[1] / n_queries).reshape(shape).float(),
        small_denominator=(per_head[2] / n_queries).reshape(shape).float(),
        term_mean=(per_head[3] / visible_total).reshape(shape).float(),
        logit_min=logit_min.reshape(batch, n_heads).float(),
        logit_max=logit_max.reshape(batch, n_heads).float(),
        logit_hist=hist.view(batch, n_heads, LOGIT_BINS),
    )
