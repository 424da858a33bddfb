"""Taylor attention: exp replaced by its order-n polynomial (a sum of n linear RNNs), and its error against softmax.

fused.py is the Triton kernel (imported only when it runs), chunked.py the torch path for the CPU, naive.py the fp64
reference the tests compare both with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attnscope.kernels.attention_stats import attention_stats
from attnscope.kernels.taylor import chunked
from attnscope.kernels.taylor.naive import DENOMINATORS, LOGIT_BINS, LOGIT_RANGE, TaylorSweep, logit_bin_edges
from attnscope.kernels.utils import check_rule, default_scale, resolve_backend, unsupported_by_triton

__all__ = ["DENOMINATORS", "LOGIT_BINS", "LOGIT_RANGE", "MAX_ORDER", "TaylorSweep", "logit_bin_edges",
           "taylor_attention", "taylor_error", "taylor_sweep"]

MAX_ORDER = 20


def _check_taylor(order: int, denominator: str, clamp) -> None:
    if not 0 <= order <= MAX_ORDER:
        raise ValueError(f"order must be in 0..{MAX_ORDER}; got {order}.")
    if denominator not in DENOMINATORS:
        raise ValueError(f"denominator must be one of {DENOMINATORS}; got {denominator!r}.")
    if isinstance(clamp, (tuple, list)) and (len(clamp) != 2 or clamp[0] > clamp[1]):
        raise ValueError(f"clamp must be a number (upper bound) or a pair (low, high) with low <= high; got {clamp}.")


def taylor_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    order: int,
    denominator: str = "taylor",
    clamp: float | tuple[float, float] | None = None,
    causal: bool = True,
    scale: float | None = None,
    mask: torch.Tensor | None = None,
    softcap: float | None = None,
    window: int | None = None,
    sinks: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention with exp replaced by its order-`order` Taylor polynomial, without the (T, S) matrix.

    Args:
        q: (B, Hq, T, D); k: (B, Hkv, S, D); v: (B, Hkv, S, Dv) with Hq % Hkv == 0.
        order: highest power of the series, 0..20 (1 = linear attention with the identity feature map).
        denominator: "taylor" (row sum of the series), "softmax" (exact exp row sum), "l2" (L2-normalise the
            numerator over Dv) or "none" (divide by the number of visible keys).
        clamp: clamp the scaled (softcapped) logits before the series and the exact exp: a number from above only,
            a pair (low, high) both sides; None leaves them.
        causal: query row i sees keys 0 .. i + S - T.
        scale: logits are scale * q.k; default 1/sqrt(D).
        mask: bool, broadcastable to (B, Hq, T, S), True = visible; replaces `causal` (padding). A row that sees no
            key gets NaN (0 / 0) unless a sink gives its denominator a term.
        softcap: logits s -> softcap * tanh(s / softcap) first (Gemma 2): the series is taken of the capped logit.
        window: sliding window (causal only, no mask): query row i (key position p = i + S - T) sees keys
            p - window < j <= p. Key tiles left of every row's window cost nothing.
        sinks: (Hq,) learned sink logits (gpt-oss), used as given (no scale, softcap or clamp): "taylor" adds their
            order-`order` polynomial to the denominator, "softmax" their exp; "l2" and "none" leave them out.
        backend: "auto" (Triton on CUDA, torch elsewhere), "triton" or "torch". With an explicit mask, "auto" is
            the torch path and "triton" raises ValueError: the Triton kernel does not take one.

    Returns:
        (B, Hq, T, Dv) fp32 (Taylor outputs can leave the fp16 range).
    """
    model = check_rule(q, k, v, causal=causal, mask=mask, softcap=softcap, window=window, sinks=sinks)
    _check_taylor(order, denominator, clamp)
    scale = default_scale(scale, q.shape[-1])
    options = dict(order=order, denominator=denominator, clamp=clamp, causal=causal, scale=scale)
    if resolve_backend(backend, q.device, unsupported=unsupported_by_triton(model)) == "torch":
        return chunked.taylor_attention(q, k, v, **options, **model)
    from attnscope.kernels.taylor import fused  # imports triton

    return fused._launch(q, k, v, **options, softcap=model["softcap"], window=model["window"], sinks=model["sinks"])


def taylor_error(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    orders: Sequence[int],
    denominator: str = "taylor",
    clamp: float | tuple[float, float] | None = None,
    causal: bool = True,
    scale: float | None = None,
    mask: torch.Tensor | None = None,
    softcap: float | None = None,
    window: int | None = None,
    sinks: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Per-row relative error ||O_n - O_softmax|| / ||O_softmax|| for every order in `orders`, in one call.

    The target is exact softmax attention from attention_stats under the same mask, window, softcap and sinks (the
    sink in its normaliser; for "l2": its L2-normalised rows, since a positive per-row scale cancels). Memory stays
    O(T x Dv) per order; no (T, S) tensor is built. Arguments as taylor_attention's; a row that sees no key
    (explicit masks only) has a zero target and NaN errors.

    Returns:
        (len(orders), B, Hq, T) fp32.
    """
    model = check_rule(q, k, v, causal=causal, mask=mask, softcap=softcap, window=window, sinks=sinks)
    for order in orders:
        _check_taylor(order, denominator, clamp)
    target = attention_stats(q, k, v, causal=causal, scale=scale, **model, backend=backend).output.float()
    if denominator == "l2":
        target = target / target.norm(dim=-1, keepdim=True)
    target_norm = target.norm(dim=-1)
    errors = [
        (taylor_attention(q, k, v, order=n, denominator=denominator, clamp=clamp, causal=causal, scale=scale, **model,
                          backend=backend) - target).norm(dim=-1) / target_norm
        for n in orders
    ]
    return torch.stack(errors)


def taylor_sweep(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    max_order: int,
    clamp: float | tuple[float, float] | None = None,
    causal: bool = True,
    scale: float | None = None,
    mask: torch.Tensor | None = None,
    softcap: float | None = None,
    window: int | None = None,
    sinks: torch.Tensor | None = None,
    backend: str = "auto",
) -> TaylorSweep:
    """Orders 0..max_order against exact softmax for every denominator at once, plus what explains the errors.

    Returns a TaylorSweep: per-row relative errors for each denominator (the "l2" target is the L2-normalised
    softmax output), the softmax output's row norms, and per head and order the fraction of negative weights, of rows
    whose sum denominator is <= 0 or below 1e-2 of the exact one, the mean size of the order's term |s^n/n!|, and the
    range and histogram of the scaled (softcapped) logits. With a learned sink the target and the sum and exact
    denominators include it (naive.py). Arguments as taylor_attention's. The torch path (CPU) computes everything
    in one fp64 pass over chunks of rows; the Triton path measures the errors with the taylor_attention kernel (fp32)
    and the diagnostics with a chunked pass on the GPU.
    """
    model = check_rule(q, k, v, causal=causal, mask=mask, softcap=softcap, window=window, sinks=sinks)
    _check_taylor(max_order, "taylor", clamp)
    scale = default_scale(scale, q.shape[-1])
    options = dict(max_order=max_order, clamp=clamp, causal=causal, scale=scale)
    if resolve_backend(backend, q.device, unsupported=unsupported_by_triton(model)) == "torch":
        return chunked.taylor_sweep(q, k, v, **options, **model)
    sweep = chunked.taylor_sweep(q, k, v, **options, **model, dtype=torch.float32, errors=False)
    for name in DENOMINATORS:
        sweep.error[name] = taylor_error(q, k, v, orders=range(max_order + 1), denominator=name, clamp=clamp,
                                         causal=causal, scale=scale, **model, backend=backend)
    return sweep
