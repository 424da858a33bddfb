"""Contribution scores in torch without the (H, I, S, d) tensor of parts.

L2: |w - a c|^2 = |w|^2 - 2 a (w . c) + a^2 |c|^2 with c = g * u, so every distance comes from two matrix products,
(w * g) @ u^T and (g * g) @ (u * u)^T.

L1: with s_d = +1 where w_d >= 0 and -1 elsewhere, |w_d - x| = |w_d| - s_d x + 2 relu(s_d x - |w_d|) (both cases of
the absolute value). Summed over d, with x = a g_d u_d:

    raw = |w|_1 - |w - a c|_1 = a ((s * g) . u) - 2 sum_d relu(a s_d g_d u_d - |w_d|)

The first term is a matrix product. The correction of channel d is 0 unless a |u_d| > r_d = |w_d| / |g_d|. Per query,
the SMALL channels with the smallest r_d (where a part most easily overshoots the whole) get their correction summed
for every part; in the other channels r_d is at least R, the next smallest, so a part needs a max_d |u_d| > R there,
and since a query's weights sum to at most 1 per head only its few largest-weighted keys pass: only those have the
other channels' correction summed, a bounded number of parts at a time.
"""

from __future__ import annotations

import torch

PARTS_PER_STEP = 1 << 15  # parts whose L1 correction is summed at once: (PARTS_PER_STEP, d) temporaries
SMALL = 8  # channels per query whose L1 correction is summed for every part
CELLS_PER_STEP = 1 << 23  # heads x queries x keys x SMALL cells at once


def contribution_scores(whole: torch.Tensor, values: torch.Tensor, weights: torch.Tensor, *,
                        factor: torch.Tensor | None = None, norm: int = 1) -> torch.Tensor:
    """(H, I, S) raw scores, as kernels.contribution_scores (inputs checked there)."""
    if norm == 2:
        return _l2(whole, values, weights, factor)
    return _l1(whole, values, weights, factor)


def _l2(whole, values, weights, factor):
    scaled_whole = whole if factor is None else whole * factor
    cross = torch.matmul(scaled_whole, values.transpose(1, 2))  # (H, I, S): w . (g * u)
    squares = values.square()
    part_norm2 = (squares.sum(-1)[:, None, :] if factor is None
                  else torch.matmul(factor.square(), squares.transpose(1, 2)))  # (H, I, S): |g * u|^2
    whole_norm2 = whole.square().sum(-1)[None, :, None]
    distance2 = whole_norm2 - 2 * weights * cross + weights.square() * part_norm2
    return whole_norm2.sqrt() - distance2.clamp_min(0).sqrt()


def _l1(whole, values, weights, factor):
    n_heads, n_keys, width = values.shape
    size = whole.abs()  # |w|
    sign = torch.where(whole >= 0, 1.0, -1.0).to(whole.dtype)
    signed = sign if factor is None else sign * factor  # s * g
    raw = weights * torch.matmul(signed, values.transpose(1, 2))  # (H, I, S): the linear term
    if factor is None:
        reach = size  # r_d
    else:
        gain = factor.abs()
        reach = torch.where(gain > 0, size / gain.clamp_min(torch.finfo(gain.dtype).tiny), torch.inf)
    small = min(SMALL, width)
    order = reach.argsort(-1)
    near = order[:, :small]  # (I, k): each query's channels with the smallest reach
    beyond = reach.gather(-1, order[:, small:small + 1]).squeeze(-1) if small < width else \
        torch.full((len(whole),), torch.inf, dtype=whole.dtype)  # R: the smallest reach of the other channels
    near_signed, near_size = signed.gather(-1, near), size.gather(-1, near)  # (I, k)
    by_channel = values.permute(2, 0, 1).contiguous()  # (d, H, S): one channel's values are contiguous
    rows = max(1, CELLS_PER_STEP // max(1, n_heads * n_keys * small))
    for start in range(0, len(whole), rows):
        part = slice(start, start + rows)
        x = by_channel[near[part]]  # (r, k, H, S): each query's near channels
        x.mul_(near_signed[part][:, :, None, None]).mul_(weights[:, part].transpose(0, 1)[:, None])
        x.sub_(near_size[part][:, :, None, None]).clamp_min_(0)
        raw[:, part] -= 2 * x.sum(1).transpose(0, 1)
    if small == width:
        return raw
    others = torch.ones_like(size, dtype=torch.bool).scatter_(-1, near, False)  # (I, d)
    largest = values.abs().amax(-1)  # (H, S)
    bent = (weights.abs() * largest[:, None, :] > beyond[None, :, None]).nonzero()  # parts the others may bend
    for start in range(0, len(bent), PARTS_PER_STEP):
        head, query, key = bent[start:start + PARTS_PER_STEP].unbind(-1)
        x = weights[head, query, key][:, None] * signed[query] * values[head, key]  # (n, d): s * a * g * u
        raw[head, query, key] -= 2 * ((x - size[query]).clamp_min(0) * others[query]).sum(-1)
    return raw
