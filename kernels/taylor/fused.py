"""Taylor-order attention in Triton, plus the public functions taylor_attention, taylor_error and taylor_sweep.

One program per (query tile, batch x head) walks the key tiles once: logits s = scale q.k (fp32), optionally
clamped, weights w = sum_{n<=ORDER} s^n/n! by Horner's rule (ORDER is a compile-time constant, so the loop unrolls),
numerator += w @ V, and the denominator of choice alongside: sum w ("taylor"), an online-softmax max and sum of
exp(s) ("softmax", so exp never overflows), the count of visible keys ("none"), or nothing until the end ("l2",
which normalises the finished numerator over the value dimension). Negative weights and denominators near zero are
returned as the mathematics gives them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from kernels.attention_stats.fused import attention_stats
from kernels.taylor import chunked
from kernels.taylor.naive import DENOMINATORS, TaylorSweep
from kernels.utils import (
    check_qkv,
    default_scale,
    dot_precision,
    empty_output,
    interpreter_dot_upcast,
    key_tile_scores,
    resolve_backend,
)

MAX_ORDER = 20
_DENOMINATOR_CODE = {name: code for code, name in enumerate(DENOMINATORS)}


@triton.jit
def taylor_attention_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr,  # q (B, Hq, T, D), k (B, Hkv, S, D), v (B, Hkv, S, DV), o (B, Hq, T, DV) fp32
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    n_heads, n_queries, n_keys, head_dim, value_dim, groups, scale, clamp_low, clamp_high,
    ORDER: tl.constexpr, DENOMINATOR: tl.constexpr, CAUSAL: tl.constexpr,
    CLAMP_LOW: tl.constexpr, CLAMP_HIGH: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    i_m, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // n_heads, i_bh % n_heads
    i_kv = i_h // groups
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_d = tl.arange(0, BLOCK_D)
    o_dv = tl.arange(0, BLOCK_DV)
    m_m = o_m < n_queries
    pos_m = o_m + (n_keys - n_queries)

    p_q = q_ptr + i_b * stride_qb + i_h * stride_qh + o_m[:, None] * stride_qt + o_d[None, :] * stride_qd
    b_q = tl.load(p_q, mask=m_m[:, None] & (o_d[None, :] < head_dim), other=0.0)
    if DOT_UPCAST:
        b_q = b_q.to(tl.float32)
    b_num = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    b_den = tl.zeros([BLOCK_M], tl.float32)  # sum w, or sum exp(s - m), or the visible count
    b_m = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max for the softmax denominator

    hi = n_keys
    if CAUSAL:
        hi = tl.minimum(n_keys, (i_m + 1) * BLOCK_M + (n_keys - n_queries))
    for start_n in range(0, hi, BLOCK_N):
        o_n = start_n + tl.arange(0, BLOCK_N)
        m_n = o_n < n_keys
        b_s, visible = key_tile_scores(b_q, k_ptr + i_b * stride_kb + i_kv * stride_kh, o_n, o_d, m_m, pos_m, n_keys,
                                       head_dim, stride_ks, stride_kd, scale, CAUSAL, DOT_PRECISION, DOT_UPCAST)
        p_v = v_ptr + i_b * stride_vb + i_kv * stride_vh + o_n[:, None] * stride_vs + o_dv[None, :] * stride_vd
        b_v = tl.load(p_v, mask=m_n[:, None] & (o_dv[None, :] < value_dim), other=0.0).to(tl.float32)
        if CLAMP_LOW:
            b_s = tl.maximum(b_s, clamp_low)
        if CLAMP_HIGH:
            b_s = tl.minimum(b_s, clamp_high)
        b_w = tl.zeros([BLOCK_M, BLOCK_N], tl.float32) + 1.0
        for i in tl.static_range(ORDER):
            b_w = 1.0 + b_w * b_s / (ORDER - i)  # Horner, j = ORDER .. 1
        b_w = tl.where(visible, b_w, 0.0)
        # The weights can be large and of either sign: keep the product with V in fp32.
        b_num += tl.dot(b_w, b_v, input_precision="ieee")
        if DENOMINATOR == 0:  # taylor
            b_den += tl.sum(b_w, axis=1)
        elif DENOMINATOR == 1:  # softmax, online so exp never overflows
            m_new = tl.maximum(b_m, tl.max(tl.where(visible, b_s, float("-inf")), axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
            b_den = b_den * tl.exp(b_m - m_safe) + tl.sum(tl.where(visible, tl.exp(b_s - m_safe[:, None]), 0.0), axis=1)
            b_m = m_new
        elif DENOMINATOR == 3:  # none: divide by the number of visible keys
            b_den += tl.sum(visible.to(tl.float32), axis=1)

    if DENOMINATOR == 1:
        b_out = b_num * (tl.exp(-b_m) / b_den)[:, None]
    elif DENOMINATOR == 2:  # l2
        b_out = b_num / tl.sqrt(tl.sum(b_num * b_num, axis=1))[:, None]
    else:
        b_out = b_num / tl.where(m_m, b_den, 1.0)[:, None]
    p_o = o_ptr + (i_bh * n_queries + o_m)[:, None] * value_dim + o_dv[None, :]
    tl.store(p_o, b_out, mask=m_m[:, None] & (o_dv[None, :] < value_dim))


def _launch(q, k, v, *, order, denominator, clamp, causal, scale, block_m: int = 32, block_n: int = 32):
    batch, n_heads, n_queries, head_dim = q.shape
    low, high = chunked.clamp_bounds(clamp)
    out = empty_output(batch, n_heads, n_queries, v.shape[-1], device=q.device, dtype=torch.float32)
    taylor_attention_kernel[(triton.cdiv(n_queries, block_m), batch * n_heads)](
        q, k, v, out, *q.stride(), *k.stride(), *v.stride(),
        n_heads, n_queries, k.shape[2], head_dim, v.shape[-1], n_heads // k.shape[1], scale,
        0.0 if low is None else low, 0.0 if high is None else high,
        ORDER=order, DENOMINATOR=_DENOMINATOR_CODE[denominator], CAUSAL=causal,
        CLAMP_LOW=low is not None, CLAMP_HIGH=high is not None,
        DOT_PRECISION=dot_precision(q.dtype), DOT_UPCAST=interpreter_dot_upcast(q.dtype),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        BLOCK_DV=max(16, triton.next_power_of_2(v.shape[-1])),
    )
    return out


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
    return _launch(q, k, v, order=order, denominator=denominator, clamp=clamp, causal=causal, scale=scale)


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
