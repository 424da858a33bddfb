"""attention_stats: per-query-row statistics of softmax attention (and its output) without the (T, S) matrix.

fused.py holds the Triton kernels (imported only when they run: the statistics in one pass, top-k in a second),
chunked.py the torch path for the CPU, naive.py the fp64 reference the tests compare both with.
"""

from __future__ import annotations

import torch

from attnscope.kernels.attention_stats import chunked
from attnscope.kernels.attention_stats.naive import AttentionStats
from attnscope.kernels.utils import check_rule, default_scale, resolve_backend, unsupported_by_triton

__all__ = ["AttentionStats", "attention_stats"]


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
    argmax: bool = True,
    window: int | None = None,
    sinks: torch.Tensor | None = None,
    backend: str = "auto",
) -> AttentionStats:
    """Per-query-row attention statistics without building the (T, S) matrix.

    Args:
        q: (B, Hq, T, D) queries; k: (B, Hkv, S, D) keys; v: optional (B, Hkv, S, Dv) values. Hq % Hkv == 0.
        causal: query row i sees keys 0 .. i + S - T.
        scale: logits are scale * q.k; default 1/sqrt(D).
        topk: also return the topk largest weights and their key indices per row.
        mask: bool, broadcastable to (B, Hq, T, S), True = visible; replaces `causal` (padding: any other pattern).
        softcap: logits s -> softcap * tanh(s / softcap) before the softmax (Gemma 2).
        argmax: also return each row's argmax. The torch path finds the row maximum about 3x faster without it; the
            Triton kernel tracks it at no cost, and leaves it out as asked.
        window: sliding window (with causal=True, no mask): row i sees keys i + S - T - window < j <= i + S - T.
        sinks: (Hq,) learned sink logits (gpt-oss's s_aux): an extra cell of every row's softmax with no value.
        backend: "auto" (Triton on CUDA, torch elsewhere), "triton" or "torch". With an explicit mask "auto" is the
            torch path and "triton" raises ValueError; the Triton kernel takes window, sinks and softcap.

    Returns:
        AttentionStats with (B, Hq, T) fields lse, entropy, max_weight, argmax (None with argmax=False),
        sink_mass, mean_distance; with
        topk > 0 topk_weights / topk_indices (B, Hq, T, topk); with v the attention output (B, Hq, T, Dv).
        With sinks also learned_sink_mass (B, Hq, T); max_weight and entropy then count the sink cell and argmax is
        -1 where it holds the largest weight. A row that sees no key (only under a mask) has lse -inf and zero
        weights, or all its weight on the sink cell (see naive.py).
    """
    rule = check_rule(q, k, v, causal=causal, mask=mask, softcap=softcap, window=window, sinks=sinks)
    if topk < 0 or topk > k.shape[2]:
        raise ValueError(f"topk must be in 0..S={k.shape[2]}; got {topk}.")
    scale = default_scale(scale, q.shape[-1])
    if resolve_backend(backend, q.device, unsupported=unsupported_by_triton(rule)) == "torch":
        return chunked.attention_stats(q, k, v, causal=causal, scale=scale, topk=topk, argmax=argmax, **rule)
    from attnscope.kernels.attention_stats import fused  # imports triton

    stats = fused._launch(q, k, v, causal=causal, scale=scale, topk=topk, window=rule["window"], sinks=rule["sinks"],
                          softcap=rule["softcap"])
    if not argmax:
        stats.argmax = None
    return stats
