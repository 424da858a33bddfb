"""Head-type scores on the text's own tokens: previous-token, duplicate-token and induction, from the engine's pass.

The patterns are TransformerLens's (transformer_lens/head_detector.py, after Olsson et al. 2022, "In-context Learning
and Induction Heads"), over key positions j of a row at key position i (row t of T queries is at i = t + S - T) with
token ids x:
- previous token: P[i, i-1] = 1 for i >= 1;
- duplicate token: P[i, j] = 1 iff j < i and x[j] == x[i] (TL: the equality matrix, diagonal zeroed, lower triangle);
- induction: P[i, j] = 1 iff 1 <= j <= i and x[j-1] == x[i] (TL: the duplicate pattern rolled one key to the right,
  first column zeroed, lower triangle kept): the key just after an earlier copy of the row's token.
The patterns look back for every model, as TL's do: for a bidirectional encoder they measure the backward half only.

**Score.** A row's target cells are the pattern's cells the layer lets it see (the causal rule, a sliding window or
an explicit mask). For each row with at least one, its weight on them is sum_j exp(s_ij - lse_i), with s the scaled
(and softcapped) logit and lse the row's log-normaliser from kernels.attention_stats (learned sinks inside it). A
head's score is the mean of that weight over those rows, NaN when no row has one. TL's default "mul" score is
sum(A * P) / sum(A) over the whole (T, T) pattern, which is our score times R / sum(A), R the rows with a visible
target: R / T when rows sum to 1 (no learned sink). TL's counts every row in its denominator, so a text with few
repeats pulls its duplicate and induction scores towards 0 whatever the heads do; ours stays the weight that a row
with a target puts on it. The first-token (sink) score is the engine's sink_mass, not computed here.

The previous-token score is the atlas's (attnscope.analyses.fingerprint.offset_rows at offset 1).

**Duplicate and induction without a (T x S) matrix** (block-sparse by token group). A row's duplicate targets are
the earlier copies j' < i of its token; its induction targets are the keys j' + 1 just after them. Keys sorted by
(token, position) put a row's earlier copies in one contiguous band of sorted keys, found by binary search and
narrowed to a sliding window; the induction band is the same band read one key to the right, so one plan serves
both. Rows sorted the same way come in runs of one token whose bands never move back. A run, cut into items of at
most ROW_CHUNK rows, needs only the sorted keys from its first row's band start to its last row's band end: the
token's earlier copies, or for a long run a prefix of them (so a frequent token costs about the triangle m^2 / 2,
not the square). Items are padded to bucket sizes (two per octave) and batched with their like in matmuls of at
most CHUNK_BYTES: the items' q rows (every query head; the scale and -lse ride along as one more column) against
their k at j' and at j' + 1 (each key/value head once: grouped-query heads read their own K, never repeated), exp on
each row's band, summed per row. Each row's q is read by one item, each key by about one item per ROW_CHUNK copies
after it; the cells computed are about sum_v m_v^2 / 2 per detector (m_v the occurrences of token v, ~ T^2 sum_v
p_v^2 / 2 on real text) plus the padding: 1.5 times that on SmolLM2's tokens of the collapse document at 8k tokens.
Memory: the layer's q and k in sorted order in fp32 (k twice, at j' and j' + 1) and one batch of items, at most
CHUNK_BYTES unless one item is larger (ROW_CHUNK rows x the copies of the most frequent token). The plan depends only
on the ids and the layer's rule, so a pass makes it once. Everything stays on q's device. Timing:
benchmarks/bench_detectors.py.

**Too few repeats.** A text with fewer than MIN_INDUCTION_ROWS rows with an induction target (short, or without
repeated tokens) says little about induction; attnscope.stats then measures that score instead on repeated_copy of
the text (its tokens, then the same tokens again without leading special tokens), over the second copy's rows only,
in a second pass (studies.maps.model_induction_copy). The atlas's induction score (fingerprint.induction_scores) is the
same idea on random tokens, measured at one offset: this one follows every earlier copy of each token.

Limits: the scores read the first sequence of the batch; ids must be those of the S key positions; the weights are
computed in fp32 from the layer's q/k in their own dtype (bf16 on a GPU rounds the logits as the model does). The
previous-token score (offset_rows) reads one key per row: O(T) per head, unless the layer has an explicit
(padding) mask, whose (T, S) rows it then reads.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from attnscope import kernels
from attnscope.analyses.fingerprint import offset_rows
from attnscope.capture import LayerCapture

PREVIOUS_TOKEN, DUPLICATE_TOKEN, INDUCTION = "previous_token", "duplicate_token", "induction"
DETECTORS = (PREVIOUS_TOKEN, DUPLICATE_TOKEN, INDUCTION)
GROUPED = (DUPLICATE_TOKEN, INDUCTION)  # the detectors measured block-sparse by token group
# A target key is an earlier copy j' of the row's token moved this many keys right: j' itself, or the key after it.
SHIFTS = {DUPLICATE_TOKEN: 0, INDUCTION: 1}
# Fewer rows with an induction target than this (in the layer that sees the most) and the text's own repeats say
# little about a head: a mean over a handful of tokens is those tokens' behaviour, and a one-phrase repeat is all it
# takes to reach 8. Below it the induction score is measured on a repeated copy of the text (repeated_copy).
MIN_INDUCTION_ROWS = 8
ROW_CHUNK = 64  # rows of one token computed together at most; a longer run of copies is cut into chunks
CHUNK_BYTES = 32 * 2**20  # gathered q, k and the fp32 weights of the items computed together


@dataclass
class _Plan:
    """What the grouped detectors compute under one layer rule: every row's bands and the items that cover them."""

    detectors: tuple[str, ...]  # the detectors planned, in this order along the low and score axes
    rows: torch.Tensor  # (n + 1,) query index of each row slot, rows sorted by (token, position); the last: a pad
    low: torch.Tensor  # (n + 1, detectors) first sorted key place of each row's band, per detector
    high: torch.Tensor  # (n + 1,) one past the last (the bands end together); the pad's band is empty
    key_order: torch.Tensor  # (S,) key position at each sorted place: keys sorted by (token, position)
    # Items: up to ROW_CHUNK rows of one token against the run of sorted keys their bands cover, padded to a bucket
    # size (_bucket) and batched with their like: (row slots (items, R), pads pointing at the pad slot; sorted key
    # places (items, L), which may run past the token's keys and past S: those cells lie outside every band).
    items: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def n_rows(self) -> int:
        return len(self.rows) - 1


