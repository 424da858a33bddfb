"""Triton device functions shared by the kernels, imported only by the fused.py files (when a Triton kernel runs)."""

import triton
import triton.language as tl


@triton.jit
def key_tile_scores(
    b_q, k_tile_ptr, o_n, o_d, m_m, pos_m, key_end, head_dim, stride_ks, stride_kd, scale,
    CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
):
    """Scaled logits of a query tile against the keys o_n, and which of them each row may see.

    b_q: [BLOCK_M, BLOCK_D] queries; k_tile_ptr points at this (batch, key/value head)'s keys; keys at or past
    key_end, rows outside m_m and (with CAUSAL) keys after a row's position pos_m are not visible.
    Returns ([BLOCK_M, BLOCK_N] fp32 scale * q.k, [BLOCK_M, BLOCK_N] visibility).
    """
    m_n = o_n < key_end
    b_k = tl.load(k_tile_ptr + o_n[None, :] * stride_ks + o_d[:, None] * stride_kd,
                  mask=m_n[None, :] & (o_d[:, None] < head_dim), other=0.0)  # [BLOCK_D, BLOCK_N]
    if DOT_UPCAST:
        b_k = b_k.to(tl.float32)
    b_s = tl.dot(b_q, b_k, input_precision=DOT_PRECISION) * scale  # fp32 accumulation
    visible = m_n[None, :] & m_m[:, None]
    if CAUSAL:
        visible = visible & (o_n[None, :] <= pos_m[:, None])
    return b_s, visible


@triton.jit
def soft_capped(b_s, softcap):
    """softcap * tanh(b_s / softcap), fp32. Triton has no tanh its interpreter runs, so tanh(x) = (1 - e) / (1 + e)
    with e = exp(-2|x|), signed; below |x| = 0.1 its Taylor polynomial, where 1 - e would cancel (error < 1e-10)."""
    x = b_s / softcap
    a = tl.abs(x)
    e = tl.exp(-2.0 * a)
    x2 = x * x
    small = x * (1.0 - x2 * (1.0 / 3.0 - x2 * (2.0 / 15.0 - x2 * (17.0 / 315.0))))
    large = tl.where(x < 0, -1.0, 1.0) * (1.0 - e) / (1.0 + e)
    return softcap * tl.where(a < 0.1, small, large)
