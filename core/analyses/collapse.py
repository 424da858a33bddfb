"""Context collapse (paper B: Mudarisov, Burtsev, Petrova, State, arXiv 2508.17821; ../shared/THEORY.md).

Normalised attention spreads thin as the context grows. For each context length L, windows of the text of L tokens
are run through the model (for a causal model, the first L tokens of one long window: exactly what the model computes
on them alone), and for every head the last `rows` query positions of each window (which see about L keys) are
analysed. Per query row, with weights alpha over its visible keys and token vectors x_i (the head's value vectors, or
the layer's input hidden states):

- vanishing attention: max weight, entropy, weight on key 0, and the Corollary 1 band
  e^{-2 Delta} / L <= alpha_i <= e^{2 Delta} / L with Delta = ||q|| max_i ||k_i|| * scale (Cauchy-Schwarz on the
  logits, the model's own temperature folded into the scale);
- selection I_N = the N largest weights (kernels.attention_stats top-k), s = sum_{i in I_N} alpha_i x_i, and the two
  readings of the paper's distance (eq. 7): d_sum = sum_{i not in I_N} ||alpha_i x_i - s|| and
  d_norm = ||sum_{i not in I_N} alpha_i x_i - s||; the random-subset expectation (reconstructed)
  ((L - N) / L) sum_i ||alpha_i x_i - (N / L) o|| with o = sum_i alpha_i x_i (for the norm reading, that reading
  at the expected random s = (N / L) o: |1 - 2N/L| ||o||, also reconstructed); and the Theorem 1 bound
  (1 - a_N) d1 + [(L - N) a_N - (1 - a_N)] max_{j in I_N} ||x_j||, a_N = sum_{I_N} alpha, d1 = max_{i not in I_N,
  j in I_N} ||x_i - x_j||, which provably bounds d_sum (not d_norm);
- distinguishability: N_s = #{i in I_N : ||alpha_i x_i - s|| <= r}, r = min_{j not in I_N} ||s - alpha_j x_j||, and
  the Theorem 2 bounds (reconstructed, for x on a sphere of radius M with separation delta; here M = the mean norm of
  the selected vectors and delta their smallest pairwise distance, since real vectors are not on a sphere);
- temperature: ||softmax((l + eps v) / T) - softmax(l / T)|| / eps for a random unit direction v, and the exact
  worst case, the spectral norm of the softmax Jacobian (diag(p) - p p^T) / T, whose largest eigenvalue is found by
  bisection on the secular equation 1 = sum_i p_i^2 / (p_i - lambda) between the two largest p_i. l are the model's
  scaled logits, so T = 1 is the model as trained.

Only `rows` x L weights per head exist at once; no L x L attention matrix is built. The distances between token
vectors (for d1 and delta) are computed only from the keys some row selects (SelectedDistances), in fp64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from attnscope import kernels
from attnscope.capture import LayerCapture

N_GRID = (1, 2, 3, 5, 8, 10, 16, 20, 32, 64, 100, 128, 256)  # selected-set sizes measured
BOUND_NS = (1, 5, 10, 20, 100)  # sizes whose Theorem 1 bound is computed (fig. 2a uses N = 5, fig. 2b all five)
TEMPERATURES = tuple(float(t) for t in np.logspace(-3, 2, 11))  # two per decade
EPSILONS = (1e-3, 1e-1, 10.0)
SATURATED_BAND = (0.70, 0.85)  # N_s / N where the paper calls a head saturated
CRITICAL_FRACTION = 0.06  # the paper's critical N ~ 0.06 L
KS_ALPHA = 0.05  # a p-value above this: the KS test cannot separate true from expected distances
VECTORS = ("values", "hidden")


def length_grid(max_length: int, min_length: int = 32) -> list[int]:
    """Geometric (doubling) grid of context lengths from min_length, ending exactly at max_length."""
    if max_length < min_length:
        return [max_length]
    lengths = [min_length]
    while lengths[-1] * 2 < max_length:
        lengths.append(lengths[-1] * 2)
    if lengths[-1] != max_length:
        lengths.append(max_length)
    return lengths


def builtin_text() -> str:
    """A long text that ships with every Python install: the reference manual's topics (pydoc_data.topics)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


BUILTIN_SOURCE = "the Python reference manual's topics (the standard library's pydoc_data.topics)"


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