def _bucket(n: torch.Tensor) -> torch.Tensor:
    """n rounded up to 2, 3, 4, 6, 8, 12, 16, 24, ...: two sizes per octave, so padding adds at most half."""
    n = n.clamp(min=2)
    step = 2 ** (torch.floor(torch.log2(n.double())).long() - 1)  # half the power of two at or below n
    return -(-n // step) * step


def _plan(ids: torch.Tensor, detectors: tuple[str, ...], n_queries: int, first_row: int, window: int | None,
          row_chunk: int) -> _Plan:
    """The bands and items of `detectors` for rows first_row.. of n_queries over keys with token ids `ids` (S,);
    window: the keys a row sees end at its own position and start `window` back (None: no window)."""
    n_keys, device = len(ids), ids.device
    span = n_keys + 1  # code = token * span + position orders keys by token, then position
    key_code = ids * span + torch.arange(n_keys, device=device)
    key_order = torch.argsort(key_code)
    sorted_code = key_code[key_order]
    rows = torch.arange(first_row, n_queries, device=device)
    positions = rows + (n_keys - n_queries)
    row_code = ids[positions] * span
    lowest = (positions - window + 1).clamp(min=0) if window is not None else torch.zeros_like(positions)
    high = torch.searchsorted(sorted_code, row_code + positions)  # earlier copies of the row's token: j' < i
    low = torch.stack([torch.searchsorted(sorted_code, row_code + (lowest - SHIFTS[name]).clamp(min=0))
                       for name in detectors], -1)  # the target j' + shift must be in the window
    union = low.amin(-1)
    kept = high > union
    order = torch.argsort(row_code[kept] + positions[kept])
    rows, low, high, union = rows[kept][order], low[kept][order], high[kept][order], union[kept][order]
    token = ids[rows + (n_keys - n_queries)]
    n_rows = len(rows)
    items = []
    if n_rows:
        # Runs of one token, cut into chunks of row_chunk rows: an item. Its bands cover sorted keys from its first
        # row's start to its last row's end (both never move back along a run).
        _, run = torch.unique_consecutive(token, return_counts=True)
        run_start = torch.repeat_interleave(torch.cumsum(run, 0) - run, run)
        chunk = torch.arange(n_rows, device=device) - run_start
        first = torch.nonzero(chunk % row_chunk == 0).squeeze(1)  # each item's first row slot
        count = torch.diff(first, append=first.new_tensor([n_rows]))
        last = first + count - 1
        start, length = union[first], high[last] - union[first]
        sizes = torch.stack([_bucket(count), _bucket(length)], -1)
        shapes, which = torch.unique(sizes, dim=0, return_inverse=True)
        for index, (n_slots, n_places) in enumerate(shapes.tolist()):
            chosen = which == index
            slots = first[chosen, None] + torch.arange(n_slots, device=device)
            slots = torch.where(slots <= last[chosen, None], slots, n_rows)  # past the item: the pad slot
            items.append((slots, start[chosen, None] + torch.arange(n_places, device=device)))
    pad = rows.new_zeros(1)
    return _Plan(detectors=detectors, rows=torch.cat([rows, pad]), high=torch.cat([high, pad]),
                 low=torch.cat([low, low.new_zeros(1, len(detectors))]), key_order=key_order, items=items)


def _band_weights(layer: LayerCapture, lse: torch.Tensor, plan: _Plan) -> tuple[torch.Tensor, torch.Tensor]:
    """(detectors, Hq, rows) fp32 each planned row's weight on its band, and (detectors, Hq or 1, rows) how many
    band cells it sees (the band's length, or with an explicit mask the cells the mask lets it see)."""
    q, k = layer.q[0], layer.k[0]  # (Hq, T, D), (Hkv, S, D)
    n_kv, n_keys, dim = k.shape
    groups, n_det, n_slots = layer.groups, len(plan.detectors), len(plan.rows)
    capped = layer.softcap is not None
    # Rows in their sorted order, each with its G query heads side by side (Hkv, slots, G, D); keys at each sorted
    # place for each detector (Hkv, S, det, D). Without a softcap the scale and the rows' -lse ride in the matmul
    # (q gets a column -lse, k a column of ones), so it yields s - lse at once.
    q_rows = (q.index_select(1, plan.rows).float() * layer.scale).unflatten(0, (n_kv, groups)).transpose(1, 2)
    lse_rows = -lse[0].index_select(1, plan.rows).float().unflatten(0, (n_kv, groups)).transpose(1, 2)
    if not capped:
        q_rows = torch.cat([q_rows, lse_rows[..., None]], -1)
    keys = torch.stack([(plan.key_order + SHIFTS[name]).clamp(max=n_keys - 1) for name in plan.detectors], -1)
    k_places = k[:, keys.reshape(-1)].float().reshape(n_kv, n_keys, n_det, dim)  # (Hkv, S, det, D)
    if not capped:
        k_places = torch.cat([k_places, k_places.new_ones(n_kv, n_keys, n_det, 1)], -1)
    mask = None if layer.mask is None else layer.mask[0]  # (Hq or 1, T, S)
    totals = torch.zeros(n_kv, n_slots, groups, n_det, device=q.device)
    seen = None if mask is None else torch.zeros(
        n_kv if mask.shape[0] > 1 else 1, n_slots, groups if mask.shape[0] > 1 else 1, n_det, device=q.device)
    width = dim + (0 if capped else 1)
    for all_slots, all_places in plan.items:
        n_rows, n_places = all_slots.shape[1], all_places.shape[1]
        per_item = 4 * n_kv * (n_rows * groups * (n_places * n_det + width) + n_places * n_det * width)
        step = max(1, CHUNK_BYTES // per_item)
        for start in range(0, len(all_slots), step):
            slots, places = all_slots[start:start + step], all_places[start:start + step]  # (n, R), (n, L)
            n = len(slots)
            flat = slots.reshape(-1)
            band = ((places[:, None, :, None] >= plan.low[slots][:, :, None, :])
                    & (places[:, None, :, None] < plan.high[slots][:, :, None, None]))  # (n, R, L, det)
            visible = band.reshape(n * n_rows, n_places, n_det)[None, :, None]  # (1, n R, 1, L, det)
            if mask is not None:
                cols = keys[places.clamp(max=n_keys - 1)]  # (n, L, det) key positions
                cells = mask[:, plan.rows[slots][:, :, None, None], cols[:, None]]  # (Hq or 1, n, R, L, det)
                cells = (cells.reshape(1, n * n_rows, 1, n_places, n_det) if cells.shape[0] == 1 else
                         cells.reshape(n_kv, groups, n * n_rows, n_places, n_det).transpose(1, 2))
                visible = visible & cells  # (Hkv or 1, n R, G or 1, L, det)
                seen.index_add_(1, flat, visible.sum(3, dtype=torch.float32))
            q_part = q_rows.index_select(1, flat).reshape(n_kv * n, n_rows * groups, width)
            k_part = k_places.index_select(1, places.reshape(-1).clamp(max=n_keys - 1)).reshape(
                n_kv * n, n_places * n_det, width)
            scores = torch.bmm(q_part, k_part.transpose(1, 2))  # (Hkv n, R G, L det): s - lse, or s to be capped
            if capped:
                scores = scores.div_(layer.softcap).tanh_().mul_(layer.softcap).add_(
                    lse_rows.index_select(1, flat).reshape(n_kv * n, n_rows * groups, 1))
            scores = scores.reshape(n_kv, n * n_rows, groups, n_places, n_det).masked_fill_(~visible, float("-inf"))
            totals.index_add_(1, flat, scores.exp_().sum(3))  # (Hkv, n R, G, det)
    if seen is None:  # every cell of a band is visible: a row sees a target iff its band is not empty
        seen = (plan.high[:, None] > plan.low).to(torch.float32)[None, :, None]  # (1, slots, 1, det)

    def by_head(x: torch.Tensor) -> torch.Tensor:  # (H', slots, G', det) -> (det, H' G', rows)
        return x.permute(3, 0, 2, 1).reshape(n_det, x.shape[0] * x.shape[2], n_slots)[..., :plan.n_rows]

    return by_head(totals), by_head(seen)


def _mean_over_rows(totals: torch.Tensor, seen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Hq,) fp32 mean of totals (Hq, rows) over the rows that see a target (seen (Hq or 1, rows) > 0), NaN with
    none, and (Hq,) int64 how many such rows."""
    totals, used = totals.double().cpu(), (seen.cpu() > 0).expand_as(totals)
    counts = used.sum(-1)
    mean = torch.where(counts > 0, (totals * used).sum(-1) / counts.clamp(min=1), float("nan"))
    return mean.float(), counts


def _check(layer: LayerCapture, lse: torch.Tensor, ids: torch.Tensor, first_row: int) -> None:
    n_queries, n_keys = layer.q.shape[2], layer.k.shape[2]
    if ids.dim() != 1 or len(ids) != n_keys:
        raise ValueError(f"ids must hold one token id per key position, shape ({n_keys},); got {tuple(ids.shape)}.")
    if lse.shape[1:] != (layer.n_heads, n_queries):
        raise ValueError(f"lse must be (B, {layer.n_heads}, {n_queries}) from kernels.attention_stats on this layer; "
                         f"got {tuple(lse.shape)}.")
    if not 0 <= first_row <= n_queries:
        raise ValueError(f"first_row must lie in 0..{n_queries}; got {first_row}.")


class Planner:
    """The grouped detectors' plans for one text, made once per (detectors, first row, layer rule) and reused by
    every layer that shares them."""

    def __init__(self, ids: Sequence[int] | torch.Tensor, *, row_chunk: int = ROW_CHUNK):
        self.ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        self.row_chunk = row_chunk
        self._plans: dict[tuple, _Plan] = {}
        self._ids_on: dict[torch.device, torch.Tensor] = {}

    def plan(self, layer: LayerCapture, detectors: tuple[str, ...], first_row: int) -> _Plan:
        window = layer.window if layer.mask is None and layer.causal else None  # a mask is applied cell by cell
        device = layer.q.device
        key = (detectors, first_row, layer.q.shape[2], window, device)
        if key not in self._plans:
            if device not in self._ids_on:
                self._ids_on[device] = self.ids.to(device)
            self._plans[key] = _plan(self._ids_on[device], detectors, layer.q.shape[2], first_row, window,
                                     self.row_chunk)
        return self._plans[key]


def grouped_scores(layer: LayerCapture, lse: torch.Tensor, ids: Sequence[int] | torch.Tensor, *,
                   detectors: Sequence[str] = GROUPED, first_row: int = 0, planner: Planner | None = None
                   ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Duplicate-token and induction scores of every head of one layer, block-sparse by token group.

    Args:
        layer: the layer's live capture; q (B, Hq, T, D), k (B, Hkv, S, D), its rule; the first sequence is read.
        lse: (B, Hq, T) the rows' log-normalisers, kernels.attention_stats(...).lse on this layer.
        ids: (S,) token ids at the key positions.
        detectors: some of GROUPED.
        first_row: rows before this query index are left out (a repeated copy's second half starts there).
        planner: a Planner on the same ids, to share plans between layers (one is made when None).

    Returns:
        detector -> ((Hq,) fp32 score, NaN for a head with no row that sees a target; (Hq,) int64 rows counted).
    """
    planner = planner or Planner(ids)
    _check(layer, lse, planner.ids, first_row)
    detectors = tuple(detectors)
    unknown = [name for name in detectors if name not in GROUPED]
    if unknown or not detectors:
        raise ValueError(f"detectors must be some of {GROUPED}; got {list(detectors)}.")
    plan = planner.plan(layer, detectors, first_row)
    totals, seen = _band_weights(layer, lse, plan)
    return {name: _mean_over_rows(totals[d], seen[d]) for d, name in enumerate(detectors)}


def layer_scores(layer: LayerCapture, lse: torch.Tensor, planner: Planner, *, detectors: Sequence[str] = DETECTORS,
                 first_row: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Detector -> ((Hq,) score, (Hq,) rows counted) for one layer from its live capture and the kernel's lse."""
    out = {}
    if PREVIOUS_TOKEN in detectors:
        out[PREVIOUS_TOKEN] = offset_rows(layer, lse, 1, slice(first_row, layer.q.shape[2]))
    grouped = tuple(name for name in detectors if name in GROUPED)
    if grouped:
        out.update(grouped_scores(layer, lse, planner.ids, detectors=grouped, first_row=first_row, planner=planner))
    return {name: out[name] for name in detectors}


class Collector:
    """attnscope.engine.run's on_layer hook: every layer's detector scores from the pass that computes the layer.

        collector = detectors.Collector(ids[0])
        engine.run(model, ids, on_layer=collector)
        collector.scores()["induction"]      # (layers, heads) float32
    """

    def __init__(self, ids: Sequence[int] | torch.Tensor, *, detectors: Sequence[str] = DETECTORS,
                 first_row: int = 0):
        unknown = [name for name in detectors if name not in DETECTORS]
        if unknown:
            raise ValueError(f"Unknown detectors {unknown}; choose from {DETECTORS}.")
        self.planner = Planner(ids)
        self.detectors = tuple(detectors)
        self.first_row = first_row
        self.found: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}

    def __call__(self, index: int, layer: LayerCapture, stats: kernels.AttentionStats) -> None:
        self.found[index] = layer_scores(layer, stats.lse, self.planner, detectors=self.detectors,
                                         first_row=self.first_row)

    def scores(self) -> dict[str, np.ndarray]:
        """Detector -> (layers, heads) float32, layers in order."""
        layers = sorted(self.found)
        return {name: np.stack([self.found[i][name][0].numpy() for i in layers]).astype(np.float32)
                for name in self.detectors}

    def rows(self) -> dict[str, tuple[int, ...]]:
        """Detector -> per layer, the rows with a visible target (the most over heads: they differ only under a
        per-head mask)."""
        layers = sorted(self.found)
        return {name: tuple(int(self.found[i][name][1].max()) for i in layers) for name in self.detectors}


def repeated_copy(ids: Sequence[int], *, limit: int, special: Collection[int] = ()) -> tuple[tuple[int, ...], int]:
    """The text's first N tokens followed by the same tokens again without its leading special tokens (a start
    token), N as large as keeps the whole within `limit` tokens (at most the text's length).

    Returns:
        (the ids of both copies, N: the second copy starts at position N).
    """
    ids = [int(i) for i in ids]
    special = set(special)
    lead = next((n for n, token in enumerate(ids) if token not in special), len(ids))
    n_copied = min(len(ids), (limit + lead) // 2)
    return tuple(ids[:n_copied] + ids[lead:n_copied]), n_copied


def reference_scores(layer: LayerCapture, ids: Sequence[int] | torch.Tensor, detector: str, *,
                     first_row: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain fp64 reference for tests, materialising every (T, S) matrix: the pattern, the visibility and the
    probabilities (learned sinks in the normaliser). Returns ((Hq,) score, (Hq,) int64 rows counted)."""
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1).cpu()
    n_queries, n_keys = layer.q.shape[2], layer.k.shape[2]
    i = (torch.arange(n_queries) + n_keys - n_queries)[:, None]  # key position of each row
    j = torch.arange(n_keys)[None, :]
    if detector == PREVIOUS_TOKEN:
        pattern = j == i - 1
    elif detector == DUPLICATE_TOKEN:
        pattern = (j < i) & (ids[j] == ids[i])
    elif detector == INDUCTION:
        pattern = (j >= 1) & (j <= i) & (ids[(j - 1).clamp(min=0)] == ids[i])
    else:
        raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}.")
    logits = layer.logits(dtype=torch.float64)[0].cpu()  # (Hq, T, S), -inf where hidden
    if layer.sinks is not None:
        sink = layer.sinks.double().cpu()[:, None, None].expand(*logits.shape[:2], 1)
        probs = torch.softmax(torch.cat([logits, sink], -1), -1)[..., :-1]
    else:
        probs = torch.softmax(logits, -1)
    targets = pattern & torch.isfinite(logits)  # (Hq, T, S)
    targets[:, :first_row] = False
    used = targets.any(-1)  # (Hq, T)
    weights = torch.where(targets, probs.nan_to_num(0.0), 0.0).sum(-1)
    counts = used.sum(-1)
    mean = torch.where(counts > 0, (weights * used).sum(-1) / counts.clamp(min=1), math.nan)
    return mean, counts
