"""CPU (and fallback) torch path for pooled attention maps: chunks of whole query rows, pooled as they are made.

A chunk holds complete rows, so its probabilities are exact softmaxes without a separate lse pass; chunks are a
multiple of `block` rows so every tile row is finished inside one chunk. Memory O(chunk x S) per head. Key tiles no
row of a chunk sees (past the causal frontier, or outside the span an explicit mask opens, as with a sliding window)
are NaN without any work.
"""

from __future__ import annotations

import math

import torch

from attnscope.kernels.attention_stats.chunked import _MASKED, grouped_mask, key_span, rows_per_chunk
from attnscope.kernels.utils import key_positions_visible


def pooled_attention_map(q, k, *, block: int, reduce: str, causal: bool, scale: float, hide_sink: bool,
                         mask: torch.Tensor | None = None, softcap: float | None = None) -> torch.Tensor:
    """q (B, Hq, T, D), k (B, Hkv, S, D); mask None or a 4-D bool view (B or 1, Hq or 1, T, S) replacing the causal
    rule. Returns (B, Hq, ceil(T/block), ceil(S/block)) fp32, NaN for tiles without a visible cell."""
    batch, n_heads, n_queries, head_dim = q.shape
    n_kv, n_keys = k.shape[1], k.shape[2]
    groups = n_heads // n_kv
    causal = causal and mask is None
    n_key_blocks = math.ceil(n_keys / block)
    out = torch.full((batch, n_heads, math.ceil(n_queries / block), n_key_blocks), float("nan"), device=q.device)
    k32 = k.float()
    chunk = block * max(1, rows_per_chunk(n_heads, n_keys) // block)
    for start in range(0, n_queries, chunk):
        rows = slice(start, min(start + chunk, n_queries))
        t = rows.stop - rows.start
        mask_rows = None if mask is None else mask[:, :, rows]
        if causal:  # no row of this chunk sees past key `hi`
            lo, hi = 0, min(n_keys, rows.stop + n_keys - n_queries)
        elif mask_rows is not None:
            lo, hi = key_span(mask_rows, n_keys, 1)
        else:
            lo, hi = 0, n_keys
        lo, hi = lo // block * block, min(n_keys, math.ceil(hi / block) * block)  # whole key tiles
        width, kb = hi - lo, math.ceil((hi - lo) / block)
        q_rows = q[:, :, rows].float() * (scale / softcap if softcap is not None else scale)
        q_rows = q_rows.reshape(batch, n_kv, groups * t, head_dim)
        scores = torch.matmul(q_rows, k32[:, :, lo:hi].transpose(-1, -2))  # (B, Hkv, G*t, width)
        if softcap is not None:
            scores.tanh_().mul_(softcap)
        scores = scores.view(batch, n_kv, groups, t, width)
        if mask_rows is None:
            visible = key_positions_visible(n_queries, n_keys, rows, causal, q.device)[None, None, :, lo:hi]
            if causal:
                scores.masked_fill_(~visible, _MASKED)
        else:
            visible = mask_rows[..., lo:hi]  # (b, Hq or 1, t, width)
            scores.masked_fill_(~grouped_mask(visible, n_kv), _MASKED)
        # A finite stand-in for -inf: a row that sees nothing gets finite (uniform) weights, on cells that are hidden.
        probs = torch.softmax(scores, dim=-1).view(batch, n_heads, t, width)
        if hide_sink and lo == 0:
            visible = visible.clone()
            visible[..., 0] = False
        row_pad = math.ceil(t / block) * block - t
        key_pad = kb * block - width
        probs = torch.nn.functional.pad(probs, (0, key_pad, 0, row_pad))
        visible = torch.nn.functional.pad(visible, (0, key_pad, 0, row_pad), value=False)
        tiles = probs.view(batch, n_heads, -1, block, kb, block)  # (B, H, rb, block, kb, block)
        tiles_visible = visible.reshape(*visible.shape[:2], *tiles.shape[2:])
        count = tiles_visible.sum(dim=(3, 5))
        if reduce == "mean":
            pooled = (tiles * tiles_visible).sum(dim=(3, 5)) / count.clamp(min=1)
        else:
            pooled = tiles.masked_fill(~tiles_visible, float("-inf")).amax(dim=(3, 5))
        first = start // block
        out[:, :, first : first + pooled.shape[2], lo // block : lo // block + kb] = torch.where(count > 0, pooled,
                                                                                               torch.nan)
    return out
