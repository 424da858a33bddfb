"""CPU (and fallback) torch path for attention statistics: FlashAttention's online softmax, in torch operations.

Query rows go in blocks of ROW_BLOCK, and each block walks its keys in tiles whose scores fit TILE_BYTES, so the
(rows, keys) buffers stay in the CPU's caches and K/V are read once per block of rows, not once per row. Grouped-query
attention without repeating K/V: the G query heads that share a key/value head are folded into the rows (ordered
(query, head), so a block of queries is one contiguous slice of the pre-scaled q) and one matmul against the
un-repeated keys serves all of them. Scores and everything after them are fp32 whatever the input dtype.

Per tile, with r the row's reference logit (FlashAttention's online softmax, Dao et al. 2022):
    s = (scale q) k^T                      matmul into buffer 1 (softcap: tanh in place), hidden keys -> -1e30
    max_j s;  s -= r                       one reduction (with the argmax only when asked), one in-place pass
    w = exp(s)                             into buffer 2
    sum_j w_j (s_j - r)                    in place into buffer 1, then a row sum (for the entropy)
    acc += w @ [V | f - j | 1{j <= f} | 1{j = 0} | 1]
                                           one matmul into the row sums: the unnormalised output, the distance
                                           terms, the sink weight and the row total l (columns padded to 16s)
r is the first tile's row maximum, raised to the running maximum r' only when a tile's maximum exceeds it by more
than RESCALE_MARGIN (weights up to exp(16) are harmless in fp32, so most tiles skip the rescaling), which multiplies
the sums by exp(r - r') and turns the entropy sum E into exp(r - r') (E + (r - r') l). Every statistic is a function
of the row sums and the running maximum m, computed once for all rows at the end: lse = r + log l, entropy =
log l - E / l, max weight = exp(m - lse), sink mass = w_0 / l, output = (w @ V) / l. The mean distance splits at f, the
position of the block's first row: over keys j <= f, |p - j| = (p - f) + (f - j) is a sum of two non-negative terms
(the matmul columns above; no cancellation, unlike p - E[j]); tiles of keys after f add sum w |p - j| written out.
Under the causal rule without a sliding window nothing is written out: every key a row sees is at or before the row,
so the columns hold f - j for all keys, negative (at least 1 - ROW_BLOCK) only on the diagonal. Key tiles no row
of a block sees are skipped: those past the causal frontier, those left of a sliding window, and those outside the
span an explicit mask opens for the block. A row that sees no key has l = 0 and all-zero statistics. Learned sinks
join at the end: r -> r' = max(r, z), l -> alpha l + exp(z - r'), E -> alpha (E + (r - r') l) + exp(z - r') (z - r')
with alpha = exp(r - r'), and the row sums over the keys are weighted by alpha / l'.

Few, large operations per tile matter on the CPU: each is one parallel region, and on a busy machine a region waits
for every thread to be scheduled; the per-tile bookkeeping is a handful of operations on (rows,) vectors. Without
top-k, the exp and the entropy sum are exp_entropy, one pass that torch.compile fuses (kernels.compiled: large calls,
where a C++ compiler is present); eagerly they are the in-place operations above. Compiled, without an argmax and when
no row can miss a whole tile (no mask, no window), the row maximum joins them (softmax_step), and each row moves its
own reference; under the causal rule the same pass also sums l and the distance terms (the columns after V are then
known: f - j, 1, and 1 at key 0), and the matmul meets V alone. On several threads the two matmuls per tile cut their
rows so their batch is a multiple of the thread count (row_pieces).
"""

from __future__ import annotations

import math

import torch

from attnscope.kernels import compiled
from attnscope.kernels.attention_stats.naive import AttentionStats

