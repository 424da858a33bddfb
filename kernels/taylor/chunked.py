"""CPU (and fallback) torch path for Taylor-order attention: chunks of query rows, memory O(chunk x S) per head.

Each chunk computes only the keys some row of it sees (pooled_map.chunked.key_range: the causal frontier, a sliding
window, the span of an explicit mask), so a window of w keys costs O(T (w + chunk)), not O(T S). Logits are scaled,
softcapped (c tanh(s / c)), then clamped; a learned sink adds its term to the "taylor" and "softmax" denominators
(naive.py's module docstring).
"""

from __future__ import annotations

import math

import torch

from attnscope.kernels.attention_stats.chunked import grouped_mask, rows_per_chunk
from attnscope.kernels.pooled_map.chunked import key_range, visible_keys
from attnscope.kernels.taylor.naive import (DENOMINATORS, LOGIT_BINS, LOGIT_RANGE, SMALL_DENOMINATOR, TaylorSweep)


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


def visible_cells(rows: slice, lo: int, hi: int, *, n_queries: int, n_keys: int, causal: bool, window: int | None,
                  mask_rows: torch.Tensor | None, n_kv: int, device) -> torch.Tensor:
    """Which keys lo .. hi - 1 the query rows `rows` see, broadcastable to the grouped layout (B, Hkv, G, t, hi - lo):
    (1, 1, 1, t, hi - lo) under the rule, (b, Hkv or 1, G or 1, t, hi - lo) under an explicit mask."""
    if mask_rows is not None:
        return grouped_mask(mask_rows[..., lo:hi], n_kv)
    return visible_keys(rows, lo, hi, n_queries=n_queries, n_keys=n_keys, causal=causal, window=window,
                        device=device)[None, None, None]


def model_logits(q_rows: torch.Tensor, keys: torch.Tensor, *, scale: float, softcap: float | None) -> torch.Tensor:
    """scale * q.k (softcapped when asked) for q_rows (B, Hkv, G t, D) against keys (B, Hkv, n, D)."""
    scores = torch.matmul(q_rows, keys.transpose(-1, -2)).mul_(scale)
    if softcap is not None:
        scores.div_(softcap).tanh_().mul_(softcap)
    return scores


def taylor_attention(q, k, v, *, order: int, denominator: str, clamp, causal: bool, scale: float,
                     mask: torch.Tensor | None = None, softcap: float | None = None, window: int | None = None,
                     sinks: torch.Tensor | None = None) -> torch.Tensor:
    """q (B, Hq, T, D), k (B, Hkv, S, D), v (B, Hkv, S, Dv); mask None or a 4-D bool view (B or 1, Hq or 1, T, S)
    replacing the causal rule; sinks (Hq,) fp32. Returns (B, Hq, T, Dv) fp32."""
    batch, n_heads, n_queries, head_dim = q.shape
    n_kv, n_keys = k.shape[1], k.shape[2]
    groups = n_heads // n_kv
    causal = causal and mask is None
    low, high = clamp_bounds(clamp)
    k32, v32 = k.float(), v.float()
    sink = None if sinks is None else sinks.view(1, n_kv, groups, 1, 1)
    out = torch.empty(batch, n_heads, n_queries, v.shape[-1], device=q.device)
    chunk = rows_per_chunk(n_heads, n_keys)
    for start in range(0, n_queries, chunk):
        rows = slice(start, min(start + chunk, n_queries))
        t = rows.stop - rows.start
        mask_rows = None if mask is None else mask[:, :, rows]
        lo, hi = key_range(rows, n_queries, n_keys, causal=causal, window=window, mask_rows=mask_rows)
        q_rows = q[:, :, rows].float().reshape(batch, n_kv, groups * t, head_dim)
        scores = model_logits(q_rows, k32[:, :, lo:hi], scale=scale, softcap=softcap)
        if low is not None or high is not None:
            scores.clamp_(min=low, max=high)
        scores = scores.view(batch, n_kv, groups, t, hi - lo)
        visible = visible_cells(rows, lo, hi, n_queries=n_queries, n_keys=n_keys, causal=causal, window=window,
                                mask_rows=mask_rows, n_kv=n_kv, device=q.device)
        weights = horner(scores, order).masked_fill_(~visible, 0.0)
        numerator = torch.matmul(weights.view(batch, n_kv, groups * t, hi - lo), v32[:, :, lo:hi])
        numerator = numerator.view(batch, n_kv, groups, t, -1)
        if denominator == "taylor":
            total = weights.sum(-1, keepdim=True)
            numerator /= total if sink is None else total + horner(sink, order)
        elif denominator == "softmax":
            log_total = torch.logsumexp(scores.masked_fill(~visible, float("-inf")), -1, keepdim=True)
            if sink is not None:
                log_total = torch.logaddexp(log_total, sink)
            numerator *= torch.exp(-log_total)
        elif denominator == "l2":
            numerator /= numerator.norm(dim=-1, keepdim=True)
        else:
            numerator /= visible.sum(-1, keepdim=True)
        out[:, :, rows] = numerator.reshape(batch, n_heads, t, -1)
    return out


