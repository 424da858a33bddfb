"""Fused per-row attention statistics in one pass over key tiles (Triton); the public function is in __init__.py.

Online softmax as in FlashAttention: for each query tile the kernel walks the key tiles once, keeping a running
max m, the running sum l = sum exp(s - m) and, rescaled alongside it, sum exp(s - m) * s (for the entropy
lse - E[s]), sum exp(s - m) * |i - j| (mean distance) and, with V, the output accumulator. The running argmax
follows m. Top-k keeps, per row, TOPK candidate logits; each key tile offers its TOPK best, each replacing the
current smallest candidate when larger. Memory is O(T) per head; the (T, S) matrix never exists.

Grouped-query attention: program (tile, b * Hq + h) reads key/value head h // (Hq // Hkv) in place. A sliding window
starts the key loop at the tile left of the first row's window and hides the keys left of each row's; a softcap maps
the tile's logits through c tanh(s / c) (kernels.tiles.soft_capped); a learned sink
z joins at the end (m' = max(m, z), l' = l exp(m - m') + exp(z - m'), the sums rescaled alike, E[s] gains z's term).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from attnscope.kernels.attention_stats.naive import AttentionStats
from attnscope.kernels.tiles import key_tile_scores, soft_capped
from attnscope.kernels.utils import (
    dot_precision,
    empty_output,
    interpreter_dot_upcast,
)


@triton.jit
def attention_stats_kernel(
    q_ptr, k_ptr, v_ptr,  # (B, Hq, T, D), (B, Hkv, S, D), (B, Hkv, S, DV)
    lse_ptr, entropy_ptr, max_ptr, argmax_ptr, sink_ptr, dist_ptr,  # (B, Hq, T) each, contiguous
    topk_w_ptr, topk_i_ptr,  # (B, Hq, T, TOPK) contiguous
    o_ptr,  # (B, Hq, T, DV) contiguous
    sinks_ptr, learned_ptr,  # (Hq,) fp32 learned sink logits; (B, Hq, T) learned sink mass
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    n_heads, n_queries, n_keys, head_dim, value_dim, groups, scale, window, softcap,
    CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SINKS: tl.constexpr, SOFTCAP: tl.constexpr,
    TOPK: tl.constexpr, TOPK_PAD: tl.constexpr, WITH_V: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    i_m, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // n_heads, i_bh % n_heads
    i_kv = i_h // groups
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)  # query rows
    o_d = tl.arange(0, BLOCK_D)
    m_m = o_m < n_queries
    pos_m = o_m + (n_keys - n_queries)  # key position of each query row (bottom-right alignment)

    p_q = q_ptr + i_b * stride_qb + i_h * stride_qh + o_m[:, None] * stride_qt + o_d[None, :] * stride_qd
    b_q = tl.load(p_q, mask=m_m[:, None] & (o_d[None, :] < head_dim), other=0.0)  # [BLOCK_M, BLOCK_D], input dtype
    if DOT_UPCAST:
        b_q = b_q.to(tl.float32)

    b_m = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max logit
    b_l = tl.zeros([BLOCK_M], tl.float32)  # sum exp(s - m)
    b_ls = tl.zeros([BLOCK_M], tl.float32)  # sum exp(s - m) * s
    b_ld = tl.zeros([BLOCK_M], tl.float32)  # sum exp(s - m) * |pos - j|
    b_arg = tl.zeros([BLOCK_M], tl.int32)
    b_s0 = tl.full([BLOCK_M], float("-inf"), tl.float32)  # logit of key 0
    if WITH_V:
        o_dv = tl.arange(0, BLOCK_DV)
        b_acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    if TOPK > 0:
        o_t = tl.arange(0, TOPK_PAD)
        # Padding slots hold +inf so they are never "the smallest candidate"; they are dropped at the end.
        b_tv = tl.where(o_t[None, :] < TOPK, float("-inf"), float("inf")) + tl.zeros([BLOCK_M, TOPK_PAD], tl.float32)
        b_ti = tl.full([BLOCK_M, TOPK_PAD], -1, tl.int32)

    hi = n_keys
    lo = 0
    if CAUSAL:
        hi = tl.minimum(n_keys, (i_m + 1) * BLOCK_M + (n_keys - n_queries))
    if WINDOW:  # the first key the tile's first row sees, down to a whole key tile
        lo = tl.maximum(0, i_m * BLOCK_M + (n_keys - n_queries) - window + 1) // BLOCK_N * BLOCK_N
    for start_n in range(lo, hi, BLOCK_N):
        o_n = start_n + tl.arange(0, BLOCK_N)
        m_n = o_n < n_keys
        b_s, visible = key_tile_scores(b_q, k_ptr + i_b * stride_kb + i_kv * stride_kh, o_n, o_d, m_m, pos_m, n_keys,
                                       head_dim, stride_ks, stride_kd, scale, CAUSAL, DOT_PRECISION, DOT_UPCAST)
        if SOFTCAP:
            b_s = soft_capped(b_s, softcap)
        if WINDOW:
            visible = visible & (o_n[None, :] > pos_m[:, None] - window)
        b_s = tl.where(visible, b_s, float("-inf"))
        if start_n == 0:
            b_s0 = tl.sum(tl.where(o_n[None, :] == 0, b_s, 0.0), axis=1)

        tile_max, tile_arg = tl.max(b_s, axis=1, return_indices=True)
        m_new = tl.maximum(b_m, tile_max)
        b_arg = tl.where(tile_max > b_m, start_n + tile_arg, b_arg)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet: no -inf - -inf
        alpha = tl.exp(b_m - m_safe)
        b_p = tl.where(visible, tl.exp(b_s - m_safe[:, None]), 0.0)
        distance = tl.abs(pos_m[:, None] - o_n[None, :]).to(tl.float32)
        b_l = b_l * alpha + tl.sum(b_p, axis=1)
        b_ls = b_ls * alpha + tl.sum(b_p * tl.where(visible, b_s, 0.0), axis=1)
        b_ld = b_ld * alpha + tl.sum(b_p * distance, axis=1)
        b_m = m_new
        if WITH_V:
            p_v = v_ptr + i_b * stride_vb + i_kv * stride_vh + o_n[:, None] * stride_vs + o_dv[None, :] * stride_vd
            b_v = tl.load(p_v, mask=m_n[:, None] & (o_dv[None, :] < value_dim), other=0.0)
            if DOT_UPCAST:
                b_v = b_v.to(tl.float32)
            # Like FlashAttention, probabilities meet V in V's dtype (tensor cores for bf16/fp16), accumulating fp32.
            b_acc = b_acc * alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v, input_precision=DOT_PRECISION)
        if TOPK > 0:
            b_cand = b_s
            for _ in tl.static_range(TOPK):
                best, best_at = tl.max(b_cand, axis=1, return_indices=True)
                worst, worst_at = tl.min(b_tv, axis=1, return_indices=True)
                take = (best > worst)[:, None] & (o_t[None, :] == worst_at[:, None])
                b_tv = tl.where(take, best[:, None], b_tv)
                b_ti = tl.where(take, (start_n + best_at)[:, None], b_ti)
                b_cand = tl.where(tl.arange(0, BLOCK_N)[None, :] == best_at[:, None], float("-inf"), b_cand)

    if SINKS:  # the sink cell joins the normaliser, with no value and no distance
        b_z = tl.load(sinks_ptr + i_h)
        m_new = tl.maximum(b_m, b_z)
        alpha = tl.exp(b_m - m_new)
        b_cell = tl.exp(b_z - m_new)
        b_l = b_l * alpha + b_cell
        b_ls = b_ls * alpha + b_cell * b_z
        b_ld = b_ld * alpha
        if WITH_V:
            b_acc = b_acc * alpha[:, None]
        b_arg = tl.where(b_z > b_m, -1, b_arg)
        b_m = m_new
    # Rows past the end of the sequence are never stored; give them finite values so nothing computes inf - inf.
    b_l = tl.where(m_m, b_l, 1.0)
    b_lse = tl.where(m_m, b_m + tl.log(b_l), 0.0)
    o_row = i_bh * n_queries + o_m
    tl.store(lse_ptr + o_row, b_lse, mask=m_m)
    tl.store(entropy_ptr + o_row, b_lse - b_ls / b_l, mask=m_m)
    tl.store(max_ptr + o_row, 1.0 / b_l, mask=m_m)
    tl.store(argmax_ptr + o_row, b_arg.to(tl.int64), mask=m_m)
    tl.store(sink_ptr + o_row, tl.exp(b_s0 - b_lse), mask=m_m)
    tl.store(dist_ptr + o_row, b_ld / b_l, mask=m_m)
    if SINKS:
        tl.store(learned_ptr + o_row, b_cell / b_l, mask=m_m)
    if WITH_V:
        p_o = o_ptr + o_row[:, None] * value_dim + o_dv[None, :]
        m_o = m_m[:, None] & (o_dv[None, :] < value_dim)
        tl.store(p_o, (b_acc / b_l[:, None]).to(o_ptr.dtype.element_ty), mask=m_o)
    if TOPK > 0:
        # Emit the candidates in descending order by repeated extraction; padding slots never qualify.
        b_tv = tl.where(o_t[None, :] < TOPK, b_tv, float("-inf"))
        for slot in tl.static_range(TOPK):
            best, best_at = tl.max(b_tv, axis=1, return_indices=True)
            index = tl.sum(tl.where(o_t[None, :] == best_at[:, None], b_ti, 0), axis=1)
            found = best > float("-inf")
            tl.store(topk_w_ptr + o_row * TOPK + slot, tl.where(found, tl.exp(best - b_lse), 0.0), mask=m_m)
            tl.store(topk_i_ptr + o_row * TOPK + slot, tl.where(found, index, -1).to(tl.int64), mask=m_m)
            b_tv = tl.where(o_t[None, :] == best_at[:, None], float("-inf"), b_tv)


def _launch(q, k, v, *, causal: bool, scale: float, topk: int, window: int | None = None,
            sinks: torch.Tensor | None = None, softcap: float | None = None, block_m: int = 64,
            block_n: int = 64) -> AttentionStats:
    batch, n_heads, n_queries, head_dim = q.shape
    n_keys = k.shape[2]
    value_dim = v.shape[-1] if v is not None else 1
    shape = (batch, n_heads, n_queries)
    floats = lambda *s: empty_output(*s, device=q.device, dtype=torch.float32)  # noqa: E731
    out = AttentionStats(
        lse=floats(*shape), entropy=floats(*shape), max_weight=floats(*shape),
        argmax=empty_output(*shape, device=q.device, dtype=torch.int64), sink_mass=floats(*shape),
        mean_distance=floats(*shape),
    )
    topk_weights = floats(*shape, max(topk, 1))
    topk_indices = empty_output(*shape, max(topk, 1), device=q.device, dtype=torch.int64)
    output = empty_output(*shape, value_dim, device=q.device, dtype=v.dtype if v is not None else q.dtype)
    learned = floats(*shape) if sinks is not None else out.lse  # (a stand-in the kernel never writes)
    grid = (triton.cdiv(n_queries, block_m), batch * n_heads)
    v_arg = v if v is not None else k
    attention_stats_kernel[grid](
        q, k, v_arg,
        out.lse, out.entropy, out.max_weight, out.argmax, out.sink_mass, out.mean_distance,
        topk_weights, topk_indices, output, out.lse if sinks is None else sinks.contiguous(), learned,
        *q.stride(), *k.stride(), *v_arg.stride(),
        n_heads, n_queries, n_keys, head_dim, value_dim, n_heads // k.shape[1], scale, window or 0, softcap or 1.0,
        CAUSAL=causal, WINDOW=window is not None, SINKS=sinks is not None, SOFTCAP=softcap is not None, TOPK=topk,
        TOPK_PAD=triton.next_power_of_2(max(topk, 1)), WITH_V=v is not None,
        DOT_PRECISION=dot_precision(q.dtype), DOT_UPCAST=interpreter_dot_upcast(q.dtype),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        BLOCK_DV=max(16, triton.next_power_of_2(value_dim)),
    )
    if topk > 0:
        out.topk_weights, out.topk_indices = topk_weights, topk_indices
    if v is not None:
        out.output = output
    if sinks is not None:
        out.learned_sink_mass = learned
    return out
