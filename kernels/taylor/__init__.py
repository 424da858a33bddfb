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
from attnscope.kernels.utils import check_qkv, default_scale, resolve_backend

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
    backend: str = "auto",
) -> torch.Tensor:
    """Attention with exp replaced by its order-`order` Taylor polynomial, without the (T, S) matrix.

    Args:
        q: (B, Hq, T, D); k: (B, Hkv, S, D); v: (B, Hkv, S, Dv) with Hq % Hkv == 0.
        order: highest power of the series, 0..20 (1 = linear attention with the identity feature map).
        denominator: "taylor" (row sum of the series), "softmax" (exact exp row sum), "l2" (L2-normalise the
            numerator over Dv) or "none" (divide by the number of visible keys).
        clamp: clamp the scaled logits before the series and the exact exp: a number from above only, a pair
            (low, high) both sides; None leaves them.
        causal: query row i sees keys 0 .. i + S - T.
        scale: logits are scale * q.k; default 1/sqrt(D).
        backend: "auto" (Triton on CUDA, torch elsewhere), "triton" or "torch".

    Returns:
        (B, Hq, T, Dv) fp32 (Taylor outputs can leave the fp16 range).
    """
    check_qkv(q, k, v, causal=causal)
    _check_taylor(order, denominator, clamp)
    scale = default_scale(scale, q.shape[-1])
    if resolve_backend(backend, q.device) == "torch":
        return chunked.taylor_attention(q, k, v, order=order, denominator=denominator, clamp=clamp, causal=causal,
                                        scale=scale)
    from attnscope.kernels.taylor import fused  # imports triton

    return fused._launch(q, k, v, order=order, denominator=denominator, clamp=clamp, causal=causal, scale=scale)


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
    backend: str = "auto",
) -> torch.Tensor:
    """Per-row relative error ||O_n - O_softmax|| / ||O_softmax|| for every order in `orders`, in one call.

    The target is exact softmax attention from attention_stats (for "l2": its L2-normalised rows, since a positive
    per-row scale cancels). Memory stays O(T x Dv) per order; no (T, S) tensor is built.

    Returns:
        (len(orders), B, Hq, T) fp32.
    """
    check_qkv(q, k, v, causal=causal)
    for order in orders:
        _check_taylor(order, denominator, clamp)
    target = attention_stats(q, k, v, causal=causal, scale=scale, backend=backend).output.float()
    if denominator == "l2":
        target = target / target.norm(dim=-1, keepdim=True)
    target_norm = target.norm(dim=-1)
    errors = [
        (taylor_attention(q, k, v, order=n, denominator=denominator, clamp=clamp, causal=causal, scale=scale,
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
    backend: str = "auto",
) -> TaylorSweep:
    """Orders 0..max_order against exact softmax for every denominator at once, plus what explains the errors.

    Returns a TaylorSweep: per-row relative errors for each denominator (the "l2" target is the L2-normalised
    softmax output), the softmax output's row norms, and per head and order the fraction of negative weights, of rows
    whose sum denominator is <= 0 or below 1e-2 of the exact one, the mean size of the order's term |s^n/n!|, and the
    range and histogram of the scaled logits. The torch path (CPU) computes everything in one fp64 pass over chunks
    of rows; the Triton path measures the errors with the taylor_attention kernel (fp32) and the diagnostics with a
    chunked pass on the GPU.
    """
    check_qkv(q, k, v, causal=causal)
    _check_taylor(max_order, "taylor", clamp)
    scale = default_scale(scale, q.shape[-1])
    if resolve_backend(backend, q.device) == "torch":
        return chunked.taylor_sweep(q, k, v, max_order=max_order, clamp=clamp, causal=causal, scale=scale)
    sweep = chunked.taylor_sweep(q, k, v, max_order=max_order, clamp=clamp, causal=causal, scale=scale,
                                 dtype=torch.float32, errors=False)
    for name in DENOMINATORS:
        sweep.error[name] = taylor_error(q, k, v, orders=range(max_order + 1), denominator=name, clamp=clamp,
                                         causal=causal, scale=scale, backend=backend)
    return sweep
