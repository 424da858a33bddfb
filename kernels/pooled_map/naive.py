"""Readable fp64 reference for pooled attention maps: the full (T, S) probability matrix, then tile by tile.

Tile (r, c) covers query rows r*block .. r*block+block-1 and keys c*block .. c*block+block-1. "mean" averages the
probabilities of the tile's visible cells (causal-masked cells, cells past the end and, with hide_sink, key 0 are not
cells of the tile); "max" takes their maximum; a tile with no visible cell is NaN.
"""

from __future__ import annotations

import math

import torch

from attnscope.kernels.attention_stats.naive import masked_scores
from attnscope.kernels.utils import key_positions_visible


def attention_probs(q, k, *, causal: bool, scale: float | None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(B, Hq, T, S) softmax probabilities computed in `dtype`; masked cells are 0."""
    return torch.softmax(masked_scores(q, k, causal=causal, scale=scale, dtype=dtype), dim=-1)


def pooled_attention_map(q, k, *, block: int, reduce: str, causal: bool = True, scale: float | None = None,
                         hide_sink: bool = False, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(B, Hq, ceil(T/block), ceil(S/block)) pooled probabilities computed in `dtype`, by explicit loops over tiles."""
    probs = attention_probs(q, k, causal=causal, scale=scale, dtype=dtype)
    n_queries, n_keys = q.shape[2], k.shape[2]
    visible = key_positions_visible(n_queries, n_keys, slice(0, n_queries), causal, q.device).clone()
    if hide_sink:
        visible[:, 0] = False
    out = torch.full((*probs.shape[:2], math.ceil(n_queries / block), math.ceil(n_keys / block)), float("nan"),
                     dtype=dtype)
    for r in range(out.shape[2]):
        for c in range(out.shape[3]):
            rows, cols = slice(r * block, (r + 1) * block), slice(c * block, (c + 1) * block)
            seen = visible[rows, cols]
            if seen.any():
                cells = probs[:, :, rows, cols][..., seen]  # (B, Hq, n_visible_cells)
                out[:, :, r, c] = cells.mean(-1) if reduce == "mean" else cells.amax(-1)
    return out