# Bytes of fp32 scores per chunk of whole rows (pooled_map and taylor's torch paths).
CHUNK_BYTES = 4 * 2**20
ROW_BLOCK = 128  # query rows per block of attention_stats (x the G heads of a group: the matmul's rows)
# fp32 scores of one key tile of a block, all heads, per torch thread (tile_bytes). Measured on two CPU cores at 8k
# tokens (SmolLM2's 9:3 heads), one layer: blocks of 64-128 rows and 1-8 MiB tiles run alike on one thread, 16 MiB is
# 2% slower there; on two threads, where each thread takes half of every tile's rows (row_pieces), 16 MiB tiles are 6%
# faster than 8 MiB (half the tiles, so half the per-tile operations) and 32 MiB or more fall out of the cache.
TILE_BYTES = 8 * 2**20
TILE_THREADS = 2  # tiles grow with the thread count up to this many threads: more were never measured
MIN_PIECE_ROWS = 32  # a batched matmul's rows are cut into pieces no smaller than this (row_pieces)
RESCALE_MARGIN = 16.0  # weights may reach exp(16) before the running sums are rescaled to a new row maximum
_MASKED = -1e30  # finite stand-in for -inf logits of hidden keys: exp of it is exactly 0 and 0 * it is 0
# Calls computing at least this many scores take the compiled exp_entropy (kernels.compiled) when the policy allows:
# SmolLM2's 9 heads from about 2,700 tokens on. Below it the one-time compilation would cost more than it saves.
COMPILE_FROM = 2**26


