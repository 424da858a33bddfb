"""Fused per-row attention statistics in one pass over key tiles (Triton); the public function is in __init__.py.

Online softmax as in FlashAttention: for each query tile the kernel walks the key tiles once, keeping a running
max m, the running sum l = sum exp(s - m) and, rescaled alongside it, sum exp(s - m) * s (for the entropy
lse - E[s]), sum exp(s - m) * |i - j| (mean distance) and, with V, the output accumulator. The running argmax
follows m. Memory is O(T) per head; the (T, S) matrix never exists.

Top-k is a second, register-light kernel (attention_topk_kernel), run once the first has every row's lse. Per query
tile it finds each row's k-th largest logit exactly by radix selection on the logits' bits (radix select, as in Alabi
et al., "Fast k-selection algorithms for graphics processing units", 2012): up to 8 passes over the key tiles, each
fixing 4 more bits of the threshold from a 16-bucket histogram of the keys that share the bits found so far, and
stopping once every row of the tile needs all the keys that share its bits. A last pass writes every key above the
threshold and as many at it as are still needed (lowest index first); the launcher sorts each row's k weights.
Keeping k candidates per row in registers instead (the first version) spilled at k = 8 on sm_80 and sm_90a and
unrolled k steps per key tile, so that every k compiled anew, slower the larger k (26 s at k = 32; the collapse
analysis asks for 256). This recomputes each logit tile up to 9 times whatever k is, and one compilation serves
every k.

Grouped-query attention: program (tile, b * Hq + h) reads key/value head h // (Hq // Hkv) in place. A sliding window
starts the key loop at the tile left of the first row's window and hides the keys left of each row's; a softcap maps
the tile's logits through c tanh(s / c) (kernels.tiles.soft_capped); a learned sink
z joins at the end (m' = max(m, z), l' = l exp(m - m') + exp(z - m'), the sums rescaled alike, E[s] gains z's term).
Block sizes, warps and pipelining depth come from kernels/launch.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from attnscope.kernels.attention_stats.naive import AttentionStats
from attnscope.kernels.launch import LaunchConfig, block_dim, launch_config
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
    o_ptr,  # (B, Hq, T, DV) contiguous
    sinks_ptr, learned_ptr,  # (Hq,) fp32 learned sink logits; (B, Hq, T) learned sink mass
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    n_heads, n_queries, n_keys, head_dim, value_dim, groups, scale, window, softcap,
    CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SINKS: tl.constexpr, SOFTCAP: tl.constexpr, WITH_V: tl.constexpr,
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


SIGN_BIT: tl.constexpr = tl.constexpr(-(2**31))  # int32 0x80000000
RADIX_PASSES: tl.constexpr = tl.constexpr(8)  # 4 bits of the 32-bit key per pass
RADIX_BUCKETS: tl.constexpr = tl.constexpr(16)


@triton.jit
def _visible_keys(b_q, k_tile_ptr, o_n, o_d, m_m, pos_m, n_keys, head_dim, stride_ks, stride_kd, scale, window,
                  softcap, CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
                  DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr):
    """The tile's logits exactly as attention_stats_kernel computes them, their visibility, and each logit as an
    int32 key in the same order (a signed comparison orders the keys as the floats): a negative float's magnitude
    bits are flipped."""
    b_s, visible = key_tile_scores(b_q, k_tile_ptr, o_n, o_d, m_m, pos_m, n_keys, head_dim, stride_ks, stride_kd,
                                   scale, CAUSAL, DOT_PRECISION, DOT_UPCAST)
    if SOFTCAP:
        b_s = soft_capped(b_s, softcap)
    if WINDOW:
        visible = visible & (o_n[None, :] > pos_m[:, None] - window)
    b_bits = b_s.to(tl.int32, bitcast=True)
    return b_s, visible, tl.where(b_bits < 0, b_bits ^ 0x7FFFFFFF, b_bits)


@triton.jit
def attention_topk_kernel(
    q_ptr, k_ptr, lse_ptr,  # (B, Hq, T, D), (B, Hkv, S, D), (B, Hq, T) fp32 from attention_stats_kernel
    topk_w_ptr, topk_i_ptr,  # (B, Hq, T, topk) contiguous, filled with 0 and -1 first; written in no order
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    n_heads, n_queries, n_keys, head_dim, groups, scale, window, softcap, topk,
    CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    i_m, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // n_heads, i_bh % n_heads
    k_tile_ptr = k_ptr + i_b * stride_kb + (i_h // groups) * stride_kh
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_d = tl.arange(0, BLOCK_D)
    m_m = o_m < n_queries
    pos_m = o_m + (n_keys - n_queries)
    p_q = q_ptr + i_b * stride_qb + i_h * stride_qh + o_m[:, None] * stride_qt + o_d[None, :] * stride_qd
    b_q = tl.load(p_q, mask=m_m[:, None] & (o_d[None, :] < head_dim), other=0.0)  # [BLOCK_M, BLOCK_D]
    if DOT_UPCAST:
        b_q = b_q.to(tl.float32)
    hi = n_keys
    lo = 0
    if CAUSAL:
        hi = tl.minimum(n_keys, (i_m + 1) * BLOCK_M + (n_keys - n_queries))
    if WINDOW:
        lo = tl.maximum(0, i_m * BLOCK_M + (n_keys - n_queries) - window + 1) // BLOCK_N * BLOCK_N

    # Radix selection of each row's threshold, the key of its k-th largest logit, 4 bits a pass from the top, in
    # unsigned order (the key's sign bit flipped). b_need counts the keys still to take among those that share the
    # bits found so far; a row that sees fewer than k keys takes them all. A row is resolved as soon as it needs every
    # key that shares its bits (b_bits of them decide), and the passes stop when every row of the tile is.
    o_bucket = tl.arange(0, RADIX_BUCKETS)
    b_prefix = tl.zeros([BLOCK_M], tl.int32)
    b_bits = tl.full([BLOCK_M], 32, tl.int32)
    b_need = tl.zeros([BLOCK_M], tl.int32) + topk
    b_above = tl.zeros([BLOCK_M], tl.int32)  # keys above the threshold: all taken
    b_open = m_m
    i_pass = 0
    while (i_pass < RADIX_PASSES) & (tl.max(b_open.to(tl.int32), axis=0) > 0):
        shift = 28 - 4 * i_pass
        b_hist = tl.zeros([BLOCK_M, RADIX_BUCKETS], tl.int32)
        for start_n in range(lo, hi, BLOCK_N):
            o_n = start_n + tl.arange(0, BLOCK_N)
            _, visible, b_key = _visible_keys(b_q, k_tile_ptr, o_n, o_d, m_m, pos_m, n_keys, head_dim, stride_ks,
                                              stride_kd, scale, window, softcap, CAUSAL, WINDOW, SOFTCAP,
                                              DOT_PRECISION, DOT_UPCAST)
            b_key = b_key ^ SIGN_BIT
            # The bits above this pass's digit equal the prefix's (two shifts: one by 32 is undefined)
            same = (visible & b_open[:, None]) & ((i_pass == 0) | ((((b_key ^ b_prefix[:, None]) >> shift) >> 4) == 0))
            b_digit = tl.where(same, (b_key >> shift) & (RADIX_BUCKETS - 1), RADIX_BUCKETS)  # outside: no bucket
            b_hist += tl.sum((b_digit[:, :, None] == o_bucket[None, None, :]).to(tl.int32), axis=1)
        b_need = tl.where(b_open, tl.minimum(b_need, tl.sum(b_hist, axis=1)), b_need)  # changes in the first pass
        b_at_least = tl.sum(b_hist, axis=1)[:, None] - tl.cumsum(b_hist, axis=1) + b_hist  # keys in buckets >= j
        b_found = tl.sum((b_at_least >= b_need[:, None]).to(tl.int32), axis=1) - 1  # the k-th largest's bucket
        b_in_bucket = tl.sum(tl.where(o_bucket[None, :] == b_found[:, None], b_hist, 0), axis=1)
        b_higher = tl.sum(tl.where(o_bucket[None, :] == b_found[:, None], b_at_least, 0), axis=1) - b_in_bucket
        b_above = tl.where(b_open, b_above + b_higher, b_above)
        b_need = tl.where(b_open, b_need - b_higher, b_need)
        b_prefix = tl.where(b_open, b_prefix | (b_found << shift), b_prefix)
        resolved = b_open & (b_need == b_in_bucket)
        b_bits = tl.where(resolved, 32 - shift, b_bits)
        b_open = b_open & (b_need != b_in_bucket)
        i_pass += 1

    # Write every key above the threshold, then the first b_need keys at it (all of them for a row resolved early),
    # into slots 0.. in key order. Keys compare on their deciding bits, in signed order.
    b_shift = 32 - b_bits
    b_threshold = (b_prefix ^ SIGN_BIT) >> b_shift
    b_lse = tl.load(lse_ptr + i_bh * n_queries + o_m, mask=m_m, other=0.0)
    b_above_seen = tl.zeros([BLOCK_M], tl.int32)
    b_ties_seen = tl.zeros([BLOCK_M], tl.int32)
    p_row = (i_bh * n_queries + o_m).to(tl.int64) * topk
    for start_n in range(lo, hi, BLOCK_N):
        o_n = start_n + tl.arange(0, BLOCK_N)
        b_s, visible, b_key = _visible_keys(b_q, k_tile_ptr, o_n, o_d, m_m, pos_m, n_keys, head_dim, stride_ks,
                                            stride_kd, scale, window, softcap, CAUSAL, WINDOW, SOFTCAP,
                                            DOT_PRECISION, DOT_UPCAST)
        b_top = b_key >> b_shift[:, None]
        above = visible & (b_top > b_threshold[:, None])
        tie = visible & (b_top == b_threshold[:, None])
        slot = tl.where(above, b_above_seen[:, None] + tl.cumsum(above.to(tl.int32), axis=1) - 1,
                        (b_above + b_ties_seen)[:, None] + tl.cumsum(tie.to(tl.int32), axis=1) - 1)
        taken = (above | (tie & (slot < (b_above + b_need)[:, None]))) & m_m[:, None]
        tl.store(topk_w_ptr + p_row[:, None] + slot, tl.exp(b_s - b_lse[:, None]), mask=taken)
        tl.store(topk_i_ptr + p_row[:, None] + slot, o_n[None, :].to(tl.int64) + tl.zeros_like(slot), mask=taken)
        b_above_seen += tl.sum(above.to(tl.int32), axis=1)
        b_ties_seen += tl.sum(tie.to(tl.int32), axis=1)


def stats_constexprs(*, dtype: torch.dtype, head_dim: int, value_dim: int, causal: bool, window: bool,
                     softcap: bool, sinks: bool, with_v: bool, config: LaunchConfig) -> dict:
    """attention_stats_kernel's compile-time constants for one launch (benchmarks/gpu_compile.py compiles these)."""
    return dict(CAUSAL=causal, WINDOW=window, SINKS=sinks, SOFTCAP=softcap, WITH_V=with_v,
                DOT_PRECISION=dot_precision(dtype), DOT_UPCAST=interpreter_dot_upcast(dtype),
                BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_D=block_dim(head_dim),
                BLOCK_DV=block_dim(value_dim))


