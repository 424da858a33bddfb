"""Readable fp64 reference for paper B's per-row measures (context collapse): one head, one query row at a time.

The specification of what attnscope.analyses.collapse measures; collapse_folds computes the same numbers for many
layers at once, and the tests hold it to this file. For tests and readers, not for sweeps: it builds every pairwise
distance it needs, and the temperature sweep takes a dense eigendecomposition per row and temperature.

The last `rows` query positions of a layer are analysed (at most a quarter of them under the causal rule, so that
each sees at least 3/4 of the keys). For a query row with scaled logits l_i = scale * q.k_i over the keys it sees
(l -> c tanh(l / c) under a softcap c), weights alpha = softmax(l) and token vectors x_i (the head's value vectors,
or the layer's input hidden states), V cells seen:

- vanishing attention: max weight, min weight, entropy, weight on key 0 (0 where a sliding window hides it), and
  the Corollary 1 band e^{-2 Delta} / V <= alpha_i <= e^{2 Delta} / V with Delta = ||q|| max_i ||k_i|| * scale
  (Cauchy-Schwarz on the logits), at most c under a softcap;
- selection I_N = the N largest weights, for each N of N_GRID below the fewest keys an analysed row sees;
  s = sum_{i in I_N} alpha_i x_i, o = sum_i alpha_i x_i;
- the two readings of the distance (eq. 7): d_sum = sum_{i not in I_N} ||alpha_i x_i - s|| and
  d_norm = ||sum_{i not in I_N} alpha_i x_i - s||;
- the random-subset expectations (reconstructed): ((V - N) / V) sum_i ||alpha_i x_i - (N / V) o|| for d_sum, and
  |1 - 2N/V| ||o|| (the norm reading at the expected s = (N / V) o) for d_norm;
- Theorem 1's bound (1 - a_N) d1 + [(V - N) a_N - (1 - a_N)] max_{j in I_N} ||x_j||, a_N = sum_{j in I_N} alpha_j,
  d1 = max_{i not in I_N, j in I_N} ||x_i - x_j||, for each N of BOUND_NS measured; it provably bounds d_sum;
- distinguishability: N_s / N with N_s = #{i in I_N : ||alpha_i x_i - s|| <= r}, r = min_{j not in I_N}
  ||alpha_j x_j - s||;
- Theorem 2's bounds on E[N_s] / N (reconstructed, for x on a sphere of radius M with separation delta; here M is the
  mean norm of the selected vectors and delta their smallest pairwise distance, 0 for N = 1):
  1 - (1 / (N r)) sum_{i in I_N} xi_i <= E[N_s] / N <= (1 / N) sum_{i in I_N} exp(-(xi_i - r)_+^2 / (2 M^2)),
  xi_i^2 = M^2 sum_{j != i} alpha_j^2 + (M^2 - delta^2 / 2) sum_{j != k; j, k != i} alpha_j alpha_k (j, k in I_N);
- temperature (when asked): for each T of TEMPERATURES, p = softmax(l / T), the exact worst-case sensitivity
  lambda_max(diag(p) - p p^T) / T (the spectral norm of softmax's Jacobian), and for each eps of EPSILONS
  ||softmax((l + eps v) / T) - p|| / eps along a random unit direction v: standard normal draws of shape
  (heads, rows, cells) from torch.Generator().manual_seed(seed), zero on hidden keys, normalised per row.

A learned sink (gpt-oss) is one more cell of every row, after the keys: its logit z_h, a zero token vector (it has
no value) and a place in the ranking like any key, so V counts it and Delta also bounds |z_h|. A softcap (Gemma 2)
caps the logits throughout. The layer's explicit mask, if any, is refused: the analysis runs on unpadded windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from attnscope.capture import LayerCapture

N_GRID = (1, 2, 3, 5, 8, 10, 16, 20, 32, 64, 100, 128, 256)  # selected-set sizes measured
BOUND_NS = (1, 5, 10, 20, 100)  # sizes whose Theorem 1 bound is computed (fig. 2a uses N = 5, fig. 2b all five)
TEMPERATURES = tuple(float(t) for t in np.logspace(-3, 2, 11))  # two per decade
EPSILONS = (1e-3, 1e-1, 10.0)
PER_N = ("d_sum", "d_norm", "expected", "expected_norm", "ratio", "theorem2_low", "theorem2_high")  # (H, R, n)


@dataclass
class LayerRows:
    """One layer at one context length, per head and analysed query row. H heads, R rows; n = len(n_values)."""

    length: int  # L: tokens in the window
    visible: np.ndarray  # (R,) keys each analysed row sees
    max_weight: np.ndarray  # (H, R)
    min_weight: np.ndarray  # (H, R) smallest weight over visible keys
    entropy: np.ndarray  # (H, R) nats
    sink_mass: np.ndarray  # (H, R) weight on key 0
    band_low: np.ndarray  # (H, R) Corollary 1: e^{-2 Delta} / L
    band_high: np.ndarray  # (H, R) e^{2 Delta} / L
    n_values: tuple[int, ...]  # selected-set sizes measured (those of N_GRID below every row's visible count)
    d_sum: np.ndarray  # (H, R, n) summed reading of eq. 7
    d_norm: np.ndarray  # (H, R, n) norm reading of eq. 7
    expected: np.ndarray  # (H, R, n) random-subset expectation of d_sum (reconstructed)
    expected_norm: np.ndarray  # (H, R, n) ... of d_norm: |1 - 2N/L| ||o||, the norm reading at E[s] = (N/L) o
    ratio: np.ndarray  # (H, R, n) N_s / N
    theorem2_low: np.ndarray  # (H, R, n)
    theorem2_high: np.ndarray  # (H, R, n)
    bound_ns: tuple[int, ...]  # sizes of BOUND_NS measured
    bound: np.ndarray  # (H, R, len(bound_ns)) Theorem 1 bound
    sensitivity: np.ndarray | None = None  # (H, R, len(EPSILONS), len(TEMPERATURES)) random-direction probe
    jacobian_norm: np.ndarray | None = None  # (H, R, len(TEMPERATURES)) exact ||J||_2 = lambda_max / T
    window: int = 0  # the layer's sliding window (its rows see at most this many keys), 0 for a global layer
    learned_sink_mass: np.ndarray | None = None  # (H, R) weight of the learned sink cell (gpt-oss), else None


def picked_rows(layer: LayerCapture, rows: int) -> int:
    """How many of the last query rows are analysed: `rows`, at most a quarter of them under the causal rule (those
    rows see >= 3/4 of the keys), at least one."""
    n_queries = layer.q.shape[2]
    return max(1, min(rows, n_queries // 4 if layer.causal else n_queries))


def analyse_layer(layer: LayerCapture, *, rows: int, hidden: torch.Tensor | None = None, temperature: bool = False,
                  seed: int = 0) -> LayerRows:
    """Everything paper B measures, for the last `rows` query positions of one layer (first sequence of the batch),
    head by head and row by row in fp64.

    Args:
        layer: a LayerCapture (B, Hq, T, D) / (B, Hkv, S, D) without an explicit mask; the first sequence is analysed.
        rows: query positions analysed: the last ones (at most T/4 under the causal rule).
        hidden: (B, S', d_model) input hidden states to use as token vectors (the first S kept), or None for the
            layer's value vectors.
        temperature: also measure the temperature sweep (sensitivity and jacobian_norm).
        seed: the seed of the random direction of the temperature probe.

    Returns:
        LayerRows with (H, R, ...) arrays, H = Hq and R = the rows analysed.
    """
    if layer.mask is not None:
        raise ValueError("This layer has an explicit (padding) mask; the collapse analysis runs on unpadded text "
                         "windows under the causal rule (also sliding windows) or full visibility.")
    layer = layer.to("cpu")
    n_heads, n_queries, length = layer.n_heads, layer.q.shape[2], layer.k.shape[2]
    n_rows = picked_rows(layer, rows)
    picked = slice(n_queries - n_rows, n_queries)
    sees = layer.visible(picked)[0, 0]  # (R, L)
    with_sink = layer.sinks is not None
    if with_sink:  # the sink cell: last, seen by every row
        sees = torch.cat([sees, torch.ones(n_rows, 1, dtype=torch.bool)], -1)
    cells = sees.shape[-1]
    visible = sees.sum(-1)  # (R,)
    n_values = tuple(n for n in N_GRID if n < int(visible.min()))
    bound_ns = tuple(n for n in BOUND_NS if n in n_values)
    if temperature:
        direction = torch.randn((n_heads, n_rows, cells), dtype=torch.float64,
                                generator=torch.Generator().manual_seed(seed))

    shapes = {"max_weight": (), "min_weight": (), "entropy": (), "sink_mass": (), "band_low": (), "band_high": (),
              "learned_sink_mass": (), "bound": (len(bound_ns),), "jacobian_norm": (len(TEMPERATURES),),
              "sensitivity": (len(EPSILONS), len(TEMPERATURES)),
              **{name: (len(n_values),) for name in PER_N}}
    fields = {name: np.zeros((n_heads, n_rows, *shape)) for name, shape in shapes.items()}
    for h in range(n_heads):
        kv = layer.kv_head(h)
        keys = layer.k[0, kv].double()  # (L, D)
        x = layer.v[0, kv].double() if hidden is None else hidden[0, :length].cpu().double()  # (L, d)
        if with_sink:
            x = torch.cat([x, x.new_zeros(1, x.shape[1])])  # the sink cell has no value
        for r in range(n_rows):
            seen, seen_keys = sees[r], sees[r, :length]
            query = layer.q[0, h, picked.start + r].double()  # (D,)
            logits = keys @ query * layer.scale  # (L,)
            delta = float(query.norm() * keys[seen_keys].norm(dim=-1).max()) * layer.scale  # Corollary 1's Delta
            if layer.softcap is not None:  # every capped logit lies in [-c, c]
                logits = layer.softcap * torch.tanh(logits / layer.softcap)
                delta = min(delta, layer.softcap)
            if with_sink:
                sink_logit = layer.sinks[h].double()
                logits = torch.cat([logits, sink_logit.view(1)])
                delta = max(delta, abs(float(sink_logit)))
            alpha = torch.softmax(logits[seen], -1)  # (V,) over the cells the row sees (the sink cell last)
            if with_sink:
                fields["learned_sink_mass"][h, r] = float(alpha[-1])
            fields["max_weight"][h, r], fields["min_weight"][h, r] = float(alpha.max()), float(alpha.min())
            fields["entropy"][h, r] = float(-torch.special.xlogy(alpha, alpha).sum())
            fields["sink_mass"][h, r] = float(alpha[0]) if seen[0] else 0.0
            fields["band_low"][h, r] = math.exp(-2 * delta) / len(alpha)
            fields["band_high"][h, r] = math.exp(2 * delta) / len(alpha)
            for column, n in enumerate(n_values):
                measured = _selection(alpha, x[seen], n)
                bound = measured.pop("bound")
                for name, value in measured.items():
                    fields[name][h, r, column] = value
                if n in bound_ns:
                    fields["bound"][h, r, bound_ns.index(n)] = bound
            if temperature:
                v = direction[h, r, seen] / direction[h, r, seen].norm()
                fields["jacobian_norm"][h, r], fields["sensitivity"][h, r] = _temperature(logits[seen], v)
    return LayerRows(
        length=length, visible=visible.numpy(), n_values=n_values, bound_ns=bound_ns, window=layer.window or 0,
        **{name: fields[name] for name in ("max_weight", "min_weight", "entropy", "sink_mass", "band_low",
                                           "band_high", "bound", *PER_N)},
        sensitivity=fields["sensitivity"] if temperature else None,
        jacobian_norm=fields["jacobian_norm"] if temperature else None,
        learned_sink_mass=fields["learned_sink_mass"] if with_sink else None,
    )


def _selection(alpha: torch.Tensor, x: torch.Tensor, n: int) -> dict[str, float]:
    """The measures of one row's top-n selection: its weights alpha (V,) and token vectors x (V, d) over the cells
    it sees."""
    visible = len(alpha)
    order = torch.sort(alpha, descending=True, stable=True).indices
    chosen, rest = order[:n], order[n:]  # I_N and the cells outside it
    weighted = alpha[:, None] * x  # (V, d): alpha_i x_i
    s, o = weighted[chosen].sum(0), weighted.sum(0)
    to_s = (weighted - s).norm(dim=-1)  # (V,): ||alpha_i x_i - s||
    radius = to_s[rest].min()
    a_n = alpha[chosen].sum()
    norms = x[chosen].norm(dim=-1)  # (n,)
    d1 = _distances(x[rest], x[chosen]).max()
    bound = (1 - a_n) * d1 + ((visible - n) * a_n - (1 - a_n)) * norms.max()
    # Theorem 2 on the sphere of radius M = the mean norm, separation delta = the closest pair of I_N
    m = norms.mean()
    pairs = _distances(x[chosen], x[chosen])  # (n, n)
    delta = pairs[~torch.eye(n, dtype=torch.bool)].min() if n > 1 else torch.zeros((), dtype=torch.float64)
    a = alpha[chosen]  # (n,)
    squares = (a * a).sum() - a * a  # (n,): sum_{j != i} alpha_j^2 for each i of I_N
    cross = (a.sum() - a) ** 2 - squares  # (n,): sum_{j != k; j, k != i} alpha_j alpha_k
    xi = (m**2 * squares + (m**2 - delta**2 / 2) * cross).clamp_min(0).sqrt()  # (n,)
    return {
        "d_sum": float(to_s[rest].sum()),
        "d_norm": float((weighted[rest].sum(0) - s).norm()),
        "expected": float((visible - n) / visible * (weighted - n / visible * o).norm(dim=-1).sum()),
        "expected_norm": float(abs(1 - 2 * n / visible) * o.norm()),
        "ratio": float((to_s[chosen] <= radius).sum()) / n,
        "theorem2_low": float(1 - xi.sum() / (n * radius)),
        "theorem2_high": float(torch.exp(-((xi - radius).clamp_min(0) ** 2) / (2 * m**2)).mean()),
        "bound": float(bound),
    }


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a_i - b_j|| (m, n) for a (m, d) and b (n, d), from the differences (not expanded in squares)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def _temperature(logits: torch.Tensor, direction: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The exact Jacobian norm (len(TEMPERATURES),) and the random-direction probe (len(EPSILONS),
    len(TEMPERATURES)) of softmax(l / T) for one row's logits (V,) and unit direction (V,)."""
    jacobian = np.zeros(len(TEMPERATURES))
    probe = np.zeros((len(EPSILONS), len(TEMPERATURES)))
    for t_index, t in enumerate(TEMPERATURES):
        p = torch.softmax(logits / t, -1)
        jacobian[t_index] = float(torch.linalg.eigvalsh(torch.diag(p) - torch.outer(p, p)).max()) / t
        for e_index, eps in enumerate(EPSILONS):
            moved = torch.softmax((logits + eps * direction) / t, -1)
            probe[e_index, t_index] = float((moved - p).norm()) / eps
    return jacobian, probe
