"""CPU (and fallback) torch path for pooled attention maps: chunks of whole query rows, pooled as they are made.

A chunk holds complete rows, so its probabilities are exact softmaxes without a separate lse pass; chunks are a
multiple of `block` rows so every tile row is finished inside one chunk. Memory O(chunk x S) per head. Key tiles no
row of a chunk sees (past the causal frontier, left of a sliding window, or outside the span an explicit mask opens)
are NaN without any work, so a window of w keys costs O(T (w + chunk)) scores, not O(T S). A learned sink is one more
term exp(sink_h) in each row's normaliser: p_j = exp(s_j - lse) with lse = log(sum_k exp(s_k) + exp(sink_h)).
"""

from __future__ import annotations

import math

import torch

from attnscope.kernels.attention_stats.chunked import _MASKED, grouped_mask, key_span, rows_per_chunk
from attnscope.kernels.utils import key_positions_visible


def key_range(rows: slice, n_queries: int, n_keys: int, *, causal: bool, window: int | None,
              mask_rows: torch.Tensor | None) -> tuple[int, int]:
    """[lo, hi): the keys some query row of `rows` sees; the keys outside need no work.

    Under the causal rule no row sees past the last row's position, nor (with a window w) before the first row's
    position - w + 1; an explicit mask (`mask_rows`, this chunk's rows of it) opens the span key_span finds."""
    offset = n_keys - n_queries  # key position of query row 0
    if mask_rows is not None:
        return key_span(mask_rows, n_keys, 1)
    if not causal:
        return 0, n_keys
    lo = 0 if window is None else max(0, rows.start + offset - window + 1)
    return lo, min(n_keys, rows.stop + offset)


def visible_keys(rows: slice, lo: int, hi: int, *, n_queries: int, n_keys: int, causal: bool, window: int | None,
                 device) -> torch.Tensor:
    """(t, hi - lo) bool: key_positions_visible for the rows `rows` on keys lo .. hi - 1 only, built in O(t (hi - lo)).

    The same rule on a problem of hi - lo keys in which query row i sits at key i + (S - T) - lo: its key count minus
    its query count must be S - T - lo."""
    return key_positions_visible(hi - (n_keys - n_queries), hi - lo, rows, causal, device, window)


def pooled_attention_map(q, k, *, block: int, reduce: str, causal: bool, scale: float, hide_sink: bool,
                         mask: torch.Tensor | None = None, softcap: float | None = None, window: int | None = None,
                         sinks: torch.Tensor | None = None) -> torch.Tensor:
    """q (B, Hq, T, D), k (B, Hkv, S, D); mask None or a 4-D bool view (B or 1, Hq or 1, T, S) replacing the causal
    rule; window (causal rule only) and sinks (Hq,) fp32 as in kernels.utils. Returns (B, Hq, ceil(T/block),
    ceil(S/block)) fp32, NaN for tiles without a visible cell."""
    batch, n_heads, n_queries, head_dim = q.shape
    n_kv, n_keys = k.shape[1], k.shape[2]
    groups = n_heads // n_kv
    causal = causal and mask is None
    n_key_blocks = math.ceil(n_keys / block)
    out = torch.full((batch, n_heads, math.ceil(n_queries / block), n_key_blocks), float("nan"), device=q.device)
    k32 = k.float()
    sink_cells = None if sinks is None else sinks.view(1, n_kv, groups, 1, 1)
    chunk = block * max(1, rows_per_chunk(n_heads, n_keys) // block)
    for start in range(0, n_queries, chunk):
        rows = slice(start, min(start + chunk, n_queries))
        t = rows.stop - rows.start
        mask_rows = None if mask is None else mask[:, :, rows]
        lo, hi = key_range(rows, n_queries, n_keys, causal=causal, window=window, mask_rows=mask_rows)
        lo, hi = lo // block * block, min(n_keys, math.ceil(hi / block) * block)  # whole key tiles
        width, kb = hi - lo, math.ceil((hi - lo) / block)
        q_rows = q[:, :, rows].float() * (scale / softcap if softcap is not None else scale)
        q_rows = q_rows.reshape(batch, n_kv, groups * t, head_dim)
        scores = torch.matmul(q_rows, k32[:, :, lo:hi].transpose(-1, -2))  # (B, Hkv, G*t, width)
        if softcap is not None:
            scores.tanh_().mul_(softcap)
        scores = scores.view(batch, n_kv, groups, t, width)
        if mask_rows is None:
            visible = visible_keys(rows, lo, hi, n_queries=n_queries, n_keys=n_keys, causal=causal, window=window,
                                   device=q.device)[None, None]
            if causal:
                scores.masked_fill_(~visible, _MASKED)
        else:
            visible = mask_rows[..., lo:hi]  # (b, Hq or 1, t, width)
            scores.masked_fill_(~grouped_mask(visible, n_kv), _MASKED)
        # A finite stand-in for -inf: a row that sees nothing gets finite (uniform) weights, on cells that are hidden.
        if sink_cells is None:
            probs = torch.softmax(scores, dim=-1)
        else:  # the sink joins the normaliser only; a row that sees nothing gives every real key exp(-1e30 - .) = 0
            lse = torch.logaddexp(torch.logsumexp(scores, dim=-1, keepdim=True), sink_cells)
            probs = torch.exp(scores.sub_(lse))
        probs = probs.view(batch, n_heads, t, width)
        if hide_sink and lo == 0:
            visible = visible.clone()
            visible[..., 0] = False
        pooled = pool_tiles(probs, visible, block, reduce)  # (B, H, ceil(t/block), kb)
        first = start // block
        out[:, :, first : first + pooled.shape[2], lo // block : lo // block + kb] = pooled
    return out


def pool_tiles(cells: torch.Tensor, visible: torch.Tensor, block: int, reduce: str) -> torch.Tensor:
    """(..., ceil(t/block), ceil(s/block)) tiles of (..., t, s) cells: the mean ("mean") or the max ("max") of each
    tile's visible cells, NaN where a tile has none. visible is bool and broadcasts against cells in the leading
    dimensions; a ragged last tile row or column is padded with hidden cells."""
    row_pad, key_pad = -cells.shape[-2] % block, -cells.shape[-1] % block
    cells = torch.nn.functional.pad(cells, (0, key_pad, 0, row_pad))
    visible = torch.nn.functional.pad(visible, (0, key_pad, 0, row_pad), value=False)
    tiles = (cells.shape[-2] // block, block, cells.shape[-1] // block, block)
    cells = cells.view(*cells.shape[:-2], *tiles)  # (..., rb, block, kb, block)
    seen = visible.reshape(*visible.shape[:-2], *tiles)
    count = seen.sum(dim=(-3, -1))
    if reduce == "mean":
        pooled = (cells * seen).sum(dim=(-3, -1)) / count.clamp(min=1)
    else:
        pooled = cells.masked_fill(~seen, float("-inf")).amax(dim=(-3, -1))
    return torch.where(count > 0, pooled, torch.nan)