def topk_constexprs(*, dtype: torch.dtype, head_dim: int, causal: bool, window: bool, softcap: bool,
                    config: LaunchConfig) -> dict:
    """attention_topk_kernel's compile-time constants for one launch."""
    return dict(CAUSAL=causal, WINDOW=window, SOFTCAP=softcap, DOT_PRECISION=dot_precision(dtype),
                DOT_UPCAST=interpreter_dot_upcast(dtype), BLOCK_M=config.block_m, BLOCK_N=config.block_n,
                BLOCK_D=block_dim(head_dim))


def _launch(q, k, v, *, causal: bool, scale: float, topk: int, window: int | None = None,
            sinks: torch.Tensor | None = None, softcap: float | None = None) -> AttentionStats:
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
    output = empty_output(*shape, value_dim, device=q.device, dtype=v.dtype if v is not None else q.dtype)
    learned = floats(*shape) if sinks is not None else out.lse  # (a stand-in the kernel never writes)
    config = launch_config("attention_stats", device=q.device, head_dim=head_dim, dtype=q.dtype,
                           variant="with_v" if v is not None else "no_v")
    v_arg = v if v is not None else k
    attention_stats_kernel[(triton.cdiv(n_queries, config.block_m), batch * n_heads)](
        q, k, v_arg,
        out.lse, out.entropy, out.max_weight, out.argmax, out.sink_mass, out.mean_distance,
        output, out.lse if sinks is None else sinks.contiguous(), learned,
        *q.stride(), *k.stride(), *v_arg.stride(),
        n_heads, n_queries, n_keys, head_dim, value_dim, n_heads // k.shape[1], scale, window or 0, softcap or 1.0,
        **stats_constexprs(dtype=q.dtype, head_dim=head_dim, value_dim=value_dim, causal=causal,
                           window=window is not None, softcap=softcap is not None, sinks=sinks is not None,
                           with_v=v is not None, config=config),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    if topk > 0:
        out.topk_weights, out.topk_indices = _top_k(q, k, out.lse, topk=topk, causal=causal, scale=scale,
                                                    window=window, softcap=softcap)
    if v is not None:
        out.output = output
    if sinks is not None:
        out.learned_sink_mass = learned
    return out


def _top_k(q, k, lse, *, topk: int, causal: bool, scale: float, window: int | None,
           softcap: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, Hq, T, topk) weights exp(s - lse), descending, and their key indices; 0 and -1 past a row's keys."""
    batch, n_heads, n_queries, head_dim = q.shape
    # Filled, not poisoned: slots past the keys a row sees keep these values by design.
    weights = torch.zeros(batch, n_heads, n_queries, topk, device=q.device, dtype=torch.float32)
    indices = torch.full((batch, n_heads, n_queries, topk), -1, device=q.device, dtype=torch.int64)
    config = launch_config("attention_topk", device=q.device, head_dim=head_dim, dtype=q.dtype)
    attention_topk_kernel[(triton.cdiv(n_queries, config.block_m), batch * n_heads)](
        q, k, lse, weights, indices, *q.stride(), *k.stride(),
        n_heads, n_queries, k.shape[2], head_dim, n_heads // k.shape[1], scale, window or 0, softcap or 1.0, topk,
        **topk_constexprs(dtype=q.dtype, head_dim=head_dim, causal=causal, window=window is not None,
                          softcap=softcap is not None, config=config),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    # The kernel writes a row's keys above its threshold first, then those at it, then leaves the empty slots (0):
    # a stable sort keeps the empty slots last even behind weights that underflowed to 0.
    weights, order = weights.sort(dim=-1, descending=True, stable=True)
    return weights, indices.gather(-1, order)