def token_vectors(layer: LayerCapture, hidden: torch.Tensor | None) -> tuple[torch.Tensor, list[int]]:
    """(G, L, d) fp64 token vectors and, per query head, its index into G: the key/value heads' values, or the
    layer's input hidden states (G = 1) when `hidden` (B, L, d_model) is given."""
    if hidden is not None:  # the states of the layer's keys: a causal prefix keeps the first L
        return hidden[0, :layer.k.shape[2]].double()[None], [0] * layer.n_heads
    return layer.v[0].double(), [layer.kv_head(h) for h in range(layer.n_heads)]


class SelectedDistances:
    """||x_j - x_i|| for every key j that some analysed row of some head selects, against every key i, in fp64.

    Theorem 1 needs d1 = max_{i not in I_N, j in I_N} ||x_i - x_j|| and Theorem 2 the smallest distance within I_N;
    both read rows of this (U, L) table, where U (the union of the top-N sets) is usually far below L.
    """

    def __init__(self, x: torch.Tensor, group: Sequence[int], indices: torch.Tensor):
        self.tables, self.position = [], []
        norms = (x * x).sum(-1)  # (G, L)
        for g in range(x.shape[0]):
            heads = [h for h, of in enumerate(group) if of == g]
            union = torch.unique(indices[heads])
            union = union[union >= 0]
            squared = norms[g, union, None] + norms[g, None, :] - 2 * torch.matmul(x[g, union], x[g].T)
            self.tables.append(squared.clamp_min_(0).sqrt_())  # (U, L)
            position = torch.full((x.shape[1],), -1, dtype=torch.long)
            position[union] = torch.arange(len(union))
            self.position.append(position)
        self.group = list(group)

    def rows(self, head: int, keys: torch.Tensor) -> torch.Tensor:
        """(..., L) distances from each selected key in `keys` (...) to every key."""
        g = self.group[head]
        return self.tables[g][self.position[g][keys]]

    def among(self, head: int, keys: torch.Tensor) -> torch.Tensor:
        """(R, n, n) distances between the selected keys of each row, keys (R, n)."""
        g = self.group[head]
        return self.tables[g][self.position[g][keys][:, :, None], keys[:, None, :]]


def softmax_jacobian_norm(p: torch.Tensor, iterations: int = 60) -> torch.Tensor:
    """Largest eigenvalue of diag(p) - p p^T per row of p (..., L) (rows summing to 1).

    The eigenvalues of a diagonal matrix minus a rank-one term interlace its diagonal, so the largest lies between
    the two largest p_i, where g(lambda) = 1 - sum_i p_i^2 / (p_i - lambda) falls monotonically from +inf to -inf.
    Newton steps on g, kept inside the bracket by bisection whenever they would leave it; rows leave the loop as
    soon as they converge.
    """
    shape = p.shape[:-1]
    p = p.reshape(-1, p.shape[-1])
    if p.shape[-1] == 1:
        return torch.zeros(shape, dtype=p.dtype)
    top = torch.topk(p, 2, dim=-1).values
    low, high = top[:, 1].clone(), top[:, 0].clone()
    result = high.clone()  # a tie p_1 = p_2 is itself the eigenvalue
    active = torch.nonzero(high > low).squeeze(-1)
    lam = (low + high) / 2
    for _ in range(iterations):
        if active.numel() == 0:
            break
        rows, lo, hi, current = p[active], low[active], high[active], lam[active]
        gap = rows - current[:, None]
        terms = rows * rows / gap
        g = 1 - terms.sum(-1)
        slope = -(terms / gap).sum(-1)  # g'(lambda) < 0
        lo, hi = torch.where(g > 0, current, lo), torch.where(g > 0, hi, current)
        step = current - g / slope
        step = torch.where((step > lo) & (step < hi), step, (lo + hi) / 2)
        done = ((step - current).abs() <= 1e-15 * step) | (hi - lo <= 1e-15 * hi)
        low[active], high[active], lam[active] = lo, hi, step
        result[active[done]] = step[done]
        active = active[~done]
    result[active] = lam[active]
    return result.view(shape)


