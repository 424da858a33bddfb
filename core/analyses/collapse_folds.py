"""The fast path of the context-collapse analysis (paper B; attnscope.analyses.collapse): every layer of a capture
at one context length, folded into batches of heads.

collapse_reference.py is the specification, one head and one row at a time; this module computes the same LayerRows
(the tests hold it to the reference) with the work organised for speed:
- layers of one shape are stacked into one batch of heads (a fold), up to WORK_ELEMENTS per (heads, rows, N, L) work
  tensor, and the temperature sweep runs over every layer at once: short contexts cost a few large tensor
  operations instead of many small ones; between folds, a caller that asked to stop (attnscope.cancel) stops;
- the distances to s and to (N / L) o are expanded in squares, one matmul per token-vector set for every N at once;
- the distances between token vectors come from the selected keys only: the top K of a row among themselves (for
  delta, a running minimum over ranks), and for d1 a table from the union of the rows' top B = max(BOUND_NS) keys to
  every key, so that the farthest key outside a row's top B is found without an (N, L) pass per N (_theorem1_d1);
- the pieces whose size grows with K^2 or the unions are computed a chunk of heads (or sets) at a time;
- the exact Jacobian norm solves the secular equation per row (softmax_jacobian_norm) instead of an
  eigendecomposition.

Only `rows` x L weights per head exist at once; no L x L attention matrix is built. Everything is fp64 except the
attention_stats kernel's max weight, entropy, weight on key 0 and learned sink mass (fp32), and the ranking of the
keys, which is the kernel's (fp32 scores) without a learned sink. The analysis runs on the CPU whatever device the
model ran on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from attnscope import cancel, kernels
from attnscope.analyses.collapse_reference import (
    BOUND_NS, EPSILONS, N_GRID, TEMPERATURES, LayerRows, picked_rows,
)
from attnscope.capture import LayerCapture
from attnscope.kernels.attention_stats.chunked import CHUNK_BYTES

EPS64 = float(np.finfo(np.float64).eps)


def analyse_layer(layer: LayerCapture, *, rows: int, hidden: torch.Tensor | None = None,
                  temperature: bool = False, seed: int = 0) -> LayerRows:
    """Everything paper B measures, for the last `rows` query positions of one layer (first sequence of the batch)."""
    return analyse_layers([layer], rows=rows, hidden=None if hidden is None else [hidden], temperature=temperature,
                          seeds=[seed])[0]


def analyse_layers(layers: Sequence[LayerCapture], *, rows: int, hidden: Sequence[torch.Tensor] | None = None,
                   temperature: bool = False, seeds: Sequence[int] | None = None) -> list[LayerRows]:
    """analyse_layer for several layers of one capture at one length. Layers of the same shape are stacked into one
    batch of heads (a fold, WORK_ELEMENTS per work tensor) and the temperature sweep runs over every layer at once, so
    short contexts cost a few large tensor operations instead of many small ones.

    Args:
        layers: LayerCaptures of the same length (B, Hq, T, D) / (B, Hkv, S, D); the first sequence is analysed.
        rows: query positions analysed per layer: the last ones (at most T/4 under the causal mask).
        hidden: per layer, (B, S', d_model) input hidden states to use as token vectors (the first S kept), or
            None for the layer's value vectors.
        temperature: also measure the temperature sweep (sensitivity and jacobian_norm).
        seeds: per layer, the seed of the random direction of the temperature probe (default 0, 1, ...).

    Returns:
        One LayerRows per layer, in order.
    """
    if hidden is not None and len(hidden) != len(layers):
        raise ValueError(f"hidden has {len(hidden)} entries for {len(layers)} layers; give one per layer or None.")
    # The analysis is exact fp64 work on the analysed rows (a few thousand keys): it runs on the CPU whatever device
    # the model ran on, the windows' q/k/v (O(L d) per head) copied there.
    layers = [layer.to("cpu") for layer in layers]
    hidden = None if hidden is None else [states.cpu() for states in hidden]
    seeds = list(range(len(layers))) if seeds is None else list(seeds)
    if len(seeds) != len(layers):
        raise ValueError(f"seeds has {len(seeds)} entries for {len(layers)} layers; give one per layer or None.")
    for layer in layers:
        if layer.mask is not None:
            raise ValueError("This layer has an explicit (padding) mask; the collapse analysis runs on unpadded text "
                             "windows under the causal rule (also sliding windows) or full visibility.")
    out: list[LayerRows] = []
    logits, directions = [], []
    start = 0
    while start < len(layers):
        cancel.checkpoint()  # a fold of a long window takes seconds: a caller that asked to stop stops here
        stop = start + 1
        while stop < len(layers) and _foldable(layers, hidden, start, stop + 1, rows):
            stop += 1
        fold, fold_logits = _analyse_fold(layers[start:stop], rows=rows,
                                          hidden=None if hidden is None else hidden[start:stop])
        out += fold
        if temperature:
            logits.append(fold_logits)
            directions += [torch.randn((layer.n_heads, *fold_logits.shape[1:]), dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(seed))
                           for layer, seed in zip(layers[start:stop], seeds[start:stop])]
        start = stop
    if temperature:
        logits = torch.cat(logits)  # (all heads, R, L)
        direction = torch.cat(directions).masked_fill_(~torch.isfinite(logits), 0.0)
        sensitivity, jacobian = _temperature(logits, direction)
        first = 0
        for result in out:
            own = slice(first, first + result.max_weight.shape[0])
            result.sensitivity, result.jacobian_norm = sensitivity[own].numpy(), jacobian[own].numpy()
            first = own.stop
    return out



# Elements of the largest work tensor: (heads, rows, N, L) of a fold, (heads, rows, block, K) or (sets, U, L) of a
# chunk. 8 MB in fp64: of 2^19 to 2^23, the fastest on the default sweep (larger tensors leave the cache and are
# allocated fresh from the system, page by page).
WORK_ELEMENTS = 2**20
# fp32 scores of one fold's analysed rows: half a chunk of the attention_stats torch path, so the rows of a fold stay
# in one chunk and their keys are ranked exactly as with the layer alone (ties among underflowed weights included)
FOLD_SCORES = CHUNK_BYTES // 8
SEPARATION_BLOCK = 64  # keys per block of _separations: the smaller, the closer its work comes to half the pairs


def _foldable(layers: Sequence[LayerCapture], hidden, start: int, stop: int, rows: int) -> bool:
    """Whether layers[start:stop] can be analysed as one batch: same shapes, mask rule and scale, and the work
    within WORK_ELEMENTS and FOLD_SCORES."""
    first, last = layers[start], layers[stop - 1]
    if (first.q.shape, first.k.shape, first.v.shape, first.causal, first.scale, first.window, first.softcap,
            first.sinks is None) != (last.q.shape, last.k.shape, last.v.shape, last.causal, last.scale, last.window,
                                     last.softcap, last.sinks is None):
        return False
    if hidden is not None and hidden[start].shape != hidden[stop - 1].shape:
        return False
    picked = picked_rows(first, rows)
    length = first.k.shape[2]
    heads = (stop - start) * first.n_heads
    return heads * picked * len(N_GRID) * length <= WORK_ELEMENTS and heads * picked * length <= FOLD_SCORES


def _chunks(total: int, per_item: int) -> list[slice]:
    """Consecutive slices of range(total) of about WORK_ELEMENTS / per_item items (at least one)."""
    size = max(1, WORK_ELEMENTS // max(per_item, 1))
    return [slice(start, min(start + size, total)) for start in range(0, total, size)]


def _analyse_fold(layers: Sequence[LayerCapture], *, rows: int, hidden) -> tuple[list[LayerRows], torch.Tensor]:
    """The analysis of layers of one shape, their heads stacked layer after layer: H = layers x heads query heads,
    G = layers x kv heads key/value heads (query head h reads kv head h // groups), and X token-vector sets (G value
    sets, or one hidden-state set per layer), query head h reading set h // (H / X). Returns the layers' rows
    (without the temperature sweep) and the scaled logits (H, R, L), -inf where hidden.

    Softcapped logits (Gemma 2) are the capped ones throughout, and Corollary 1's Delta is at most the cap. A learned
    sink (gpt-oss) is one more cell of every row, after the keys: its logit z_h, a zero token vector (it has no value)
    and a place in the ranking like any key, so the row's weights over its L + 1 cells sum to 1 and every quantity
    below counts L + 1 cells; Delta also bounds |z_h|."""
    first = layers[0]
    n_queries, length = first.q.shape[2], first.k.shape[2]
    rows = picked_rows(first, rows)
    picked = slice(n_queries - rows, n_queries)
    q = torch.cat([layer.q[0, :, picked] for layer in layers])  # (H, R, D)
    k = torch.cat([layer.k[0] for layer in layers])  # (G, L, D)
    n_heads, n_kv = q.shape[0], k.shape[0]
    groups = n_heads // n_kv
    sinks = None if first.sinks is None else torch.cat([layer.sinks.cpu() for layer in layers]).double()  # (H,)
    stats = kernels.attention_stats(q[None], k[None], None, causal=first.causal, scale=first.scale,
                                    window=first.window, softcap=first.softcap,
                                    sinks=None if sinks is None else sinks.float().to(q.device),
                                    topk=min(max(N_GRID), length))
    visible_mask = key_mask = first.visible(picked)[0, 0]  # (R, L)
    # Keys before this are visible to every analysed row (under the causal rule); a sliding window hides the oldest
    # keys instead, so then every key is masked explicitly.
    hidden_from = int(visible_mask.sum(-1).min()) if first.window is None else 0

    k64 = k.double()
    logits = torch.matmul(q.double().view(n_kv, groups * rows, -1), k64.transpose(1, 2)).view(n_heads, rows, length)
    logits = logits.mul_(first.scale)
    if first.softcap is not None:
        logits = first.softcap * torch.tanh(logits / first.softcap)
    logits[..., hidden_from:].masked_fill_(~visible_mask[:, hidden_from:], -math.inf)  # (H, R, L)
    if hidden is None:
        x = torch.cat([layer.v[0] for layer in layers]).double()  # (X = G, L, d)
    else:  # the states of the layer's keys: a causal prefix keeps the first L
        x = torch.stack([states[0, :length] for states in hidden]).double()  # (X = layers, L, d)
    if sinks is not None:  # the sink cell: last, seen by every row, no token vector
        logits = torch.cat([logits, sinks[:, None, None].expand(-1, rows, 1)], -1)
        visible_mask = torch.cat([visible_mask, torch.ones(rows, 1, dtype=torch.bool)], -1)
        x = torch.cat([x, x.new_zeros(x.shape[0], 1, x.shape[2])], 1)
        length += 1
    visible = visible_mask.sum(-1)  # (R,): at most the window in a sliding-window layer (+ 1 with a sink cell)
    visible_f = visible.double()
    fewest = int(visible.min())  # the selected sets stay below every analysed row's visible count
    alpha = torch.softmax(logits, -1)
    n_sets = x.shape[0]
    per_set = n_heads // n_sets
    of_head = torch.arange(n_heads) // per_set  # (H,) token-vector set of each head
    norms_sq = (x * x).sum(-1)  # (X, L)
    alpha_sq_norms = alpha**2 * norms_sq.repeat_interleave(per_set, 0)[:, None, :]  # (H, R, L): ||alpha_i x_i||^2

    def dot_x(points: torch.Tensor) -> torch.Tensor:
        """x_i . p for every key i and point p (H, R, ..., d): (H, R, ..., L), one matmul per token-vector set."""
        shape = points.shape[:-1]
        flat = points.reshape(n_sets, -1, points.shape[-1])
        return torch.matmul(flat, x.transpose(1, 2)).view(*shape, length)

    output = torch.matmul(alpha.view(n_sets, per_set * rows, length), x).view(n_heads, rows, -1)  # (H, R, d)

    # Corollary 1 band, Delta = ||q_t|| max_i ||k_i|| * scale.
    q_norm = q.double().norm(dim=-1)  # (H, R)
    k_max = k64.norm(dim=-1)[:, None, :].masked_fill(~key_mask[None], -math.inf).amax(-1)  # (G, R)
    delta = q_norm * k_max.repeat_interleave(groups, 0) * first.scale
    if first.softcap is not None:  # every capped logit lies in [-c, c]
        delta = delta.clamp(max=first.softcap)
    if sinks is not None:
        delta = torch.maximum(delta, sinks.abs()[:, None])
    band_low = torch.exp(-2 * delta) / visible
    band_high = torch.exp(2 * delta) / visible

    n_values = tuple(n for n in N_GRID if n < fewest)
    bound_ns = tuple(n for n in BOUND_NS if n in n_values)
    sizes = torch.tensor(n_values, dtype=torch.float64)  # (P,)
    largest = max(n_values, default=1)
    if sinks is None:
        indices = stats.topk_indices[0][..., :largest]  # (H, R, K) by descending weight
    else:  # the kernel ranks the keys only; the sink cell competes here
        indices = alpha.topk(largest, -1).indices
    weights = alpha.gather(-1, indices)  # (H, R, K)
    left_x, right_x = _square_factors(x, norms_sq)  # (X, L, d + 2) each
    selected_left, selected_right = _rows_of(left_x, of_head, indices), _rows_of(right_x, of_head, indices)
    vectors = selected_left[..., :x.shape[-1]]  # (H, R, K, d)
    in_set = torch.arange(largest) < sizes[:, None]  # (P, K): rank k is in I_N
    s = torch.matmul(weights[:, :, None, :] * in_set, vectors)  # (H, R, P, d): s for every N at once

    # ||alpha_i x_i - s|| for every key, via the square (in place: these are the largest tensors); then the selected
    # keys' own distances.
    distances = torch.addcmul(alpha_sq_norms[:, :, None], dot_x(s), alpha[:, :, None], value=-2)
    distances = distances.add_((s * s).sum(-1, keepdim=True)).clamp_min_(0).sqrt_()  # (H, R, P, L)
    selected = distances.gather(-1, indices[:, :, None, :].expand(-1, -1, len(n_values), -1))  # (H, R, P, K)
    distances[..., hidden_from:].masked_fill_(~visible_mask[:, None, hidden_from:], 0.0)
    d_sum = distances.sum(-1) - (selected * in_set).sum(-1)  # over the visible keys outside I_N
    distances[..., hidden_from:].masked_fill_(~visible_mask[:, None, hidden_from:], math.inf)
    distances.scatter_(-1, indices[:, :, None, :].expand_as(selected), selected.masked_fill(in_set, math.inf))
    radius = distances.amin(-1)  # (H, R, P): the nearest alpha_j x_j outside I_N
    del distances
    ratio = ((selected <= radius[..., None]) & in_set).sum(-1) / sizes
    d_norm = (output[:, :, None] - 2 * s).norm(dim=-1)

    # Random-subset expectation: sum_i ||alpha_i x_i - c o|| with c = N / L, the square expanded in c.
    c = sizes / visible_f[:, None]  # (R, P)
    to_output = alpha * dot_x(output)  # (H, R, L): alpha_i x_i . o
    spread = torch.addcmul(alpha_sq_norms[:, :, None], c[None, :, :, None], to_output[:, :, None], value=-2)
    spread = spread.add_((c * c)[None, :, :, None] * (output * output).sum(-1)[:, :, None, None])
    spread = spread.clamp_min_(0).sqrt_()  # (H, R, P, L)
    spread[..., hidden_from:].masked_fill_(~visible_mask[:, None, hidden_from:], 0.0)
    expected = ((visible_f[:, None] - sizes) / visible_f[:, None]) * spread.sum(-1)
    del spread
    expected_norm = (1 - 2 * sizes / visible_f[:, None]).abs() * output.norm(dim=-1)[..., None]

    top = max(bound_ns, default=0)
    separation, between = _separations(selected_left, selected_right, n_values, top)
    theorem2_low, theorem2_high = _theorem2(weights, vectors, sizes, radius, separation)
    bound = torch.zeros(n_heads, rows, len(bound_ns), dtype=torch.float64)
    if bound_ns:
        d1 = _theorem1_d1(left_x, right_x, indices[..., :top], visible_mask, hidden_from, bound_ns, between)
        bound[:] = _theorem1(d1, weights, vectors, visible_f, bound_ns)

    min_weight = alpha.masked_fill(~visible_mask[None], math.inf).amin(-1)
    heads = first.n_heads
    results = []
    for index in range(len(layers)):
        own = slice(index * heads, (index + 1) * heads)
        results.append(LayerRows(
            length=first.k.shape[2], visible=visible.numpy(), max_weight=stats.max_weight[0, own].double().numpy(),
            min_weight=min_weight[own].numpy(), entropy=stats.entropy[0, own].double().numpy(),
            sink_mass=stats.sink_mass[0, own].double().numpy(), band_low=band_low[own].numpy(),
            band_high=band_high[own].numpy(), n_values=n_values, d_sum=d_sum[own].numpy(),
            d_norm=d_norm[own].numpy(), expected=expected[own].numpy(), expected_norm=expected_norm[own].numpy(),
            ratio=ratio[own].numpy(), theorem2_low=theorem2_low[own].numpy(),
            theorem2_high=theorem2_high[own].numpy(), bound_ns=bound_ns, bound=bound[own].numpy(),
            window=first.window or 0,
            learned_sink_mass=None if sinks is None else stats.learned_sink_mass[0, own].double().cpu().numpy(),
        ))
    return results, logits


def _rows_of(table: torch.Tensor, of_head: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """table[of_head[h], indices[h, ...]] for a table (X, n, w), head sets of_head (H,) and indices (H, ...) into
    n: (H, ..., w), by one index_select on the flattened table (much faster than advanced indexing)."""
    flat = (of_head.view(-1, *[1] * (indices.dim() - 1)) * table.shape[1] + indices).reshape(-1)
    return table.reshape(-1, table.shape[-1]).index_select(0, flat).view(*indices.shape, table.shape[-1])


def _square_factors(x: torch.Tensor, norms_sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[x, ||x||^2, 1] and [-2 x, 1, ||x||^2] (..., n, d + 2): the product of a row of the first with a row of the
    second is ||x_a - x_b||^2 = ||x_a||^2 + ||x_b||^2 - 2 x_a . x_b, so one matmul gives the squares without an
    (m, n) pass per term. In fp64 the squares come out slightly negative where rounding meets x_a = x_b."""
    ones = torch.ones_like(norms_sq)[..., None]
    return torch.cat([x, norms_sq[..., None], ones], -1), torch.cat([-2 * x, ones, norms_sq[..., None]], -1)


def _separations(left: torch.Tensor, right: torch.Tensor, n_values: Sequence[int], top: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, R, P) smallest distance between two vectors of I_N (0 for N = 1), and (H, R, B, B) the squared distances
    among the top B = `top` keys (for Theorem 1; only entries [j, k] with j < k are meaningful), from the selected
    vectors' square factors left, right (H, R, K, d + 2) (_square_factors).

    Per key b, the smallest squared distance to a key a ranked above it, then a running minimum over ranks; the
    root is taken of the P minima only. The squares come from one matmul per block of SEPARATION_BLOCK keys b
    against the keys ranked above the block's end, so a little over half of the K x K pairs are computed."""
    n_heads, rows, largest, _ = left.shape
    separation = torch.zeros(n_heads, rows, len(n_values), dtype=torch.float64)
    between = torch.full((n_heads, rows, top, top), math.inf, dtype=torch.float64)  # [k, j], transposed at the end
    nearest_above = torch.empty(n_heads, rows, largest, dtype=torch.float64)  # min over a < b of ||x_a - x_b||^2
    block = min(SEPARATION_BLOCK, largest)
    within = torch.zeros(block, block, dtype=torch.float64).masked_fill_(
        torch.ones(block, block, dtype=torch.bool).triu(), math.inf)  # (b, a) in one block: +inf unless a < b
    for part in _chunks(n_heads, rows * block * largest):
        b_side, a_side = left[part].flatten(0, 1), right[part].flatten(0, 1).transpose(1, 2)
        for start in range(0, largest, block):
            stop = min(start + block, largest)
            squared = torch.bmm(b_side[:, start:stop], a_side[:, :, :stop]).view(-1, rows, stop - start, stop)  # [b, a]
            nearest = (squared[..., start:] + within[:stop - start, :stop - start]).amin(-1)
            if start:
                nearest = torch.minimum(nearest, squared[..., :start].amin(-1))
            nearest_above[part, :, start:stop] = nearest
            if start < top:
                end = min(stop, top)
                between[part, :, start:end, :end] = squared[:, :, :end - start, :end]
    columns = [n - 1 for n in n_values if n > 1]
    if columns:
        running = nearest_above.cummin(-1).values  # (H, R, K): min over pairs within the first b + 1 ranks
        separation[..., [i for i, n in enumerate(n_values) if n > 1]] = running[..., columns].clamp_min(0).sqrt()
    return separation, between.transpose(-1, -2)


def _theorem1_d1(left_x, right_x, chosen, visible_mask, hidden_from, bound_ns, between) -> torch.Tensor:
    """(H, R, len(bound_ns)) d1 = max_{j in I_N, i visible and not in I_N} ||x_i - x_j||, given each row's top
    B = max(bound_ns) keys `chosen` (H, R, B), the square factors of the token vectors left_x, right_x (X, L, d + 2)
    (_square_factors) and the squared distances among the chosen keys `between` (H, R, B, B), [j, k] meaningful for
    j < k.

    For a top-B key j of a row, the farthest visible key i outside the row's own top B is the farthest of two
    candidates: the farthest key outside E (once per token-vector set, E = every key some row of its heads ranks in
    its top B, and the keys hidden from some analysed row), and the farthest key in E that this row may use. Keys
    the row itself ranks in [N, B) come from `between`. Squared distances from the union of the top-B keys to every
    key are computed once per set, in fp64, for a chunk of sets at a time; the root is taken of the maxima only.
    """
    n_heads, rows, top = chosen.shape
    n_sets, length, _ = left_x.shape
    per_set = n_heads // n_sets
    member = torch.zeros(n_sets, length, dtype=torch.bool)  # key in the union of the set's top-B keys
    member.scatter_(1, chosen.reshape(n_sets, -1), True)
    excluded = member.clone()  # E
    excluded[:, hidden_from:] = True
    excluded |= ~visible_mask.all(0)  # keys some analysed row does not see (left of a sliding window)
    per_set_work = int(member.sum(1).max()) * length + per_set * rows * top * int(excluded.sum(1).max())
    beyond = torch.empty(n_heads, rows, top, dtype=torch.float64)  # over keys the row ranks >= B, squared
    for sets in _chunks(n_sets, per_set_work):
        heads = slice(sets.start * per_set, sets.stop * per_set)
        beyond[heads] = _farthest_beyond(left_x[sets], right_x[sets], chosen[heads], member[sets], excluded[sets],
                                         visible_mask)
    out = []
    for n in bound_ns:  # keys the row itself ranks in [N, B)
        per_j = beyond[..., :n] if n == top else torch.maximum(beyond[..., :n], between[..., :n, n:].amax(-1))
        out.append(per_j.amax(-1))
    return torch.stack(out, -1).clamp_min_(0).sqrt_()


def _farthest_beyond(left_x, right_x, chosen, member, excluded, visible_mask) -> torch.Tensor:
    """(H, R, B): for each top-B key j of each row, max ||x_i - x_j||^2 over the keys i visible to the row and
    outside its top B (see _theorem1_d1), for X sets of token vectors given by their square factors (X, L, d + 2)
    and their H heads."""
    n_heads, rows, top = chosen.shape
    n_sets, length, width = left_x.shape
    per_set = n_heads // n_sets
    # The union U of the top-B keys per set, padded to the largest union, in key order: the table's rows.
    union_size = int(member.sum(1).max())
    union = torch.argsort((~member).to(torch.int8), dim=1, stable=True)[:, :union_size]  # (X, U)
    slot = torch.zeros(n_sets, length, dtype=torch.long).scatter_(
        1, union, torch.arange(union_size).expand(n_sets, -1).contiguous())  # key -> its row of the table
    union_left = left_x.gather(1, union[..., None].expand(-1, -1, width))  # (X, U, d + 2)
    table = torch.matmul(union_left, right_x.transpose(1, 2))  # (X, U, L) squared distances

    excluded_size = int(excluded.sum(1).max())
    keys_e = torch.argsort((~excluded).to(torch.int8), dim=1, stable=True)[:, :excluded_size]  # (X, E)
    real_e = excluded.gather(1, keys_e)  # (X, E): False for padding
    table_e = table.gather(2, keys_e[:, None, :].expand(-1, union_size, -1))  # (X, U, E)
    outside = table.masked_fill_(excluded[:, None, :], -math.inf).amax(-1)  # (X, U): farthest key outside E

    of_head = torch.arange(n_heads) // per_set
    rows_of = slot.gather(1, chosen.reshape(n_sets, -1)).view(n_heads, rows, top)  # (H, R, B) table rows
    set_of = of_head[:, None, None]
    in_e = _rows_of(table_e, of_head, rows_of)  # (H, R, B, E): ||x_j - x_i||^2 for i in E
    keys = keys_e[of_head][:, None, :].expand(-1, rows, -1)  # (H, R, E)
    rank = torch.full((n_heads, rows, length), top, dtype=torch.long).scatter_(
        -1, chosen, torch.arange(top).expand_as(chosen).contiguous())  # (H, R, L): rank, or B outside the top B
    usable = rank.gather(-1, keys) >= top  # (H, R, E): outside the row's top B
    usable &= visible_mask.expand(n_heads, -1, -1).gather(-1, keys) & real_e[of_head][:, None, :]
    farthest_in_e = in_e.masked_fill_(~usable[:, :, None, :], -math.inf).amax(-1)  # (H, R, B)
    return torch.maximum(outside[set_of, rows_of], farthest_in_e)


def _theorem1(d1, weights, vectors, visible, bound_ns) -> torch.Tensor:
    """(H, R, len(bound_ns)) (1 - a_N) d1 + [(L - N) a_N - (1 - a_N)] max_{j in I_N} ||x_j||."""
    columns = [n - 1 for n in bound_ns]
    a_n = weights.cumsum(-1)[..., columns]  # (H, R, nb)
    max_norm = vectors.norm(dim=-1).cummax(-1).values[..., columns]
    sizes = torch.tensor(bound_ns, dtype=torch.float64)
    return (1 - a_n) * d1 + ((visible[:, None] - sizes) * a_n - (1 - a_n)) * max_norm


def _theorem2(weights, vectors, sizes, radius, separation) -> tuple[torch.Tensor, torch.Tensor]:
    """Theorem 2's bounds on E[N_s] / N (reconstructed), per head, row and selected-set size.

    weights (H, R, K) and vectors (H, R, K, d) of the top-K keys by weight; sizes (P,); radius, separation (H, R, P).
    """
    in_set = torch.arange(weights.shape[-1], dtype=torch.float64) < sizes[:, None]  # (P, K)
    w = weights[:, :, None, :] * in_set  # (H, R, P, K), zero outside I_N
    radius_m = (vectors.norm(dim=-1)[:, :, None, :] * in_set).sum(-1) / sizes  # (H, R, P): M, mean norm in I_N
    total, squares = w.sum(-1, keepdim=True), (w**2).sum(-1, keepdim=True)
    others, others_sq = total - w, squares - w**2  # sums over j != i within I_N
    m2 = (radius_m**2)[..., None]
    xi = (m2 * others_sq + (m2 - separation[..., None] ** 2 / 2) * (others**2 - others_sq)).clamp_min(0).sqrt()
    low = 1 - (xi * in_set).sum(-1) / (sizes * radius)
    high = (torch.exp(-((xi - radius[..., None]).clamp_min(0) ** 2) / (2 * m2)) * in_set).sum(-1) / sizes
    return low, high


def softmax_jacobian_norm(p: torch.Tensor, iterations: int = 40) -> torch.Tensor:
    """Largest eigenvalue of diag(p) - p p^T per row of p (..., L) (rows summing to 1).

    The eigenvalues of a diagonal matrix minus a rank-one term interlace its diagonal, so the largest lies between
    the two largest weights p_1 > p_2, where f(lambda) = 1 - p_1^2 / (p_1 - lambda) + sum_{i>1} p_i^2 / (lambda - p_i)
    falls from +inf to -inf. Each step replaces the sum by the rational a + b / (lambda - p_2) with the sum's value
    and slope at the current lambda (exact when p_2 is the only other weight), and solves the resulting quadratic in
    (p_2, p_1): the "middle way" of Li (1993) for secular equations, converging in a few steps from anywhere in the
    interval.
    """
    shape = p.shape[:-1]
    p = p.reshape(-1, p.shape[-1])
    if p.shape[-1] == 1:
        return torch.zeros(shape, dtype=p.dtype)
    top, where = torch.topk(p, 2, dim=-1)
    first, second = top[:, 0], top[:, 1]
    result = first.clone()  # a tie p_1 = p_2 is itself the eigenvalue
    active = torch.nonzero(first > second).squeeze(-1)  # rows still iterating, as indices into result
    rest = p[active].scatter_(-1, where[active, :1], 0.0)  # every weight but the largest: the poles below lambda
    # Weights below 1e-20 p_2 change the sum by less than its rounding; dropping them avoids subnormal arithmetic,
    # and the columns left at 0 in every row add nothing.
    rest.masked_fill_(rest < 1e-20 * second[active, None], 0.0)
    used = (rest > 0).any(0)
    if int(used.sum()) < 0.75 * rest.shape[1]:
        rest = rest[:, used]
    rest_sq = rest * rest
    p1, p2 = first[active], second[active]
    gap = p1 - p2
    lam = p2 + gap / 2
    live = torch.ones(len(active), dtype=torch.bool)  # rows of the arrays still iterating
    for _ in range(iterations):
        inverse = (lam[:, None] - rest).reciprocal_()  # 1 / (lambda - p_i) > 0
        terms = rest_sq * inverse
        value = terms.sum(-1)  # sum_{i>1} p_i^2 / (lambda - p_i)
        slope = terms.mul_(inverse).sum(-1)  # minus its derivative
        u = lam - p2
        b = slope * u * u  # the model a + b / (lambda - p_2) matches the sum's value and slope at lambda
        a = 1 + value - b / u
        # a + b / u' - p_1^2 / (gap - u') = 0 for u' = lambda' - p_2 in (0, gap): a u'^2 - c u' - b gap = 0
        c = a * gap - b - p1 * p1
        root = torch.sqrt(c * c + 4 * a * b * gap)
        u_next = torch.where(c >= 0, (c + root) / (2 * a), 2 * b * gap / (root - c))
        step = p2 + u_next
        # b = 0: no other weight is large enough to matter, and the model is the equation itself
        # Convergence is quadratic: after a relative move of 1e-7 the new lambda is exact to rounding. f itself is
        # known only to about eps * p_1, so a move below that is as close as lambda gets (a nearly one-hot row).
        move = (step - lam).abs()
        done = live & ((move <= 1e-7 * step) | (move <= EPS64 * p1) | (b == 0) | (u_next <= 0))
        result[active[done]] = step[done]
        live &= ~done
        lam = step
        alive = int(live.sum())
        if alive == 0:
            break
        if alive < 0.7 * len(live):  # dropping the finished rows costs a copy; computing them again costs more
            active, rest, rest_sq = active[live], rest[live], rest_sq[live]
            p1, p2, gap, lam, live = p1[live], p2[live], gap[live], lam[live], live[live]
    active, lam = active[live], lam[live]
    result[active] = lam
    return result.view(shape)


def _temperature(logits: torch.Tensor, direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Random-direction sensitivity (H, R, eps, T) and the exact Jacobian norm (H, R, T) of softmax(l / T), for
    logits (H, R, L) and random directions (H, R, L) (zero on hidden keys; normalised here): every temperature at
    once, for a chunk of heads at a time."""
    direction = direction / direction.norm(dim=-1, keepdim=True)
    temperatures = torch.tensor(TEMPERATURES, dtype=torch.float64)[:, None, None, None]  # (T, 1, 1, 1)
    sensitivity = torch.zeros(*logits.shape[:2], len(EPSILONS), len(TEMPERATURES), dtype=torch.float64)
    jacobian = torch.zeros(*logits.shape[:2], len(TEMPERATURES), dtype=torch.float64)
    for part in _chunks(logits.shape[0], len(TEMPERATURES) * logits[0].numel()):
        p = torch.softmax(logits[None, part] / temperatures, -1)  # (T, h, R, L)
        jacobian[part] = (softmax_jacobian_norm(p) / temperatures[..., 0]).permute(1, 2, 0)
        for e_index, eps in enumerate(EPSILONS):
            moved = torch.softmax((logits[part] + eps * direction[part])[None] / temperatures, -1)
            sensitivity[part, :, e_index] = (moved.sub_(p).norm(dim=-1) / eps).permute(1, 2, 0)
    return sensitivity, jacobian
