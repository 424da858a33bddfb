"""CPU (and fallback) torch path for pooled attention maps: chunks of whole query rows, pooled as they are made.

A chunk holds complete rows, so its probabilities are exact softmaxes without a separate lse pass; chunks are a
multiple of `block` rows so every tile row is finished inside one chunk. Memory O(chunk x S) per head.
"""

from __future__ import annotations

import math

import torch

from attnscope.kernels.attention_stats.chunked import rows_per_chunk
from attnscope.kernels.utils import key_positions_visible


def pooled_attention_map(q, k, *, block: int, reduce: str, causal: bool, scale: float, hide_sink: bool) -> torch.Tensor:
    batch, n_heads, n_queries, head_dim = q.shape
    n_kv, n_keys = k.shape[1], k.shape[2]
    groups = n_heads // n_kv
    n_key_blocks = math.ceil(n_keys / block)
    out = torch.empty(batch, n_heads, math.ceil(n_queries / block), n_key_blocks)
    k32 = k.float()
    chunk = block * max(1, rows_per_chunk(n_heads, n_keys) // block)
    for start in range(0, n_queries, chunk):
        rows = slice(start, min(start + chunk, n_queries))
        t = rows.stop - rows.start
        # Under the causal mask no row of this chunk sees past key `hi`: later key tiles are NaN without any work.
        hi = min(n_keys, rows.stop + n_keys - n_queries) if causal else n_keys
        kb = math.ceil(hi / block)
        q_rows = q[:, :, rows].float().reshape(batch, n_kv, groups * t, head_dim)
        scores = torch.matmul(q_rows, k32[:, :, :hi].transpose(-1, -2)).mul_(scale).view(batch, n_heads, t, hi)
        visible = key_positions_visible(n_queries, n_keys, rows, causal, q.device)[:, :hi]  # (t, hi)
        probs = torch.softmax(scores.masked_fill_(~visible, float("-inf")), dim=-1)
        if hide_sink:
            visible = visible.clone()
            visible[:, 0] = False
        row_pad = math.ceil(t / block) * block - t
        key_pad = kb * block - hi
        probs = torch.nn.functional.pad(probs, (0, key_pad, 0, row_pad))
        visible = torch.nn.functional.pad(visible, (0, key_pad, 0, row_pad), value=False)
        tiles = probs.view(batch, n_heads, -1, block, kb, block)  # (B, H, rb, block, kb, block)
        tiles_visible = visible.view(1, 1, *tiles.shape[2:])
        count = tiles_visible.sum(dim=(3, 5))
        if reduce == "mean":
            pooled = (tiles * tiles_visible).sum(dim=(3, 5)) / count.clamp(min=1)
        else:
            pooled = tiles.masked_fill(~tiles_visible, float("-inf")).amax(dim=(3, 5))
        first = start // block
        tile_rows = slice(first, first + pooled.shape[2])
        out[:, :, tile_rows, :kb] = torch.where(count > 0, pooled, torch.nan)
        out[:, :, tile_rows, kb:] = torch.nan
    return out
