"""pooled_attention_map: attention probabilities pooled into block x block tiles without the (T, S) matrix.

fused.py is the Triton kernel (imported only when it runs), chunked.py the torch path for the CPU, naive.py the fp64
reference the tests compare both with.
"""

from __future__ import annotations

import torch

from attnscope.kernels.pooled_map import chunked
from attnscope.kernels.pooled_map.chunked import pool_tiles
from attnscope.kernels.utils import check_rule, default_scale, resolve_backend, unsupported_by_triton

__all__ = ["REDUCTIONS", "pool_tiles", "pooled_attention_map"]

REDUCTIONS = ("mean", "max")


def pooled_attention_map(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    block: int = 64,
    reduce: str = "mean",
    causal: bool = True,
    scale: float | None = None,
    hide_sink: bool = False,
    mask: torch.Tensor | None = None,
    softcap: float | None = None,
    window: int | None = None,
    sinks: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention probabilities pooled into block x block tiles without building the (T, S) matrix.

    Args:
        q: (B, Hq, T, D); k: (B, Hkv, S, D) with Hq % Hkv == 0.
        block: tile side in tokens (1 = the exact map).
        reduce: "mean" over the tile's visible cells, or "max".
        causal: query row i sees keys 0 .. i + S - T.
        scale: logits are scale * q.k; default 1/sqrt(D).
        hide_sink: leave key 0 out of every tile (weights are not renormalised).
        mask: bool, broadcastable to (B, Hq, T, S), True = visible; replaces `causal` (padding).
        softcap: logits s -> softcap * tanh(s / softcap) before the softmax (Gemma 2).
        window: sliding window (causal only, no mask): query row i (key position p = i + S - T) sees keys
            p - window < j <= p. Key tiles left of every row's window cost nothing.
        sinks: (Hq,) learned sink logits (gpt-oss), used as given: one more term exp(sinks[h]) in each row's
            normaliser with no key of its own, so the map shows the real keys' weights, which sum to 1 - p_sink.
        backend: "auto" (Triton on CUDA, torch elsewhere), "triton" or "torch". With an explicit mask, "auto" is
            the torch path and "triton" raises ValueError: the Triton kernel does not take one.

    Returns:
        (B, Hq, ceil(T/block), ceil(S/block)) fp32; NaN for tiles with no visible cell.
    """
    rule = check_rule(q, k, causal=causal, mask=mask, softcap=softcap, window=window, sinks=sinks)
    if block < 1:
        raise ValueError(f"block must be >= 1; got {block}.")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}; got {reduce!r}.")
    scale = default_scale(scale, q.shape[-1])
    options = dict(block=block, reduce=reduce, causal=causal, scale=scale, hide_sink=hide_sink,
                   softcap=rule["softcap"], window=rule["window"], sinks=rule["sinks"])
    if resolve_backend(backend, q.device, unsupported=unsupported_by_triton(rule)) == "torch":
        return chunked.pooled_attention_map(q, k, mask=rule["mask"], **options)
    from attnscope.kernels.pooled_map import fused  # imports triton

    return fused._launch(q, k, **options)
