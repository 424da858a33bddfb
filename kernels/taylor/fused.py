"""Taylor-order attention in Triton; the public functions taylor_attention, taylor_error and taylor_sweep are in
__init__.py.

One program per (query tile, batch x head) walks the key tiles once: logits s = scale q.k (fp32), optionally
clamped, weights w = sum_{n<=ORDER} s^n/n! by Horner's rule (ORDER is a compile-time constant, so the loop unrolls),
numerator += w @ V, and the denominator of choice alongside: sum w ("taylor"), an online-softmax max and sum of
exp(s) ("softmax", so exp never overflows), the count of visible keys ("none"), or nothing until the end ("l2",
which normalises the finished numerator over the value dimension). Negative weights and denominators near zero are
returned as the mathematics gives them.

Real models' masks (naive.py's module docstring): the logits are softcapped before the clamp (kernels.tiles'
soft_capped), a sliding window hides keys at or before a row's position - w and the key loop starts at the first key
the tile's first row sees (O(T w) work), and a learned sink joins the denominator at the end, as its order-ORDER
polynomial ("taylor") or its exp merged into the online softmax sum ("softmax"). The explicit mask stays on the
torch path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from attnscope.kernels.launch import LaunchConfig, block_dim, launch_config
from attnscope.kernels.taylor import chunked
from attnscope.kernels.taylor.naive import DENOMINATORS
from attnscope.kernels.tiles import key_tile_scores, soft_capped
from attnscope.kernels.utils import (
    dot_precision,
    empty_output,
    interpreter_dot_upcast,
)

_DENOMINATOR_CODE = {name: code for code, name in enumerate(DENOMINATORS)}


@triton.jit
def taylor_attention_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr,  # q (B, Hq, T, D), k (B, Hkv, S, D), v (B, Hkv, S, DV), o (B, Hq, T, DV) fp32
    sinks_ptr,  # (Hq,) fp32 sink logits, read only with SINKS
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    n_heads, n_queries, n_keys, head_dim, value_dim, groups, scale, clamp_low, clamp_high, window, softcap,
    ORDER: tl.constexpr, DENOMINATOR: tl.constexpr, CAUSAL: tl.constexpr,
    CLAMP_LOW: tl.constexpr, CLAMP_HIGH: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
    SINKS: tl.constexpr,
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

    lo = 0
    hi = n_keys
    if CAUSAL:
        hi = tl.minimum(n_keys, (i_m + 1) * BLOCK_M + (n_keys - n_queries))
    if WINDOW:  # the first key tile the first row of this tile sees
        lo = tl.maximum(0, i_m * BLOCK_M + (n_keys - n_queries) - window + 1) // BLOCK_N * BLOCK_N
    for start_n in range(lo, hi, BLOCK_N):
        o_n = start_n + tl.arange(0, BLOCK_N)
        m_n = o_n < n_keys
        b_s, visible = key_tile_scores(b_q, k_ptr + i_b * stride_kb + i_kv * stride_kh, o_n, o_d, m_m, pos_m, n_keys,
                                       head_dim, stride_ks, stride_kd, scale, CAUSAL, DOT_PRECISION, DOT_UPCAST)
        if WINDOW:
            visible = visible & (o_n[None, :] > pos_m[:, None] - window)
        if SOFTCAP:
            b_s = soft_capped(b_s, softcap)
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

    if SINKS:  # one more cell of the normaliser, with no value vector
        sink = tl.load(sinks_ptr + i_h)
        if DENOMINATOR == 0:
            sink_weight = 1.0
            for i in tl.static_range(ORDER):
                sink_weight = 1.0 + sink_weight * sink / (ORDER - i)
            b_den += sink_weight
        elif DENOMINATOR == 1:
            m_new = tl.maximum(b_m, sink)
            b_den = b_den * tl.exp(b_m - m_new) + tl.exp(sink - m_new)
            b_m = m_new
    if DENOMINATOR == 1:
        b_out = b_num * (tl.exp(-b_m) / b_den)[:, None]
    elif DENOMINATOR == 2:  # l2
        b_out = b_num / tl.sqrt(tl.sum(b_num * b_num, axis=1))[:, None]
    else:
        b_out = b_num / tl.where(m_m, b_den, 1.0)[:, None]
    p_o = o_ptr + (i_bh * n_queries + o_m)[:, None] * value_dim + o_dv[None, :]
    tl.store(p_o, b_out, mask=m_m[:, None] & (o_dv[None, :] < value_dim))


def taylor_constexprs(*, dtype: torch.dtype, head_dim: int, value_dim: int, order: int, denominator: str,
                      clamp_low: bool, clamp_high: bool, causal: bool, window: bool, softcap: bool, sinks: bool,
                      config: LaunchConfig) -> dict:
    """taylor_attention_kernel's compile-time constants for one launch (benchmarks/gpu_compile.py compiles these)."""
    return dict(ORDER=order, DENOMINATOR=_DENOMINATOR_CODE[denominator], CAUSAL=causal, CLAMP_LOW=clamp_low,
                CLAMP_HIGH=clamp_high, WINDOW=window, SOFTCAP=softcap, SINKS=sinks,
                DOT_PRECISION=dot_precision(dtype), DOT_UPCAST=interpreter_dot_upcast(dtype),
                BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_D=block_dim(head_dim),
                BLOCK_DV=block_dim(value_dim))


def _launch(q, k, v, *, order, denominator, clamp, causal, scale, window: int | None = None,
            softcap: float | None = None, sinks: torch.Tensor | None = None):
    batch, n_heads, n_queries, head_dim = q.shape
    low, high = chunked.clamp_bounds(clamp)
    out = empty_output(batch, n_heads, n_queries, v.shape[-1], device=q.device, dtype=torch.float32)
    config = launch_config("taylor_attention", device=q.device, head_dim=head_dim, dtype=q.dtype)
    taylor_attention_kernel[(triton.cdiv(n_queries, config.block_m), batch * n_heads)](
        q, k, v, out, out if sinks is None else sinks, *q.stride(), *k.stride(), *v.stride(),
        n_heads, n_queries, k.shape[2], head_dim, v.shape[-1], n_heads // k.shape[1], scale,
        0.0 if low is None else low, 0.0 if high is None else high, window or 0, softcap or 1.0,
        **taylor_constexprs(dtype=q.dtype, head_dim=head_dim, value_dim=v.shape[-1], order=order,
                            denominator=denominator, clamp_low=low is not None, clamp_high=high is not None,
                            causal=causal, window=window is not None, softcap=softcap is not None,
                            sinks=sinks is not None, config=config),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return out