def exp_entropy(scores: torch.Tensor, ref: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """w = exp(s - r) written into `weights`; returns sum_j w_j (s_j - r). scores (N, R, C), ref (N, R).

    Eager torch makes four passes over the tile for this (subtract, exp, multiply, sum); torch.compile fuses them
    into one, which on the CPU, where they are memory-bound, takes about a third of the time.
    """
    shifted = scores - ref[..., None]
    exp = torch.exp(shifted)
    weights.copy_(exp)
    return (exp * shifted).sum(-1)


_compiled_exp_entropy = compiled.fused(exp_entropy, dims={"scores": "N R C", "ref": "N R", "weights": "N R C"})


def softmax_step(scores: torch.Tensor, ref: torch.Tensor, weights: torch.Tensor, margin: float,
                 distance: torch.Tensor):
    """One tile of the online softmax when no key is hidden by a mask or a window and neither top-k nor argmax is
    asked: the tile's row maxima, each row's reference moved to its tile maximum where that exceeds it by more than
    `margin` (row by row; a reference of -inf always moves), w = exp(s - r') written into `weights`, sum_j w_j
    (s_j - r'), sum_j w_j and sum_j w_j distance_j with distance (C,) = f - j. Returns (tile maxima, r', entropy sum,
    total, distance sum); the last two replace the matmul's columns under the causal rule and go unused otherwise.
    Two passes over the tile once compiled (the maxima, then the rest)."""
    tile_max = scores.amax(-1)
    new_ref = torch.where(tile_max > ref + margin, tile_max, ref)
    shifted = scores - new_ref[..., None]
    exp = torch.exp(shifted)
    weights.copy_(exp)
    return tile_max, new_ref, (exp * shifted).sum(-1), exp.sum(-1), (exp * distance).sum(-1)


_compiled_softmax_step = compiled.fused(
    softmax_step, dims={"scores": "N R C", "ref": "N R", "weights": "N R C", "distance": "C"})


def row_pieces(n_batches: int, n_rows: int, threads: int) -> int:
    """How many pieces to cut each matmul's rows into so that the batched matmuls' batch count is a multiple of the
    thread count: torch's CPU bmm runs its batch entries in parallel, so 3 key/value heads on 2 threads take 2 rounds
    where 6 half-height matmuls take 3 of half the work (measured: 1.5x -> 2.0x speed-up from the second thread).
    1 when it already divides, or when the rows do not split evenly into pieces of at least MIN_PIECE_ROWS."""
    pieces = threads // math.gcd(n_batches, max(1, threads))
    if pieces <= 1 or n_rows % pieces or n_rows // pieces < MIN_PIECE_ROWS:
        return 1
    return pieces


def tile_bytes(threads: int) -> int:
    """Bytes of one key tile's scores: TILE_BYTES per thread, for 1 to TILE_THREADS threads."""
    return TILE_BYTES * min(max(1, threads), TILE_THREADS)


def rows_per_chunk(n_heads: int, n_keys: int) -> int:
    return max(1, CHUNK_BYTES // (4 * n_heads * n_keys))


def key_span(mask_rows: torch.Tensor, n_keys: int, least: int) -> tuple[int, int]:
    """[lo, hi): the keys any row of `mask_rows` (b, h, t, S) sees, widened to at least `least` keys."""
    seen = torch.nonzero(mask_rows.any(dim=(0, 1, 2)))
    lo, hi = (int(seen[0]), int(seen[-1]) + 1) if len(seen) else (0, 1)
    hi = max(hi, min(n_keys, lo + least))
    return max(0, min(lo, hi - least)), hi


def row_major_mask(mask_rows: torch.Tensor, n_kv: int) -> torch.Tensor:
    """(b, Hq or 1, t, n) mask -> (b, Hkv or 1, t, G or 1, n): broadcasts to scores with rows ordered (query, head)."""
    if mask_rows.shape[1] == 1:
        return mask_rows[:, :, :, None]
    return mask_rows.reshape(mask_rows.shape[0], n_kv, -1, *mask_rows.shape[2:]).transpose(2, 3)


def grouped_mask(mask_rows: torch.Tensor, n_kv: int) -> torch.Tensor:
    """(b, Hq or 1, t, n) mask -> (b, Hkv or 1, G or 1, t, n), broadcastable to the grouped score layout."""
    if mask_rows.shape[1] == 1:
        return mask_rows[:, :, None]
    return mask_rows.reshape(mask_rows.shape[0], n_kv, -1, *mask_rows.shape[2:])


def attention_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor | None,
    *,
    causal: bool,
    scale: float,
    topk: int,
    mask: torch.Tensor | None = None,
    softcap: float | None = None,
    argmax: bool = True,
    window: int | None = None,
    sinks: torch.Tensor | None = None,
) -> AttentionStats:
    """q (B, Hq, T, D), k (B, Hkv, S, D), v (B, Hkv, S, Dv) or None; mask None or a 4-D bool view
    (B or 1, Hq or 1, T, S) that replaces the causal rule (kernels.utils.check_mask); window (with the causal rule
    only) and sinks (fp32 (Hq,)) as kernels.utils says; see the module docstring."""
    batch, n_heads, n_queries, head_dim = q.shape
    n_kv, n_keys = k.shape[1], k.shape[2]
    groups = n_heads // n_kv
    offset = n_keys - n_queries  # key position of query row 0
    device = q.device
    causal = causal and mask is None
    window = window if causal else None
    # A row may see no key of a tile (an explicit mask, or a tile left of a sliding window): then the reference moves
    # to the running maximum every tile and rows with nothing summed yet are guarded.
    partial = mask is not None or window is not None
    factor = scale / softcap if softcap is not None else scale
    # (B Hkv, T G, D): rows ordered (query, head), so a block of queries is a contiguous slice
    q_rows = (q.float() * factor).reshape(batch, n_kv, groups, n_queries, head_dim).transpose(2, 3)
    q_rows = q_rows.reshape(batch * n_kv, n_queries * groups, head_dim)
    block_rows = min(ROW_BLOCK, n_queries)
    # The two matmuls per tile cut each key/value head's rows into `pieces` (row_pieces); K and the columns below
    # are repeated that many times (O(S D) memory) so that every piece has its own batch entry.
    pieces = row_pieces(batch * n_kv, block_rows * groups, torch.get_num_threads()) if device.type == "cpu" else 1
    k32 = k.float().reshape(batch * n_kv, n_keys, head_dim)  # no copy for fp32 inputs
    if pieces > 1:
        k32 = k32.repeat_interleave(pieces, dim=0)
    # Without top-k (which reads s - r back) the exp and the entropy sum are one compiled pass when allowed.
    fused = topk == 0 and compiled.wanted(device, batch * n_heads * n_queries * n_keys, least=COMPILE_FROM)
    # Compiled, keys hidden only by the causal rule, no top-k, no argmax (the engine's case): the whole tile step is
    # one call. Eagerly softmax_step would make more passes than the in-place operations below.
    stepped = fused and not argmax and not partial
    # Under the causal rule the stepped tile also sums the weights and w (f - j) (softmax_step: two more reductions
    # in a pass it makes anyway), so the matmul meets V alone: 64 columns rather than 80 for 64-dim heads, 20% less
    # of the tile's second matmul (measured per tile at 8k tokens: 4-5% less time for the step and the matmul).
    narrow = stepped and causal
    value_dim = 0 if v is None else v.shape[-1]
    at_distance, at_before, at_sink, at_total = range(value_dim, value_dim + 4)
    width = -(-(value_dim + 4) // 16) * 16  # whole 16-column panels: the matmul is no faster with fewer
    matmul_width = -(-value_dim // 16) * 16 if narrow else width
    # The weights meet [V | f - j | 1{j <= f} | 1{j = 0} | 1] in one matmul (only V when narrow); the two middle
    # columns change per block.
    columns = torch.zeros(batch * n_kv * pieces, n_keys, matmul_width, device=device)
    if v is not None:
        columns.view(batch * n_kv, pieces, n_keys, matmul_width)[..., :value_dim] = v.reshape(batch * n_kv, 1, n_keys,
                                                                                              value_dim)
    if not narrow:
        columns[:, 0, at_sink] = 1.0
        columns[:, :, at_total] = 1.0
    ramp = torch.arange(n_keys - 1, -n_keys, -1, device=device, dtype=torch.float32)  # ramp[n - 1 - f + j] = f - j

    grouped = (batch * n_kv, n_queries * groups)  # rows (query, head)
    sums = torch.empty(*grouped, width, device=device)
    reference = torch.empty(grouped, device=device)  # r; 0 for a row that sees nothing
    row_max = torch.empty(grouped, device=device)  # m; -inf for a row that sees nothing
    shifted_mass = torch.empty(grouped, device=device)  # E = sum_j exp(s_j - r) (s_j - r)
    first_of_row = torch.empty(n_queries, device=device, dtype=torch.float32)  # f of each row's block
    top_at = torch.empty(grouped, dtype=torch.int64, device=device) if argmax else None
    top_logits = torch.empty(*grouped, topk, device=device) if topk else None
    top_keys = torch.empty(*grouped, topk, dtype=torch.int64, device=device) if topk else None

    threads = torch.get_num_threads() if device.type == "cpu" else 1
    tile_keys = max(16, tile_bytes(threads) // (4 * batch * n_heads * block_rows))
    scores_buffer = torch.empty(batch * n_heads * block_rows * tile_keys, device=device)
    weights_buffer = torch.empty_like(scores_buffer)
    # key c of a tile against row i of a block: c - i, for the causal rule and the distances of diagonal tiles
    diagonal = torch.arange(tile_keys, device=device)[None, :] - torch.arange(block_rows, device=device)[:, None]
    upper = diagonal >= 0  # the causal rule's hidden keys from a diagonal's first hidden column on (c - c0 >= i)
    before_end = 0  # keys [0, before_end) hold 1 in the "j <= f" column; f only grows from block to block
    for start in range(0, n_queries, block_rows):
        t = min(block_rows, n_queries - start)
        rows = slice(start * groups, (start + t) * groups)
        first = start + offset  # key position of the block's first row
        mask_rows = None if mask is None else mask[:, :, start : start + t]
        if causal:
            lo, hi = 0, min(n_keys, max(first + t, topk))
            if window is not None:  # keys left of the block's first row's window: no row of the block sees them
                lo = max(0, min(first - window + 1, hi - topk))
        elif mask is not None:
            lo, hi = key_span(mask_rows, n_keys, topk)
        else:
            lo, hi = 0, n_keys
        # Keys from split on get sum w |p - j| written out. Under the causal rule every key a row p sees is at or
        # before it, so p - j = (p - f) + (f - j) holds for all of them, f - j < 0 only on the diagonal (at least
        # 1 - block_rows: a cancellation bounded by block_rows rounding units of l), and nothing is written out. A
        # sliding window keeps the split: its distances are below the window, where that cancellation shows.
        # Otherwise split is the first key after f, and keys past it hold 0 in the distance column: no earlier block
        # wrote there, as f never shrinks.
        split = hi if causal and window is None else min(max(lo, first + 1), hi)
        if not narrow:  # narrow: softmax_step sums w (f - j) from the ramp itself
            columns[:, lo:split, at_distance] = ramp[n_keys - 1 - first + lo : n_keys - 1 - first + split]
            if split > before_end:
                columns[:, before_end:split, at_before] = 1.0
                before_end = split
        first_of_row[start : start + t] = first
        # (B Hkv pieces, t G / pieces, D); a last short block that does not split evenly goes whole
        cut = pieces if (t * groups) % pieces == 0 else 1
        q_block = q_rows[:, rows].reshape(batch * n_kv * cut, t * groups // cut, head_dim)
        keys = k32 if cut == pieces else k32[::pieces]
        cols = columns if cut == pieces else columns[::pieces]
        acc = torch.zeros(batch * n_kv, t * groups, matmul_width, device=device)  # the row sums
        # narrow: the row sums of the four columns after V ([f - j, 1{j <= f}, 1{j = 0}, 1]) from softmax_step
        side = torch.zeros(batch * n_kv, t * groups, 4, device=device) if narrow else None
        pieces_of = lambda x: x.view(batch * n_kv * cut, t * groups // cut, x.shape[-1])  # noqa: E731
        total = side[..., 3] if narrow else acc[..., at_total]  # l, a view that follows the sums
        top = ref = entropy_sum = best = None
        unset = torch.full((batch * n_kv, t * groups), float("-inf"), device=device) if stepped else None
        for a in range(lo, hi, tile_keys):
            b = min(a + tile_keys, hi)
            scores = scores_buffer[: batch * n_heads * t * (b - a)].view(batch * n_kv, t * groups, b - a)
            torch.bmm(q_block, keys[:, a:b].transpose(1, 2), out=pieces_of(scores))
            if softcap is not None:
                scores.tanh_().mul_(softcap)
            if causal and b > first + 1:  # key a + c is hidden from row first + i when c - i > first - a
                c0 = max(0, first - a + 1)  # keys before this are seen by every row of the block
                hidden = upper[:t, : b - a - c0] if c0 == first - a + 1 else diagonal[:t, c0 : b - a] > first - a
                scores.view(-1, t, groups, b - a)[..., c0:].masked_fill_(hidden[:, None], _MASKED)
            elif mask_rows is not None:
                hidden = ~row_major_mask(mask_rows[..., a:b], n_kv)  # (b, Hkv or 1, t, G or 1, keys)
                scores.view(batch, n_kv, t, groups, b - a).masked_fill_(hidden, _MASKED)
            if window is not None and a <= first + t - 1 - window:  # key a + c left of row first + i's window
                left = diagonal[:t, : b - a] <= first - a - window
                scores.view(-1, t, groups, b - a).masked_fill_(left[:, None], _MASKED)

            weights = weights_buffer[: scores.numel()].view(scores.shape)
            if stepped:
                # f - j of the tile's keys (used when narrow; a pass that is not narrow ignores its two sums)
                distance = ramp[n_keys - 1 - first + a : n_keys - 1 - first + b]
                tile_max, new_ref, tile_entropy, tile_total, tile_distance = _compiled_softmax_step(
                    scores, unset if ref is None else ref, weights, RESCALE_MARGIN, distance)
                if ref is None:
                    top, ref, entropy_sum = tile_max, new_ref, tile_entropy
                else:
                    top = torch.maximum(top, tile_max)
                    if bool((new_ref != ref).any()):  # E' = alpha (E + (r - r') l), alpha = exp(r - r'), per row
                        drop = ref - new_ref
                        alpha = torch.exp(drop)
                        entropy_sum.addcmul_(drop, total).mul_(alpha)
                        acc.mul_(alpha[..., None])
                        if narrow:
                            side.mul_(alpha[..., None])
                        ref = new_ref
                    entropy_sum.add_(tile_entropy)
                if narrow:
                    side[..., 0].add_(tile_distance)
                    side[..., 3].add_(tile_total)
                    if a == 0:
                        side[..., 2].add_(weights[..., 0])
            else:
                if argmax:
                    tile_max, tile_at = scores.max(dim=-1)
                else:
                    tile_max = scores.amax(dim=-1)
                if partial:
                    tile_max.masked_fill_(tile_max < _MASKED / 2, float("-inf"))
                if top is None:
                    top, best = tile_max, (tile_at + a if argmax else None)
                    ref = tile_max if not partial else torch.where(tile_max > float("-inf"), tile_max, 0.0)
                else:
                    if argmax:
                        best = torch.where(tile_max > top, tile_at + a, best)
                    top = torch.maximum(top, tile_max)
                    # Under a mask a row may see its first key in any tile: move r to m every time (exact, and safe).
                    if partial or bool((tile_max > ref + RESCALE_MARGIN).any()):
                        new_ref = top if not partial else torch.where(top > float("-inf"), top, 0.0)
                        drop = ref - new_ref
                        alpha = torch.exp(drop)
                        if partial:  # nothing summed yet: nothing to rescale (and exp could overflow)
                            alpha.masked_fill_(total == 0, 0.0)
                        entropy_sum.addcmul_(drop, total).mul_(alpha)  # E' = alpha (E + (r - r') l)
                        acc.mul_(alpha[..., None])
                        ref = new_ref
                if fused:
                    tile_entropy = _compiled_exp_entropy(scores, ref, weights)
                else:
                    scores.sub_(ref[..., None])  # s - r, in place
                    torch.exp(scores, out=weights)
                    if topk > 0:
                        tile_top, tile_key = scores.topk(min(topk, b - a), dim=-1)
                        tile_top.add_(ref[..., None])  # back to logits, comparable across tiles
                        tile_key.add_(a)
                        if entropy_sum is not None:  # not the block's first tile: merge with the top-k so far
                            tile_top, picked = torch.cat([logits_top, tile_top], -1).topk(topk, dim=-1)
                            tile_key = torch.cat([keys_top, tile_key], -1).gather(-1, picked)
                        logits_top, keys_top = tile_top, tile_key
                    tile_entropy = scores.mul_(weights).sum(-1)  # sum_j w_j (s_j - r); buffer 1 is free after this
                entropy_sum = tile_entropy if entropy_sum is None else entropy_sum.add_(tile_entropy)
            if matmul_width:
                pieces_of(acc).baddbmm_(pieces_of(weights), cols[:, a:b])
            if b > split:  # keys after the block's first row: sum w |p - j| written out
                c0 = max(a, split) - a
                away = (diagonal[:t, c0 : b - a] - (first - a)).abs().float()[:, None]  # |p - j|, (t, 1, keys)
                corner = (weights.view(-1, t, groups, b - a)[..., c0:] * away).sum(-1)
                acc[..., at_distance].view_as(corner).add_(corner)
        if top is None:  # no key at all (an empty span under a mask)
            top = torch.full_like(row_max[:, rows], float("-inf"))
            ref, entropy_sum = torch.zeros_like(top), torch.zeros_like(top)
        if narrow:  # every key a row sees lies before the block's end: the 1{j <= f} column sums to l
            side[..., 1] = side[..., 3]
            sums[:, rows, :value_dim] = acc[..., :value_dim]
            sums[:, rows, value_dim : value_dim + 4] = side
        else:
            sums[:, rows] = acc
        reference[:, rows], row_max[:, rows], shifted_mass[:, rows] = ref, top, entropy_sum
        if argmax:
            top_at[:, rows] = best
        if topk > 0:
            top_logits[:, rows], top_keys[:, rows] = logits_top, keys_top

    by_row = (batch, n_kv, n_queries, groups)
    sums = sums.view(*by_row, width)
    total = sums[..., at_total]
    seen = total > 0
    reference, row_max, shifted_mass = reference.view(by_row), row_max.view(by_row), shifted_mass.view(by_row)
    share = torch.where(seen, 1.0 / total, 0.0)  # turns a row sum over the keys into their weighted sum
    learned = None
    if sinks is not None:
        # The sink cell joins the normaliser: move r to r' = max(r, z) (rows that see nothing have l = 0 and r = 0),
        # l' = alpha l + exp(z - r'), E' = alpha (E + (r - r') l) + exp(z - r') (z - r'), alpha = exp(r - r').
        sink = sinks.view(1, n_kv, 1, groups)
        new_ref = torch.maximum(reference, sink)
        alpha, cell = torch.exp(reference - new_ref), torch.exp(sink - new_ref)
        shifted_mass = alpha * (shifted_mass + (reference - new_ref) * total) + cell * (sink - new_ref)
        total = alpha * total + cell
        reference, seen = new_ref, torch.ones_like(seen)
        share, learned = alpha / total, cell / total
        if argmax:
            top_at = top_at.view(by_row).masked_fill(sink > row_max, -1)
        row_max = torch.maximum(row_max, sink)
    lse = reference + torch.log(total)  # -inf where nothing is seen
    position = torch.arange(n_queries, device=device, dtype=torch.float32) + offset
    # over keys j <= f: sum w (p - f) + sum w (f - j); the keys after f are already in the distance column
    distance = sums[..., at_distance] + (position - first_of_row)[:, None] * sums[..., at_before]
    to_heads = lambda x: x.transpose(2, 3).reshape(batch, n_heads, n_queries, *x.shape[4:])  # noqa: E731
    stats = AttentionStats(
        lse=to_heads(lse),
        entropy=to_heads(torch.where(seen, torch.log(total) - shifted_mass / total, 0.0)),
        max_weight=to_heads(torch.where(seen, torch.exp(row_max - lse), 0.0)),
        argmax=to_heads(top_at.view(by_row).masked_fill(~seen, 0)) if argmax else None,
        sink_mass=to_heads(sums[..., at_sink] * share),
        mean_distance=to_heads(distance * share),
        learned_sink_mass=None if learned is None else to_heads(learned),
    )
    if topk > 0:
        top_logits, top_keys = top_logits.view(*by_row, topk), top_keys.view(*by_row, topk)
        hidden = top_logits < _MASKED / 2
        stats.topk_weights = to_heads(torch.exp(top_logits - lse[..., None]).masked_fill_(hidden, 0.0))
        stats.topk_indices = to_heads(top_keys.masked_fill_(hidden, -1))
    if v is not None:
        # (B, T, Hkv, G, Dv) in memory, the layout a transformers attention function returns: handed out as
        # (B, Hq, T, Dv), its transpose back is free
        output = torch.empty(batch, n_queries, n_kv, groups, value_dim, dtype=v.dtype, device=device)
        torch.mul(sums[..., :value_dim], share[..., None], out=output.permute(0, 2, 1, 3, 4))
        stats.output = output.view(batch, n_queries, n_heads, value_dim).transpose(1, 2)
    return stats
