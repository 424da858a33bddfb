"""Pooled attention maps in Triton: two passes, never the (T, S) matrix.

Pass 1 is attention_stats, for each row's log-sum-exp (a learned sink joins it there: lse = log(exp(lse) +
exp(sink_h))). Pass 2 rebuilds p = exp(s - lse) tile by tile, s softcapped when asked (c tanh(s / c)), and reduces it
to the tile's mean (sum / visible count) or max; tiles without a visible cell are NaN.

- small blocks (`pooled_map_packed_kernel`; BP = next_power_of_2(block) at most the packed entry's block_m and
  block_n in kernels/launch.py: 64 for 16-bit inputs, 32 for fp32): one program takes PR pooled rows and walks PC
  pooled columns at a time. Rows and keys are laid out as [pooled index, offset padded to BP], flattened into one
  PR*BP x PC*BP dot (block_m x block_n), and the result is reshaped to 4-D and reduced over the two offset axes.
  Padding costs at most (BP / block)^2 extra work, and block = 1 is the exact map.
- larger blocks (`pooled_map_kernel`): one program per pooled row walks the key tiles, each in BLOCK_M x BLOCK_N
  sub-tiles (kernels/launch.py).
Key tiles past the causal frontier or left of a sliding window are never computed, only stored as NaN: the sub-tiled
kernel starts each tile's key loop at the first key a row of its pooled row sees, the packed one computes only the
groups of pooled columns between the first and the last such key. The explicit mask stays on the torch path.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from attnscope.kernels.attention_stats import attention_stats
from attnscope.kernels.launch import LaunchConfig, block_dim, launch_config
from attnscope.kernels.tiles import key_tile_scores, soft_capped
from attnscope.kernels.utils import (
    dot_precision,
    empty_output,
    interpreter_dot_upcast,
)


@triton.jit
def pooled_map_kernel(
    q_ptr, k_ptr, lse_ptr, out_ptr,  # q (B, Hq, T, D), k (B, Hkv, S, D), lse (B, Hq, T), out (B, Hq, R, C)
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    n_heads, n_queries, n_keys, head_dim, groups, scale, block, n_key_blocks, window, softcap,
    CAUSAL: tl.constexpr, HIDE_SINK: tl.constexpr, REDUCE_MAX: tl.constexpr, WINDOW: tl.constexpr,
    SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    i_r, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // n_heads, i_bh % n_heads
    i_kv = i_h // groups
    o_d = tl.arange(0, BLOCK_D)
    row_start = i_r * block
    row_end = tl.minimum(row_start + block, n_queries)
    key_lo = 0
    key_hi = n_keys
    if CAUSAL:
        key_hi = tl.minimum(n_keys, row_end + (n_keys - n_queries))  # one past the last key any row here sees
    if WINDOW:
        key_lo = tl.maximum(0, row_start + (n_keys - n_queries) - window + 1)  # the first key any row here sees
    for i_c in range(0, n_key_blocks):
        col_start = tl.maximum(i_c * block, key_lo)
        col_end = tl.minimum(i_c * block + block, key_hi)
        b_total = 0.0
        b_count = 0.0
        b_max = float("-inf")
        for start_m in range(row_start, row_end, BLOCK_M):
            o_m = start_m + tl.arange(0, BLOCK_M)
            m_m = o_m < row_end
            pos_m = o_m + (n_keys - n_queries)
            p_q = q_ptr + i_b * stride_qb + i_h * stride_qh + o_m[:, None] * stride_qt + o_d[None, :] * stride_qd
            b_q = tl.load(p_q, mask=m_m[:, None] & (o_d[None, :] < head_dim), other=0.0)
            if DOT_UPCAST:
                b_q = b_q.to(tl.float32)
            b_lse = tl.load(lse_ptr + i_bh * n_queries + o_m, mask=m_m, other=0.0)
            for start_n in range(col_start, col_end, BLOCK_N):
                o_n = start_n + tl.arange(0, BLOCK_N)
                b_s, visible = key_tile_scores(b_q, k_ptr + i_b * stride_kb + i_kv * stride_kh, o_n, o_d, m_m, pos_m,
                                               col_end, head_dim, stride_ks, stride_kd, scale, CAUSAL, DOT_PRECISION,
                                               DOT_UPCAST)
                if SOFTCAP:
                    b_s = soft_capped(b_s, softcap)
                if WINDOW:
                    visible = visible & (o_n[None, :] > pos_m[:, None] - window)
                if HIDE_SINK:
                    visible = visible & (o_n[None, :] != 0)
                b_p = tl.where(visible, tl.exp(b_s - b_lse[:, None]), 0.0)
                b_total += tl.sum(tl.sum(b_p, axis=1), axis=0)
                b_count += tl.sum(tl.sum(visible.to(tl.float32), axis=1), axis=0)
                b_max = tl.maximum(b_max, tl.max(tl.max(tl.where(visible, b_p, float("-inf")), axis=1), axis=0))
        if REDUCE_MAX:
            value = b_max
        else:
            value = b_total / b_count
        tl.store(out_ptr + (i_bh * tl.num_programs(0) + i_r) * n_key_blocks + i_c,
                 tl.where(b_count > 0, value, float("nan")))


@triton.jit
def pooled_map_packed_kernel(
    q_ptr, k_ptr, lse_ptr, out_ptr,  # q (B, Hq, T, D), k (B, Hkv, S, D), lse (B, Hq, T), out (B, Hq, R, C)
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    n_heads, n_queries, n_keys, head_dim, groups, scale, block, n_row_blocks, n_key_blocks, window, softcap,
    CAUSAL: tl.constexpr, HIDE_SINK: tl.constexpr, REDUCE_MAX: tl.constexpr, WINDOW: tl.constexpr,
    SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
    PR: tl.constexpr, PC: tl.constexpr, BP: tl.constexpr, BLOCK_D: tl.constexpr,
):
    i_g, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // n_heads, i_bh % n_heads
    i_kv = i_h // groups
    o_d = tl.arange(0, BLOCK_D)
    o_pr = i_g * PR + tl.arange(0, PR)  # pooled rows of this program
    rows = tl.reshape(o_pr[:, None] * block + tl.arange(0, BP)[None, :], (PR * BP,))
    m_rows = tl.reshape((tl.arange(0, BP)[None, :] < block) & (o_pr[:, None] < n_row_blocks), (PR * BP,))
    m_rows = m_rows & (rows < n_queries)
    pos_rows = rows + (n_keys - n_queries)
    p_q = q_ptr + i_b * stride_qb + i_h * stride_qh + rows[:, None] * stride_qt + o_d[None, :] * stride_qd
    b_q = tl.load(p_q, mask=m_rows[:, None] & (o_d[None, :] < head_dim), other=0.0)  # [PR*BP, BLOCK_D]
    if DOT_UPCAST:
        b_q = b_q.to(tl.float32)
    b_lse = tl.load(lse_ptr + i_bh * n_queries + rows, mask=m_rows, other=0.0)

    last_row = tl.minimum((i_g + 1) * PR * block, n_queries) - 1
    key_hi = n_keys
    if CAUSAL:
        key_hi = tl.minimum(n_keys, last_row + (n_keys - n_queries) + 1)
    col_hi = tl.cdiv(key_hi, block)  # pooled columns that hold a visible cell for some row here
    col_lo = 0
    if WINDOW:  # ... and none before the first key the first row here sees
        col_lo = tl.maximum(0, i_g * PR * block + (n_keys - n_queries) - window + 1) // block
    for start_c in range(0, n_key_blocks, PC):
        o_pc = start_c + tl.arange(0, PC)
        if (start_c < col_hi) & (start_c + PC > col_lo):
            cols = tl.reshape(o_pc[:, None] * block + tl.arange(0, BP)[None, :], (PC * BP,))
            m_cols = tl.reshape((tl.arange(0, BP)[None, :] < block) & (o_pc[:, None] < n_key_blocks), (PC * BP,))
            m_cols = m_cols & (cols < n_keys)
            p_k = k_ptr + i_b * stride_kb + i_kv * stride_kh + cols[None, :] * stride_ks + o_d[:, None] * stride_kd
            b_k = tl.load(p_k, mask=m_cols[None, :] & (o_d[:, None] < head_dim), other=0.0)  # [BLOCK_D, PC*BP]
            if DOT_UPCAST:
                b_k = b_k.to(tl.float32)
            b_s = tl.dot(b_q, b_k, input_precision=DOT_PRECISION) * scale  # [PR*BP, PC*BP]
            if SOFTCAP:
                b_s = soft_capped(b_s, softcap)
            visible = m_rows[:, None] & m_cols[None, :]
            if CAUSAL:
                visible = visible & (cols[None, :] <= pos_rows[:, None])
            if WINDOW:
                visible = visible & (cols[None, :] > pos_rows[:, None] - window)
            if HIDE_SINK:
                visible = visible & (cols[None, :] != 0)
            b_p = tl.where(visible, tl.exp(b_s - b_lse[:, None]), 0.0)
            count = tl.sum(tl.sum(tl.reshape(visible.to(tl.float32), (PR, BP, PC, BP)), axis=3), axis=1)  # [PR, PC]
            if REDUCE_MAX:
                masked = tl.reshape(tl.where(visible, b_p, float("-inf")), (PR, BP, PC, BP))
                value = tl.max(tl.max(masked, axis=3), axis=1)
            else:
                value = tl.sum(tl.sum(tl.reshape(b_p, (PR, BP, PC, BP)), axis=3), axis=1) / tl.maximum(count, 1.0)
            value = tl.where(count > 0, value, float("nan"))
        else:
            value = tl.full((PR, PC), float("nan"), tl.float32)
        p_o = out_ptr + (i_bh * n_row_blocks + o_pr[:, None]) * n_key_blocks + o_pc[None, :]
        tl.store(p_o, value, mask=(o_pr[:, None] < n_row_blocks) & (o_pc[None, :] < n_key_blocks))


def packed(block: int, config: LaunchConfig) -> bool:
    """Whether pooled blocks of `block` cells take the packed kernel under the packed kernel's table entry: when at
    least one padded block fits its dot each way."""
    return triton.next_power_of_2(block) <= min(config.block_m, config.block_n)


def pooled_constexprs(*, dtype: torch.dtype, head_dim: int, block: int, reduce: str, causal: bool, hide_sink: bool,
                      window: bool, softcap: bool, config: LaunchConfig) -> dict:
    """The compile-time constants of the kernel that takes `block` under `config` (the pooled_map_packed entry's when
    packed(block, config), pooled_map_kernel's otherwise) for one launch (benchmarks/gpu_compile.py compiles these)."""
    common = dict(CAUSAL=causal, HIDE_SINK=hide_sink, REDUCE_MAX=reduce == "max", WINDOW=window, SOFTCAP=softcap,
                  DOT_PRECISION=dot_precision(dtype), DOT_UPCAST=interpreter_dot_upcast(dtype),
                  BLOCK_D=block_dim(head_dim))
    if packed(block, config):
        padded = triton.next_power_of_2(block)
        return dict(common, PR=config.block_m // padded, PC=config.block_n // padded, BP=padded)
    return dict(common, BLOCK_M=config.block_m, BLOCK_N=config.block_n)


def _launch(q, k, *, block: int, reduce: str, causal: bool, scale: float, hide_sink: bool, window: int | None = None,
            softcap: float | None = None, sinks: torch.Tensor | None = None) -> torch.Tensor:
    batch, n_heads, n_queries, head_dim = q.shape
    n_keys = k.shape[2]
    # The rows' log-normalisers, the learned sink's term included
    lse = attention_stats(q, k, causal=causal, scale=scale, window=window, softcap=softcap, sinks=sinks,
                          backend="triton").lse
    n_row_blocks, n_key_blocks = math.ceil(n_queries / block), math.ceil(n_keys / block)
    out = empty_output(batch, n_heads, n_row_blocks, n_key_blocks, device=q.device, dtype=torch.float32)
    config = launch_config("pooled_map_packed", device=q.device, head_dim=head_dim, dtype=q.dtype)
    options = dict(dtype=q.dtype, head_dim=head_dim, block=block, reduce=reduce, causal=causal, hide_sink=hide_sink,
                   window=window is not None, softcap=softcap is not None)
    if packed(block, config):
        constexprs = pooled_constexprs(**options, config=config)
        pooled_map_packed_kernel[(triton.cdiv(n_row_blocks, constexprs["PR"]), batch * n_heads)](
            q, k, lse, out, *q.stride(), *k.stride(),
            n_heads, n_queries, n_keys, head_dim, n_heads // k.shape[1], scale, block, n_row_blocks, n_key_blocks,
            window or 0, softcap or 1.0, **constexprs, num_warps=config.num_warps, num_stages=config.num_stages,
        )
        return out
    config = launch_config("pooled_map", device=q.device, head_dim=head_dim, dtype=q.dtype)
    pooled_map_kernel[(n_row_blocks, batch * n_heads)](
        q, k, lse, out, *q.stride(), *k.stride(),
        n_heads, n_queries, n_keys, head_dim, n_heads // k.shape[1], scale, block, n_key_blocks, window or 0,
        softcap or 1.0, **pooled_constexprs(**options, config=config), num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return out
