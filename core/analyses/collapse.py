"""Context collapse (paper B: Mudarisov, Burtsev, Petrova, State, arXiv 2508.17821; ../shared/THEORY.md).

Normalised attention spreads thin as the context grows. For each context length L, windows of the text of L tokens
are run through the model (for a causal model, the first L tokens of one long window: exactly what the model computes
on them alone), and for every head the last `rows` query positions of each window (which see about L keys) are
analysed: vanishing attention and the Corollary 1 band, the two readings of the distance between the top-N selection
and the rest (eq. 7) with their random-subset expectations, the Theorem 1 bound, the fraction of distinguishable
tokens N_s / N with the Theorem 2 bounds, and the sensitivity of softmax to its temperature. Three modules:

- collapse_reference.py: the per-row definitions, written out head by head and row by row in fp64 (the
  specification, for tests and readers), with the grids measured and the per-layer result LayerRows;
- collapse_folds.py: the same numbers for every layer of a capture at once (analyse_layer, analyse_layers): layers
  folded into batches of heads, distances expanded in squares, cancellation checked between folds;
- this module: what the paper concludes from them, and the sweep: means over rows and windows (summarise,
  average_windows) with the counts of rows that break Theorem 1 or Corollary 1, the critical N by a two-sample
  Kolmogorov-Smirnov test (critical_n), the windows of a text and the length grid, and one capture analysed at one
  length (analyse_capture).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from attnscope.analyses.collapse_folds import analyse_layer, analyse_layers, softmax_jacobian_norm
from attnscope.analyses.collapse_reference import BOUND_NS, EPSILONS, N_GRID, PER_N, TEMPERATURES, LayerRows

__all__ = [
    "BOUND_NS", "BUILTIN_SOURCE", "CRITICAL_FRACTION", "EPSILONS", "KS_ALPHA", "N_GRID", "SATURATED_BAND",
    "TEMPERATURES", "VECTORS", "LayerRows", "LengthSummary", "Settings", "analyse_capture", "analyse_layer",
    "analyse_layers", "average_windows", "builtin_text", "critical_for", "critical_n", "length_grid",
    "softmax_jacobian_norm", "summarise", "text_windows",
]

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
    layer_windows: tuple = ()  # per layer: its sliding window, 0 for a global layer
    learned_sink_mass: np.ndarray | None = None  # (Ly, H) mean over rows, models with learned sinks


def summarise(layers: Sequence[LayerRows]) -> LengthSummary:
    """Means over the analysed rows of one window's layers (all at the same length)."""
    first = layers[0]
    # Local layers see fewer keys than global ones, so they measure fewer N: keep the sizes every layer has.
    n = min(len(layer.n_values) for layer in layers)
    bound_ns = min((layer.bound_ns for layer in layers), key=len)

    def mean(name: str, cut: bool = False) -> np.ndarray:
        values = [getattr(layer, name)[..., :n] if cut else getattr(layer, name) for layer in layers]
        if name == "bound":
            values = [value[..., :len(bound_ns)] for value in values]
        if name.startswith("theorem2"):  # undefined (0 / 0) where I_N holds only a learned sink's zero vector
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return np.stack([np.nanmean(value, 1) for value in values])
        return np.stack([value.mean(1) for value in values])

    summary = LengthSummary(
        length=first.length, n_values=first.n_values[:n], bound_ns=bound_ns,
        max_weight=mean("max_weight"), entropy=mean("entropy"), sink_mass=mean("sink_mass"),
        band_low=np.stack([np.median(layer.band_low, 1) for layer in layers]),
        band_high=np.stack([np.median(layer.band_high, 1) for layer in layers]),
        d_sum=mean("d_sum", True), d_norm=mean("d_norm", True), expected=mean("expected", True),
        expected_norm=mean("expected_norm", True),
        ratio=mean("ratio", True), theorem2_low=mean("theorem2_low", True), theorem2_high=mean("theorem2_high", True),
        bound=mean("bound"), layer_windows=tuple(int(layer.window) for layer in layers),
        learned_sink_mass=(np.stack([layer.learned_sink_mass.mean(1) for layer in layers])
                           if all(layer.learned_sink_mass is not None for layer in layers) else None),
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
                        windows=len(summaries), layer_windows=first.layer_windows, **{
                            name: np.mean([getattr(s, name)[..., :n] if name in PER_N else getattr(s, name)
                                           for s in summaries], axis=0)
                            for name in _AVERAGED})
    out.bound_rows = sum(s.bound_rows for s in summaries)
    out.bound_violations = sum(s.bound_violations for s in summaries)
    out.corollary_violations = sum(s.corollary_violations for s in summaries)
    if all(s.learned_sink_mass is not None for s in summaries):
        out.learned_sink_mass = np.mean([s.learned_sink_mass for s in summaries], axis=0)
    if all(s.sensitivity is not None for s in summaries):
        out.sensitivity = np.mean([s.sensitivity for s in summaries], axis=0)
        out.jacobian_norm = np.mean([s.jacobian_norm for s in summaries], axis=0)
    return out


_AVERAGED = ("max_weight", "entropy", "sink_mass", "band_low", "band_high", "bound") + PER_N


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
    layers, hidden = [], []
    for index in sorted(capture.layers):
        layer = capture.layer(index)
        if layer.causal:
            layer = layer.prefix(length)
        elif layer.q.shape[2] != length:
            raise ValueError(f"A bidirectional capture of {layer.q.shape[2]} tokens cannot stand for {length}.")
        layers.append(layer)
        if settings.vectors == "hidden":
            if capture.hidden_states is None:
                raise ValueError("Hidden-state vectors need a capture run with hidden_states=True.")
            hidden.append(capture.hidden_states[index])  # the layer's input; its first `length` states are used
    return summarise(analyse_layers(layers, rows=settings.rows, hidden=hidden or None, temperature=temperature,
                                    seeds=sorted(capture.layers)))


def critical_for(summary: LengthSummary, reading: str) -> tuple[int | None, int | None, np.ndarray]:
    """Critical N and KS p-values at one length, each reading against its own random-subset expectation."""
    n = len(summary.n_values)
    expected = summary.expected if reading == "d_sum" else summary.expected_norm
    return critical_n(getattr(summary, reading).reshape(-1, n), expected.reshape(-1, n), summary.n_values)