def analyse_layer(layer: LayerCapture, *, rows: int, hidden: torch.Tensor | None = None,
                  temperature: bool = False, seed: int = 0) -> LayerRows:
    """Everything paper B measures, for the last `rows` query positions of one layer (first sequence of the batch)."""
    if layer.mask is not None or layer.softcap is not None:
        raise ValueError("This layer has an explicit mask or soft-capped logits; the collapse analysis takes plain "
                         "causal or bidirectional softmax attention.")
    n_queries, length = layer.q.shape[2], layer.k.shape[2]
    rows = max(1, min(rows, n_queries // 4 if layer.causal else n_queries))  # causal rows see >= 3/4 of the keys
    picked = slice(n_queries - rows, n_queries)
    stats = kernels.attention_stats(layer.q[:1, :, picked], layer.k[:1], None, causal=layer.causal,
                                    scale=layer.scale, topk=min(max(N_GRID), length))
    visible_mask = layer.visible(picked)[0, 0]  # (R, L)
    visible = visible_mask.sum(-1)  # (R,)
    logits = layer.logits(rows=picked, dtype=torch.float64)[0]  # (H, R, L), -inf where hidden
    alpha = torch.softmax(logits, -1)
    x, group = token_vectors(layer, hidden)
    group_index = torch.tensor(group)
    xh = x[group_index]  # (H, L, d)
    norms_sq = (xh * xh).sum(-1)  # (H, L)
    output = torch.matmul(alpha, xh)  # (H, R, d)

    # Corollary 1 band, Delta = ||q_t|| max_i ||k_i|| * scale.
    q_norm = layer.q[0, :, picked].double().norm(dim=-1)  # (H, R)
    k_norm = layer.k[0].double().norm(dim=-1)[[layer.kv_head(h) for h in range(layer.n_heads)]]  # (H, L)
    k_max = k_norm[:, None, :].masked_fill(~visible_mask[None], -math.inf).amax(-1)  # (H, R)
    delta = q_norm * k_max * layer.scale
    band_low = torch.exp(-2 * delta) / visible
    band_high = torch.exp(2 * delta) / visible

    def distance_to(points: torch.Tensor) -> torch.Tensor:
        """||alpha_i x_i - p|| for every key i and every point p (H, R, P, d): (H, R, P, L) via the square."""
        cross = torch.matmul(points, xh[:, None].transpose(-1, -2))  # (H, R, P, L): x_i . p
        squared = (alpha**2 * norms_sq[:, None, :])[:, :, None] - 2 * alpha[:, :, None] * cross
        return squared.add_((points * points).sum(-1, keepdim=True)).clamp_min_(0).sqrt_()

    n_values = tuple(n for n in N_GRID if n < int(visible.min()))
    bound_ns = tuple(n for n in BOUND_NS if n in n_values)
    sizes = torch.tensor(n_values, dtype=torch.float64)  # (P,)
    largest = max(n_values, default=1)
    indices = stats.topk_indices[0][..., :largest]  # (H, R, K) by descending weight
    weights = alpha.gather(-1, indices)  # (H, R, K)
    vectors = torch.stack([xh[h][indices[h]] for h in range(layer.n_heads)])  # (H, R, K, d)
    last = [n - 1 for n in n_values]
    s = (weights[..., None] * vectors).cumsum(2)[:, :, last]  # (H, R, P, d): s for every N at once
    rank = torch.full_like(alpha, math.inf).scatter_(-1, indices, torch.arange(largest, dtype=torch.float64)
                                                      .expand_as(weights).contiguous())  # (H, R, L)
    chosen = rank[:, :, None, :] < sizes[:, None]  # (H, R, P, L): key in I_N
    others = visible_mask[None, :, None, :] & ~chosen
    distances = distance_to(s)  # (H, R, P, L)
    d_sum = (distances * others).sum(-1)
    d_norm = (output[:, :, None] - 2 * s).norm(dim=-1)
    visible_f = visible.double()
    centre = output[:, :, None] * (sizes / visible_f[:, None])[None, :, :, None]  # (N / L) o
    expected = ((visible_f[:, None] - sizes) / visible_f[:, None]) * (distance_to(centre) * visible_mask[None, :, None]
                                                                       ).sum(-1)
    expected_norm = (1 - 2 * sizes / visible_f[:, None]).abs() * output.norm(dim=-1)[..., None]
    radius = distances.masked_fill(~others, math.inf).amin(-1)  # (H, R, P)
    ratio = ((distances <= radius[..., None]) & chosen).sum(-1) / sizes
    distances_between = SelectedDistances(x, group, indices)
    separation = _separations(distances_between, indices, n_values)  # (H, R, P): delta of Theorem 2
    theorem2_low, theorem2_high = _theorem2(weights, vectors, sizes, radius, separation)
    bound = torch.zeros(layer.n_heads, rows, len(bound_ns), dtype=torch.float64)
    if bound_ns:
        bound[:] = _theorem1(alpha, indices, visible_mask, visible_f, bound_ns, xh, distances_between)

    result = LayerRows(
        length=length, visible=visible.numpy(), max_weight=stats.max_weight[0].double().numpy(),
        min_weight=alpha.masked_fill(~visible_mask[None], math.inf).amin(-1).numpy(),
        entropy=stats.entropy[0].double().numpy(), sink_mass=stats.sink_mass[0].double().numpy(),
        band_low=band_low.numpy(), band_high=band_high.numpy(), n_values=n_values, d_sum=d_sum.numpy(),
        d_norm=d_norm.numpy(), expected=expected.numpy(), expected_norm=expected_norm.numpy(), ratio=ratio.numpy(),
        theorem2_low=theorem2_low.numpy(), theorem2_high=theorem2_high.numpy(), bound_ns=bound_ns,
        bound=bound.numpy(),
    )
    if temperature:
        result.sensitivity, result.jacobian_norm = _temperature(logits, visible_mask, seed)
    return result


def _theorem1(alpha, indices, visible_mask, visible, bound_ns, xh, distances: SelectedDistances) -> torch.Tensor:
    """(H, R, len(bound_ns)) (1 - a_N) d1 + [(L - N) a_N - (1 - a_N)] max_{j in I_N} ||x_j||, head by head."""
    n_heads, rows, _ = alpha.shape
    largest = max(bound_ns)
    out = torch.zeros(n_heads, rows, len(bound_ns), dtype=torch.float64)
    norms = xh.norm(dim=-1)  # (H, L)
    for h in range(n_heads):
        selected = indices[h, :, :largest]  # (R, n)
        block = distances.rows(h, selected)  # (R, n, L): ||x_j - x_i|| for j selected, every i
        block = block.masked_fill(~visible_mask[:, None, :], -math.inf)
        done = 0
        for column, n in enumerate(bound_ns):
            block.scatter_(2, selected[:, None, done:n].expand(-1, largest, -1), -math.inf)  # i must be outside I_N
            done = n
            d1 = block[:, :n].amax((1, 2))  # (R,)
            a_n = alpha[h].gather(-1, selected[:, :n]).sum(-1)
            max_norm = norms[h].gather(-1, selected[:, :n].reshape(-1)).view(rows, n).amax(-1)
            out[h, :, column] = (1 - a_n) * d1 + ((visible - n) * a_n - (1 - a_n)) * max_norm
    return out


def _separations(distances: SelectedDistances, indices, n_values) -> torch.Tensor:
    """(H, R, len(n_values)) smallest distance between two vectors of I_N (0 for N = 1)."""
    n_heads, rows, _ = indices.shape
    out = torch.zeros(n_heads, rows, len(n_values), dtype=torch.float64)
    if not n_values:
        return out
    largest = max(n_values)
    for h in range(n_heads):
        selected = indices[h, :, :largest]  # (R, n)
        block = distances.among(h, selected)  # (R, n, n)
        block = block + torch.diag(torch.full((largest,), math.inf, dtype=block.dtype))
        for column, n in enumerate(n_values):
            out[h, :, column] = block[:, :n, :n].amin((1, 2)) if n > 1 else 0.0
    return out


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


def _temperature(logits: torch.Tensor, visible_mask: torch.Tensor, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random-direction sensitivity (H, R, eps, T) and the exact Jacobian norm (H, R, T) of softmax(l / T)."""
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(logits.shape, generator=generator, dtype=torch.float64) * visible_mask[None]
    direction = direction / direction.norm(dim=-1, keepdim=True)
    sensitivity = torch.zeros(*logits.shape[:2], len(EPSILONS), len(TEMPERATURES), dtype=torch.float64)
    jacobian = torch.zeros(*logits.shape[:2], len(TEMPERATURES), dtype=torch.float64)
    for t_index, temperature in enumerate(TEMPERATURES):
        p = torch.softmax(logits / temperature, -1)
        jacobian[..., t_index] = softmax_jacobian_norm(p) / temperature
        for e_index, eps in enumerate(EPSILONS):
            moved = torch.softmax((logits + eps * direction) / temperature, -1)
            sensitivity[..., e_index, t_index] = (moved - p).norm(dim=-1) / eps
    return sensitivity.numpy(), jacobian.numpy()


# ---- summaries: means over analysed rows, then over windows -------------------------------------------------------


@dataclass
class LengthSummary:
    """One context length, averaged over analysed rows and windows. Arrays are (layers, heads, ...)."""

    length: int
    n_values: tuple[int, ...]
    bound_ns: tuple[int, ...]
    max_weight: np.ndarray  # (Ly, H)
    entropy: np.ndarray
    sink_mass: np.ndarray
    band_low: np.ndarray  # (Ly, H) median over rows
    band_high: np.ndarray
    d_sum: np.ndarray  # (Ly, H, n)
    d_norm: np.ndarray
    expected: np.ndarray
    expected_norm: np.ndarray
    ratio: np.ndarray
    theorem2_low: np.ndarray
    theorem2_high: np.ndarray
    bound: np.ndarray  # (Ly, H, len(bound_ns))
    bound_rows: int = 0  # (row, head, N) triples checked against Theorem 1 in the summed reading
    bound_violations: int = 0  # ... where d_sum exceeded the bound
    corollary_violations: int = 0  # rows with a weight outside the Corollary 1 band
    sensitivity: np.ndarray | None = None  # (Ly, H, eps, T) mean over rows
    jacobian_norm: np.ndarray | None = None  # (Ly, H, T) mean over rows
    windows: int = 1


def summarise(layers: Sequence[LayerRows]) -> LengthSummary:
    """Means over the analysed rows of one window's layers (all at the same length)."""
    first = layers[0]
    n = min(len(layer.n_values) for layer in layers)

    def mean(name: str, cut: bool = False) -> np.ndarray:
        return np.stack([getattr(layer, name)[..., :n].mean(1) if cut else getattr(layer, name).mean(1)
                         for layer in layers])

    summary = LengthSummary(
        length=first.length, n_values=first.n_values[:n], bound_ns=first.bound_ns,
        max_weight=mean("max_weight"), entropy=mean("entropy"), sink_mass=mean("sink_mass"),
        band_low=np.stack([np.median(layer.band_low, 1) for layer in layers]),
        band_high=np.stack([np.median(layer.band_high, 1) for layer in layers]),
        d_sum=mean("d_sum", True), d_norm=mean("d_norm", True), expected=mean("expected", True),
        expected_norm=mean("expected_norm", True),
        ratio=mean("ratio", True), theorem2_low=mean("theorem2_low", True), theorem2_high=mean("theorem2_high", True),
        bound=mean("bound"),
    )
    for layer in layers:
        columns = [layer.n_values.index(b) for b in layer.bound_ns]
        measured = layer.d_sum[..., columns]
        summary.bound_rows += measured.size
        summary.bound_violations += int((measured > layer.bound * (1 + 1e-9) + 1e-12).sum())
        outside = (layer.max_weight > layer.band_high * (1 + 1e-6)) | (layer.min_weight < layer.band_low * (1 - 1e-6))
        summary.corollary_violations += int(outside.sum())
    if first.sensitivity is not None:
        summary.sensitivity = mean("sensitivity")
        summary.jacobian_norm = mean("jacobian_norm")
    return summary


def average_windows(summaries: Sequence[LengthSummary]) -> LengthSummary:
    """Mean over windows of the same length (counts are summed)."""
    n = min(len(s.n_values) for s in summaries)
    first = summaries[0]
    out = LengthSummary(length=first.length, n_values=first.n_values[:n], bound_ns=first.bound_ns,
                        windows=len(summaries), **{
                            name: np.mean([getattr(s, name)[..., :n] if name in _PER_N else getattr(s, name)
                                           for s in summaries], axis=0)
                            for name in _AVERAGED})
    out.bound_rows = sum(s.bound_rows for s in summaries)
    out.bound_violations = sum(s.bound_violations for s in summaries)
    out.corollary_violations = sum(s.corollary_violations for s in summaries)
    if all(s.sensitivity is not None for s in summaries):
        out.sensitivity = np.mean([s.sensitivity for s in summaries], axis=0)
        out.jacobian_norm = np.mean([s.jacobian_norm for s in summaries], axis=0)
    return out


_PER_N = ("d_sum", "d_norm", "expected", "expected_norm", "ratio", "theorem2_low", "theorem2_high")
_AVERAGED = ("max_weight", "entropy", "sink_mass", "band_low", "band_high", "bound") + _PER_N


def critical_n(true: np.ndarray, expected: np.ndarray, n_values: Sequence[int]
               ) -> tuple[int | None, int | None, np.ndarray]:
    """Critical N under the two readings of the paper's definition, and the KS p-value per N.

    A two-sample Kolmogorov-Smirnov test (scipy.stats.ks_2samp) compares the per-head true and expected distances
    at each N (true, expected: (heads, len(n_values))); "cannot separate" means p > KS_ALPHA. Returns the first N at
    which it cannot separate them, and the first N from which it never separates them again within the N measured
    (None when there is none).
    """
    from scipy.stats import ks_2samp

    p_values = np.array([ks_2samp(true[:, i], expected[:, i]).pvalue for i in range(len(n_values))])
    together = p_values > KS_ALPHA
    first = int(n_values[int(np.argmax(together))]) if together.any() else None
    apart = np.flatnonzero(~together)
    start = 0 if apart.size == 0 else int(apart[-1]) + 1
    stable = int(n_values[start]) if start < len(n_values) else None
    return first, stable, p_values


# ---- the whole sweep: windows of the text, context lengths, every layer ------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What a context-collapse sweep measures (everything that changes the numbers)."""

    max_length: int = 2048  # longest context L; lengths double from 32 up to it
    windows: int = 3  # consecutive slices of the text per length, averaged
    rows: int = 8  # analysed query positions per window: the last ones, which see about L keys
    vectors: str = "values"  # token vectors x_i: "values" (the head's value vectors) or "hidden" (layer input)


def text_windows(ids: torch.Tensor, settings: Settings) -> list[torch.Tensor]:
    """Consecutive, non-overlapping slices (1, L_max) of the token ids (1, n); one shorter window if the text is
    shorter than max_length."""
    length = min(settings.max_length, ids.shape[1])
    count = max(1, min(settings.windows, ids.shape[1] // length))
    return [ids[:, w * length:(w + 1) * length] for w in range(count)]


def analyse_capture(capture, length: int, settings: Settings, *, temperature: bool) -> LengthSummary:
    """Every captured layer at context length `length`: a prefix of a causal capture, or the whole of a
    bidirectional one (which must then have been run on exactly `length` tokens)."""
    layers = []
    for index in sorted(capture.layers):
        layer = capture.layer(index)
        if layer.causal:
            layer = layer.prefix(length)
        elif layer.q.shape[2] != length:
            raise ValueError(f"A bidirectional capture of {layer.q.shape[2]} tokens cannot stand for {length}.")
        hidden = None
        if settings.vectors == "hidden":
            if capture.hidden_states is None:
                raise ValueError("Hidden-state vectors need a capture run with hidden_states=True.")
            hidden = capture.hidden_states[index]  # token_vectors keeps the layer's first `length` keys
        layers.append(analyse_layer(layer, rows=settings.rows, hidden=hidden, temperature=temperature,
                                    seed=index))
    return summarise(layers)


@dataclass
class Sweep:
    lengths: list[int]
    summaries: list[LengthSummary]  # per length, averaged over windows

    def critical(self, reading: str, definition: str = "first") -> list[int | None]:
        """Per length, the critical N for reading "d_sum" or "d_norm" and definition "first" or "stable"
        (see critical_n; None: not within the N measured)."""
        which = {"first": 0, "stable": 1}[definition]
        return [critical_for(summary, reading)[which] for summary in self.summaries]


def critical_for(summary: LengthSummary, reading: str) -> tuple[int | None, int | None, np.ndarray]:
    """Critical N and KS p-values at one length, each reading against its own random-subset expectation."""
    n = len(summary.n_values)
    expected = summary.expected if reading == "d_sum" else summary.expected_norm
    return critical_n(getattr(summary, reading).reshape(-1, n), expected.reshape(-1, n), summary.n_values)


def run_sweep(model: torch.nn.Module, ids: torch.Tensor, settings: Settings, *, causal: bool,
              progress=None) -> Sweep:
    """The whole sweep without a UI: progress(done, total, message) after each (window, length)."""
    from attnscope.capture import run_with_capture

    windows = text_windows(ids, settings)
    lengths = length_grid(windows[0].shape[1])
    per_length: dict[int, list[LengthSummary]] = {length: [] for length in lengths}
    total, done = len(windows) * len(lengths), 0
    hidden = settings.vectors == "hidden"
    for window in windows:
        capture = run_with_capture(model, window, hidden_states=hidden) if causal else None
        for length in lengths:
            run = capture if causal else run_with_capture(model, window[:, :length], hidden_states=hidden)
            per_length[length].append(analyse_capture(run, length, settings, temperature=length == lengths[-1]))
            done += 1
            if progress is not None:
                progress(done, total, f"window {len(per_length[length])}/{len(windows)}, L = {length}")
    return Sweep(lengths=lengths, summaries=[average_windows(per_length[length]) for length in lengths])
