"""Readable fp64 reference for pooled attention maps: the full (T, S) probability matrix, then tile by tile.

Tile (r, c) covers query rows r*block .. r*block+block-1 and keys c*block .. c*block+block-1. "mean" averages the
probabilities of the tile's visible cells (cells hidden by the causal rule, its sliding window or the explicit mask,
cells past the end and, with hide_sink, key 0 are not cells of the tile); "max" takes their maximum; a tile with no
visible cell is NaN. Logits are softcapped before the softmax when a softcap is given; a row that sees no key has no
visible cell. Learned sinks join each row's softmax as one more cell with no key position: the map shows the real
keys' probabilities exp(s_j) / (sum_k exp(s_k) + exp(sink_h)), which sum to 1 - p_sink per row.
"""

from __future__ import annotations

import math

import torch

from attnscope.kernels.attention_stats.naive import masked_scores, probabilities
from attnscope.kernels.utils import visibility


def attention_probs(q, k, *, causal: bool, scale: float | None, mask: torch.Tensor | None = None,
                    softcap: float | None = None, window: int | None = None, sinks: torch.Tensor | None = None,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(B, Hq, T, S) softmax probabilities computed in `dtype`; hidden cells (and rows that see nothing) are 0.

    With `sinks` (Hq,) the softmax runs over the S keys plus a sink cell holding sinks[h], and the sink's column is
    dropped: the S probabilities of a row sum to 1 - p_sink (a row that sees no key puts all its weight on the sink).
    """
    if window is not None:
        mask = visibility(q.shape[2], k.shape[2], causal=causal, mask=None, device=q.device, window=window)
    scores = masked_scores(q, k, causal=causal, scale=scale, mask=mask, softcap=softcap, dtype=dtype)
    if sinks is None:
        return probabilities(scores)
    sink_cells = sinks.to(dtype).view(1, -1, 1, 1).expand(*scores.shape[:3], 1)
    return torch.softmax(torch.cat([scores, sink_cells], dim=-1), dim=-1)[..., :-1]


def pooled_attention_map(q, k, *, block: int, reduce: str, causal: bool = True, scale: float | None = None,
                         hide_sink: bool = False, mask: torch.Tensor | None = None, softcap: float | None = None,
                         window: int | None = None, sinks: torch.Tensor | None = None,
                         dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(B, Hq, ceil(T/block), ceil(S/block)) pooled probabilities computed in `dtype`, by explicit loops over tiles."""
    probs = attention_probs(q, k, causal=causal, scale=scale, mask=mask, softcap=softcap, window=window, sinks=sinks,
                            dtype=dtype)
    n_queries, n_keys = q.shape[2], k.shape[2]
    visible = visibility(n_queries, n_keys, causal=causal, mask=mask, device=q.device, window=window)
    visible = visible.expand(probs.shape).clone()
    if hide_sink:
        visible[..., 0] = False
    if block == 1:  # every tile is one cell
        return torch.where(visible, probs, float("nan"))
    out = torch.full((*probs.shape[:2], math.ceil(n_queries / block), math.ceil(n_keys / block)), float("nan"),
                     dtype=dtype)
    for r in range(out.shape[2]):
        for c in range(out.shape[3]):
            rows, cols = slice(r * block, (r + 1) * block), slice(c * block, (c + 1) * block)
            cells, seen = probs[:, :, rows, cols], visible[:, :, rows, cols]  # (B, Hq, rows, cols)
            count = seen.sum(dim=(2, 3))
            if reduce == "mean":
                value = torch.where(seen, cells, 0.0).sum(dim=(2, 3)) / count
            else:
                value = cells.masked_fill(~seen, float("-inf")).amax(dim=(2, 3))
            out[:, :, r, c] = torch.where(count > 0, value, float("nan"))
    return out
