"""L1 contribution scores in Triton; the public function contribution_scores is in __init__.py.

One program per (key tile, query tile, head) holds the tile's weights a [BLOCK_I, BLOCK_J] and walks d in chunks of
BLOCK_D, broadcasting each chunk of the whole w [BLOCK_D, BLOCK_I] and of the values u [BLOCK_D, BLOCK_J] (loaded
transposed) to a [BLOCK_D, BLOCK_I, BLOCK_J] block of y = a s g u (s = sign(w), +1 at w = 0) and summing over d

    raw = |w|_1 - |w - a g u|_1 = sum_d min(y_d, 2 |w_d| - y_d)

term by term (|w_d| - |w_d - a g_d u_d| is y_d while y_d <= |w_d|, else 2 |w_d| - y_d), never a difference of two
sums of size |w|_1: a part much smaller than the whole keeps its relative accuracy (fp32 accumulation whatever the
input dtype; the result is rounded to it once). d goes first so that each thread holds whole columns of the block
and sums them in its own registers (with d last, 32 x 32 x 8 tiles on 8 warps took 126 registers per thread instead
of 80; benchmarks/gpu_compile.py, sm_90a, fp32). A tile whose weights are all 0 (above the causal diagonal, or keys
hidden from every query of the tile) stores 0 without the d loop. Every (i, j, d) costs a few fp32 operations, so the
work is O(H I S d) against the torch path's matrix product plus a sparse correction (chunked.py); there is no
tensor-core form of the min. Tile sizes, warps and stages come from kernels/launch.py ("contribution_l1").
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from attnscope.kernels.launch import LaunchConfig, launch_config
from attnscope.kernels.utils import DTYPES, empty_output, is_interpreter

# d per step of the loop: each thread holds BLOCK_I * BLOCK_J * BLOCK_D / (32 num_warps) elements of y, so the
# launch table's tiles are chosen with this fixed (benchmarks/gpu_compile.py). 32 x 32 tiles on 4 warps take 96
# registers at 4 and 140 at 8; on 8 warps at 8, ptxas holds them to 80 and spills 4 bytes without the factor.
BLOCK_D = 4


@triton.jit
def l1_scores_kernel(
    whole_ptr, values_ptr, weights_ptr, factor_ptr,  # (I, d), (H, S, d), (H, I, S) contiguous, (I, d) or a stand-in
    out_ptr,  # (H, I, S) contiguous, the inputs' dtype (fp32 for bf16 under the interpreter: see l1_scores)
    stride_wi, stride_wd,
    stride_vh, stride_vs, stride_vd,
    stride_fi, stride_fd,
    n_queries, n_keys, width,
    FACTOR: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):
    i_j, i_i, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_i = i_i * BLOCK_I + tl.arange(0, BLOCK_I)
    o_j = i_j * BLOCK_J + tl.arange(0, BLOCK_J)
    m_i = o_i < n_queries
    m_j = o_j < n_keys
    m_ij = m_i[:, None] & m_j[None, :]
    # int64: H * I * S passes 2^31 at long contexts
    p_a = (i_h.to(tl.int64) * n_queries + o_i[:, None]) * n_keys + o_j[None, :]
    b_a = tl.load(weights_ptr + p_a, mask=m_ij, other=0.0).to(tl.float32)  # [BLOCK_I, BLOCK_J]
    b_raw = tl.zeros([BLOCK_I, BLOCK_J], tl.float32)
    if tl.max(tl.max(tl.abs(b_a), axis=1), axis=0) > 0:
        p_values = values_ptr + i_h.to(tl.int64) * stride_vh
        for start_d in range(0, width, BLOCK_D):
            o_d = start_d + tl.arange(0, BLOCK_D)
            m_d = o_d < width
            # Padded rows, keys and d hold w = 0, s = +1 and u = 0: y = 0 there, and min(0, 0) adds nothing.
            m_wd = m_d[:, None] & m_i[None, :]
            b_w = tl.load(whole_ptr + o_d[:, None] * stride_wd + o_i[None, :] * stride_wi,
                          mask=m_wd, other=0.0).to(tl.float32)  # [BLOCK_D, BLOCK_I]
            b_sg = tl.where(b_w >= 0, 1.0, -1.0)  # s * g
            if FACTOR:
                b_sg *= tl.load(factor_ptr + o_d[:, None] * stride_fd + o_i[None, :] * stride_fi,
                                mask=m_wd, other=0.0).to(tl.float32)
            b_u = tl.load(p_values + o_d[:, None] * stride_vd + o_j[None, :] * stride_vs,
                          mask=m_d[:, None] & m_j[None, :], other=0.0).to(tl.float32)  # [BLOCK_D, BLOCK_J]
            b_y = b_a[None, :, :] * (b_sg[:, :, None] * b_u[:, None, :])  # [BLOCK_D, BLOCK_I, BLOCK_J]
            b_raw += tl.sum(tl.minimum(b_y, 2.0 * tl.abs(b_w)[:, :, None] - b_y), axis=0)
    tl.store(out_ptr + p_a, b_raw.to(out_ptr.dtype.element_ty), mask=m_ij)


def l1_constexprs(*, factor: bool, config: LaunchConfig) -> dict:
    """l1_scores_kernel's compile-time constants for one launch (benchmarks/gpu_compile.py compiles these)."""
    return dict(FACTOR=factor, BLOCK_I=config.block_m, BLOCK_J=config.block_n, BLOCK_D=BLOCK_D)


def l1_scores(whole: torch.Tensor, values: torch.Tensor, weights: torch.Tensor, *,
              factor: torch.Tensor | None = None) -> torch.Tensor:
    """(H, I, S) raw L1 scores |w_i|_1 - |w_i - weights[h, i, j] * factor_i * values[h, j]|_1, in whole's dtype.

    Args:
        whole: (I, d), any strides.
        values: (H, S, d), any strides.
        weights: (H, I, S), copied when not contiguous.
        factor: (I, d) or None (1), any strides.
    Shapes, devices and dtypes are checked by contribution_scores; this checks only that the kernel takes the dtype.

    Returns:
        (H, I, S) contiguous, whole's dtype (fp32 accumulation).
    """
    if whole.dtype not in DTYPES:
        raise ValueError(f"the Triton contribution kernel takes float32, float16 or bfloat16; got {whole.dtype} "
                         "(use backend='torch').")
    n_heads, n_keys, width = values.shape
    n_queries = whole.shape[0]
    weights = weights.contiguous()
    # Triton's interpreter truncates fp32 to bfloat16 where compiled kernels round to nearest: there the kernel
    # stores fp32 and torch rounds.
    rounds_late = is_interpreter() and whole.dtype == torch.bfloat16
    out = empty_output(n_heads, n_queries, n_keys, device=whole.device,
                       dtype=torch.float32 if rounds_late else whole.dtype)
    if out.numel() == 0:
        return out.to(whole.dtype)
    config = launch_config("contribution_l1", device=whole.device, dtype=whole.dtype)
    factor_arg = whole if factor is None else factor
    grid = (triton.cdiv(n_keys, config.block_n), triton.cdiv(n_queries, config.block_m), n_heads)
    l1_scores_kernel[grid](
        whole, values, weights, factor_arg, out,
        *whole.stride(), *values.stride(), *factor_arg.stride(),
        n_queries, n_keys, width,
        **l1_constexprs(factor=factor is not None, config=config),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return out.to(whole.dtype)
