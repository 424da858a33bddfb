"""Readable fp64 reference for per-row attention statistics: builds the full (T, S) matrix, for tests only.

For query row i (key position i + S - T) with logits s_j = scale * q_i . k_j (then softcap * tanh(s_j / softcap)
when a softcap is given) and probabilities p_j = softmax_j(s_j) over the visible keys (the explicit mask when given,
else the causal or full rule):
    lse           = log sum_j exp(s_j)
    entropy       = -sum_j p_j log p_j = lse - sum_j p_j s_j          (nats)
    max_weight    = max_j p_j,  argmax = its key index (first on ties)
    sink_mass     = p_0
    mean_distance = sum_j p_j |(i + S - T) - j|
    topk_weights, topk_indices = the topk largest p_j, descending; a row that sees fewer than topk keys gets
                    weight 0 and index -1 in the slots past them
    output        = sum_j p_j v_j
A row that sees no key at all (possible only under an explicit mask) has every p_j = 0: lse = -inf, entropy,
max_weight, sink_mass, mean_distance and output 0, argmax 0, topk weights 0 and indices -1.

With a sliding window w the visible keys are those of the causal rule with j > i + S - T - w.
With learned sinks (one logit z_h per query head, gpt-oss's s_aux) the softmax runs over the visible keys plus one
extra cell of logit z_h that has no value and no position:
    lse               = log (sum_j exp(s_j) + exp(z_h))
    learned_sink_mass = exp(z_h - lse)
    entropy           = -sum over the keys and the sink cell of p log p
    max_weight        = the largest weight among the keys and the sink cell; argmax = -1 when it is the sink cell
    sink_mass, mean_distance, topk, output: over the real keys only (their weights sum to 1 - learned_sink_mass)
A row that sees no key then puts all its weight on the sink cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnscope.kernels.utils import default_scale, visibility


@dataclass
class AttentionStats:
    lse: torch.Tensor  # (B, Hq, T) fp32 log-sum-exp of the scaled logits; -inf for a row that sees no key
    entropy: torch.Tensor  # (B, Hq, T) fp32, nats
    max_weight: torch.Tensor  # (B, Hq, T) fp32
    argmax: torch.Tensor | None  # (B, Hq, T) int64 key index of the largest weight; None when not asked for
    sink_mass: torch.Tensor  # (B, Hq, T) fp32 weight on key 0
    mean_distance: torch.Tensor  # (B, Hq, T) fp32 expected |query position - key position|
    topk_weights: torch.Tensor | None = None  # (B, Hq, T, topk) fp32, descending
    topk_indices: torch.Tensor | None = None  # (B, Hq, T, topk) int64
    output: torch.Tensor | None = None  # (B, Hq, T, Dv) in v's dtype, when v was given
    learned_sink_mass: torch.Tensor | None = None  # (B, Hq, T) fp32 weight of the learned sink cell, with sinks


def masked_scores(q, k, *, causal: bool, scale: float | None, mask: torch.Tensor | None = None,
                  softcap: float | None = None, dtype: torch.dtype = torch.float64,
                  window: int | None = None) -> torch.Tensor:
    """(B, Hq, T, S) logits computed in `dtype` from the repeated keys, softcapped if asked; -inf where hidden."""
    groups = q.shape[1] // k.shape[1]
    keys = k.to(dtype).repeat_interleave(groups, dim=1)  # (B, Hq, S, D)
    scores = torch.matmul(q.to(dtype), keys.transpose(-1, -2)) * default_scale(scale, q.shape[-1])
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    visible = visibility(q.shape[2], k.shape[2], causal=causal, mask=mask, device=q.device, window=window)
    return scores.masked_fill(~visible, float("-inf"))


def probabilities(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis; a row with every logit -inf (no visible key) is all zeros, not NaN."""
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)


def attention_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor | None = None,
    *,
    causal: bool = True,
    scale: float | None = None,
    topk: int = 0,
    mask: torch.Tensor | None = None,
    softcap: float | None = None,
    window: int | None = None,
    sinks: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> AttentionStats:
    """Full-matrix statistics computed in `dtype` (fp64 for the reference; the inputs' own dtype gives the error plain
    torch makes at that precision). q (B, Hq, T, D), k (B, Hkv, S, D), v (B, Hkv, S, Dv); mask broadcastable to
    (B, Hq, T, S), True = visible, replaces the causal rule; window narrows it; sinks (Hq,) learned sink logits."""
    groups = q.shape[1] // k.shape[1]
    n_queries, n_keys = q.shape[2], k.shape[2]
    scores = masked_scores(q, k, causal=causal, scale=scale, mask=mask, softcap=softcap, dtype=dtype, window=window)
    if sinks is not None:  # the sink cell as a last column, dropped after the softmax
        sink_column = sinks.to(dtype)[None, :, None, None].expand(*scores.shape[:3], 1)
        scores = torch.cat([scores, sink_column], dim=-1)
    lse = torch.logsumexp(scores, dim=-1)
    probs = probabilities(scores)
    plogp = torch.where(probs > 0, probs * torch.log(probs), torch.zeros_like(probs))
    max_weight, argmax = probs.max(dim=-1)
    learned = None
    if sinks is not None:
        learned = probs[..., -1]
        argmax = argmax.masked_fill(argmax == n_keys, -1)
        scores, probs = scores[..., :-1], probs[..., :-1]
    query_pos = torch.arange(n_queries, device=q.device) + (n_keys - n_queries)
    distance = (query_pos[:, None] - torch.arange(n_keys, device=q.device)[None, :]).abs().to(dtype)
    stats = AttentionStats(
        lse=lse.float(),
        entropy=(-plogp.sum(-1)).float(),
        max_weight=max_weight.float(),
        argmax=argmax,
        sink_mass=probs[..., 0].float(),
        mean_distance=(probs * distance).sum(-1).float(),
        learned_sink_mass=None if learned is None else learned.float(),
    )
    if topk > 0:
        top_scores, indices = scores.topk(topk, dim=-1)
        stats.topk_weights = torch.exp(top_scores - lse[..., None]).nan_to_num(0.0).float()
        stats.topk_indices = indices.masked_fill(torch.isinf(top_scores), -1)
    if v is not None:
        v64 = v.to(dtype).repeat_interleave(groups, dim=1)  # (B, Hq, S, Dv)
        stats.output = torch.matmul(probs, v64).to(v.dtype)
    return stats