def taylor_sweep(q, k, v, *, max_order: int, clamp, causal: bool, scale: float, mask: torch.Tensor | None = None,
                 softcap: float | None = None, window: int | None = None, sinks: torch.Tensor | None = None,
                 dtype: torch.dtype = torch.float64, errors: bool = True) -> TaylorSweep:
    """Every order 0..max_order and every denominator from one pass over chunks of query rows.

    The logits, the exact softmax output and each order's weights are built once per chunk; order n adds one term
    (term_n = term_{n-1} * s / n) and one (rows x S) @ (S x Dv) product, so the sweep costs about N + 2 attention
    passes instead of 4 (N + 1) + 1 separate calls. Computed in `dtype` (fp64 by default: the sum denominator
    cancels badly for large logits, and the page compares orders whose errors differ by many decades).
    With errors=False only the diagnostics are computed (the Triton path measures the errors itself). A learned
    sink's polynomial grows beside the weights' (its own term_n) and joins the sum denominator; exp(sink) joins the
    exact one and the target's normaliser.
    """
    batch, n_heads, n_queries, head_dim = q.shape
    n_kv, n_keys = k.shape[1], k.shape[2]
    groups = n_heads // n_kv
    n_orders = max_order + 1
    causal = causal and mask is None
    low, high = clamp_bounds(clamp)
    device = q.device
    kd, vd = k.to(dtype), v.to(dtype)
    sink = None if sinks is None else sinks.to(dtype).view(1, n_kv, groups, 1)  # per row (B, Hkv, G, t)
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
        mask_rows = None if mask is None else mask[:, :, rows]
        lo, hi = key_range(rows, n_queries, n_keys, causal=causal, window=window, mask_rows=mask_rows)
        visible = visible_cells(rows, lo, hi, n_queries=n_queries, n_keys=n_keys, causal=causal, window=window,
                                mask_rows=mask_rows, n_kv=n_kv, device=device)  # broadcasts to (B, Hkv, G, t, n)
        count = visible.sum(-1).to(dtype)  # (..., t)
        q_rows = q[:, :, rows].to(dtype).reshape(batch, n_kv, groups * t, head_dim)
        raw = model_logits(q_rows, kd[:, :, lo:hi], scale=scale, softcap=softcap).view(batch, n_kv, groups, t, -1)
        raw.masked_fill_(~visible, 0.0)
        vis_f = visible.to(dtype)

        # Exact softmax output (the target) from the unclamped logits, the sink in its normaliser.
        masked = raw.masked_fill(~visible, -math.inf)
        if sink is None:
            probs = torch.softmax(masked, -1)
        else:
            probs = torch.exp(masked - torch.logaddexp(torch.logsumexp(masked, -1), sink)[..., None])
        if mask is not None:  # a row that sees no key: 0, not the NaN of a softmax over nothing
            probs = probs.nan_to_num_(0.0)
        target = torch.matmul(probs.view(batch, n_kv, groups * t, hi - lo), vd[:, :, lo:hi])
        target = target.view(batch, n_kv, groups, t, -1)
        norm = target.norm(dim=-1)  # (B, Hkv, G, t)
        target_norm[:, :, rows] = norm.reshape(batch, n_heads, t).float()
        unit_target = target / norm[..., None]

        # Logit range and histogram, on the unclamped logits of visible cells.
        logit_min = torch.minimum(logit_min, raw.masked_fill(~visible, math.inf).amin((-1, -2)))
        logit_max = torch.maximum(logit_max, masked.amax((-1, -2)))
        bins = ((raw - bin_low) / bin_width).floor_().clamp_(0, LOGIT_BINS - 1).long() + head_offset
        hist += torch.bincount(bins[visible.expand_as(bins)], minlength=hist.numel())
        visible_total += visible.expand(batch, n_kv, groups, t, hi - lo).sum((-1, -2))

        s = raw.clamp(min=low, max=high) if (low is not None or high is not None) else raw
        log_exact = torch.logsumexp(s.masked_fill(~visible, -math.inf), -1)  # (B, Hkv, G, t)
        if sink is not None:
            log_exact = torch.logaddexp(log_exact, sink)
            sink_term, sink_weight = torch.ones_like(sink), torch.zeros_like(sink)
        term = vis_f.expand_as(s).clone()
        weights = torch.zeros_like(s)
        for n in range(n_orders):
            if n > 0:
                term.mul_(s).div_(n)
            weights += term
            denominator = weights.sum(-1)  # masked cells hold 0
            if sink is not None:
                if n > 0:
                    sink_term = sink_term * sink / n
                sink_weight = sink_weight + sink_term
                denominator = denominator + sink_weight
            per_head[0, n] += ((weights < 0) & visible).sum((-1, -2))
            per_head[1, n] += (denominator <= 0).sum(-1)
            per_head[2, n] += (denominator * torch.exp(-log_exact) < SMALL_DENOMINATOR).sum(-1)
            per_head[3, n] += term.abs().sum((-1, -2))
            if not errors:
                continue
            numerator = torch.matmul(weights.view(batch, n_kv, groups * t, hi - lo), vd[:, :, lo:hi])
            numerator = numerator.view(batch, n_kv, groups, t, -1)
            outputs = {
                "taylor": numerator / denominator[..., None],
                "softmax": numerator * torch.exp(-log_exact)[..., None],
                "l2": numerator / numerator.norm(dim=-1, keepdim=True),
                "none": numerator / count[..., None],
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
