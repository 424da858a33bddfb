"""Context collapse as a study: paper B's measures (attnscope.analyses.collapse) over windows of a long text and
context lengths, the result attnscope.collapse returns, and the claims and figures the Context-collapse page shows.

Unit (cached on its own by the dashboard, a module-level function of the Source and hashable arguments):
- measure: every layer at one context length L on one window of token ids, averaged over its analysed query rows
  (a LengthSummary). Decoders: a prefix of one capture of the whole window, which is exactly what the model computes
  on those L tokens alone, so a window costs one forward pass whatever the number of lengths; encoders: one run on
  the window's first L tokens.

`run` cuts the text into windows, runs one unit per (window, length) with progress between them, averages over the
windows and runs the Kolmogorov-Smirnov tests of the critical N once per length and reading. The CollapseResult says
what it found (`findings`: the paper's claim, made on GPT-2, beside what this model does), draws the page's figures
(`figures`) and tabulates (`to_frame`, `tables`), for all heads or one head, at any of the lengths measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from attnscope import settings as S
from attnscope.analyses import collapse as analysis
from attnscope.analyses.collapse import LengthSummary
from attnscope.figures import collapse as figures
from attnscope.studies.base import Finding, ProgressFn, Result, Source, meta_for, progress_steps
from attnscope.tokens import Cut

PAPER = "[Mudarisov et al., arXiv 2508.17821](https://arxiv.org/abs/2508.17821)"
ALL_LAYERS = -1  # `layer` value for "every head" in findings, figures and tables
MIN_TOKENS = 32  # the shortest context length measured
FIG_2A_N = 5  # the selected-set size of the distance-vs-L figure (the paper's fig. 2a)
SATURATION_N = 16  # N at which the paper reads the saturated fraction
READINGS = ("d_sum", "d_norm")  # the two readings of the paper's distance (eq. 7)
DEFINITIONS = ("first", "stable")  # the two readings of "the critical N" (analysis.critical_n)
SECTIONS = ("vanishing", "distance_l", "distance_n", "distinguish", "temperature", "advice")  # the page's order
HELP = {
    "intro": (
        f"The paper ({PAPER}, no code released) proves that normalised attention spreads thin as the context grows: "
        "weights tend to 1/L, the tokens a head selects become indistinguishable, and sensitivity explodes at low "
        "temperature. Each section below measures one of its figures on the model and text you chose and puts the "
        "paper's claim, made on GPT-2, beside what this model does."
    ),
    "vanishing": (
        "Per head, the largest attention weight, the entropy and the weight on the first token, for queries that see "
        "about L tokens, against the context length L. Lemma 1 / Corollary 1 bound every weight between e^{-2Δ}/L and "
        "e^{2Δ}/L with Δ = ‖q‖·max‖k‖/√d, so with bounded logits all weights approach 1/L and the entropy log L."
    ),
    "distance_l": (
        "For the N = 5 tokens a head weights most, s = Σ αᵢxᵢ over them, and the distance (eq. 7) measures how far "
        "the rest of the context sits from s: the summed reading d_sum = Σ‖αᵢxᵢ − s‖ and the norm reading "
        "d_norm = ‖Σ αᵢxᵢ − s‖, both over the tokens not selected. Theorem 1 bounds d_sum (provably), and a random "
        "choice of N tokens gives the expectation drawn for comparison."
    ),
    "distance_n": (
        "The same distances at one context length against the number N of selected tokens. The critical N is the "
        "first N at which a two-sample Kolmogorov-Smirnov test (scipy.stats.ks_2samp, p > 0.05) can no longer tell "
        "the per-head true distances from the random-subset expectation; the paper finds it near 0.06 L."
    ),
    "distinguish": (
        "A selected token is distinguishable if αᵢxᵢ lies within r of s, where r is the distance from s to the "
        "nearest non-selected αⱼxⱼ; N_s counts them. Theorem 2 bounds the expected fraction N_s/N for vectors on a "
        "sphere (reconstructed; real vectors are not on one), and the paper calls heads at 0.70-0.85 saturated."
    ),
    "temperature": (
        "Each row's logits are moved by ε along a random unit direction and the change of softmax(l/T) is divided "
        "by ε; the black line is the exact worst case, the spectral norm of the softmax Jacobian (diag(p) − ppᵀ)/T. "
        "The paper bounds the sensitivity by 1/(4T); the true maximum is 1/(2T), and a random direction probes far "
        "less than the worst case."
    ),
    "caveat": ("The paper's analysis is of GPT-2 small; where this model differs, the measured value stands and the "
               "claim is shown beside it, not adjusted to it."),
    "source": f"The built-in document is {analysis.BUILTIN_SOURCE}, which ships with every Python install.",
}
FIGURE_SECTIONS = {"vanishing-attention": "vanishing", "distance-vs-length": "distance_l",
                   "distance-vs-n": "distance_n", "critical-n": "distance_n", "distinguishability": "distinguish",
                   "temperature": "temperature"}  # figure name -> the section that shows it


# ---- the unit -----------------------------------------------------------------------------------------------------

def measure(source: Source, window: tuple[int, ...], length: int, rows: int, vectors: str,
            temperature: bool) -> LengthSummary:
    """Every layer at context length `length` on the token ids of one window: the last `rows` query positions of
    each layer, the temperature sweep too when asked."""
    hidden = vectors == "hidden"
    if source.model.kind == "decoder":  # the window's capture, which Source keeps for the next length
        capture = source.run_ids(window, hidden_states=hidden)
    else:
        capture = source.run_ids(window[:length], hidden_states=hidden)
    settings = analysis.Settings(max_length=len(window), windows=1, rows=rows, vectors=vectors)
    return analysis.analyse_capture(capture, length, settings, temperature=temperature)


# ---- the result ---------------------------------------------------------------------------------------------------


@dataclass
class CriticalN:
    """The critical N of one reading of the distance at each length, by both definitions, with the KS p-values."""

    reading: str  # "d_sum" or "d_norm"
    first: tuple  # per length: the first N the KS test cannot separate true from expected, or None
    stable: tuple  # per length: the first N from which it never separates them again, or None
    p_values: tuple  # per length: (len(n_values),) KS p-value at each N


@dataclass(repr=False)  # Result's short repr
class CollapseResult(Result):
    """Paper B's measures per context length, averaged over windows, per (layer, head)."""

    kind = "collapse"
    title = "attnscope: context collapse"

    meta: dict
    text_source: str  # "builtin" (analysis.BUILTIN_SOURCE) or "given"
    text_tokens: int  # tokens of the text read (at most windows x window_tokens)
    windows: int  # windows measured (fewer than asked for when the text is short)
    window_tokens: int  # tokens per window: the longest context L
    longest: int  # the window asked for: max_length, lowered to max_tokens and the model's positions
    rows: int  # query positions analysed per window: the last ones
    vectors: str  # token vectors x_i: "values" or "hidden"
    n_layers: int
    n_heads: int
    lengths: tuple  # context lengths L, doubling from 32
    summaries: tuple  # one LengthSummary per length, averaged over windows; arrays (layers, heads, ...)
    critical: dict  # reading -> CriticalN

    # -- what was run --

    def summary(self, text_label: str | None = None) -> str:
        """One line: the text, windows, lengths and heads measured (text_label names a given text)."""
        label = analysis.BUILTIN_SOURCE if self.text_source == "builtin" else (text_label or "the given text")
        shortfall = ""
        if self.windows < self.meta.get("windows", self.windows) or self.window_tokens < self.longest:
            shortfall = (f" The text has {self.text_tokens} tokens, enough for {self.windows} window(s) of "
                         f"{self.window_tokens}.")
        vectors = "value vectors" if self.vectors == "values" else "hidden states"
        return (f"Text: {label}. {self.windows} window(s) × lengths {', '.join(map(str, self.lengths))} · the last "
                f"{self.rows} query positions of each window · xᵢ = {vectors} · {self.n_layers} layers × "
                f"{self.n_heads} heads.{shortfall}")

    def _view(self, layer: int, head: int, fixed_length: int | None) -> tuple[str, LengthSummary]:
        if layer != ALL_LAYERS and not (0 <= layer < self.n_layers and 0 <= head < self.n_heads):
            raise ValueError(f"layer {layer}, head {head} is outside this model's {self.n_layers} layers × "
                             f"{self.n_heads} heads (layer {ALL_LAYERS} means every head).")
        fixed_length = self.lengths[-1] if fixed_length is None else int(fixed_length)
        if fixed_length not in self.lengths:
            raise ValueError(f"fixed_length {fixed_length} was not measured; use one of "
                             f"{', '.join(map(str, self.lengths))}.")
        who = "all heads" if layer == ALL_LAYERS else f"layer {layer}, head {head}"
        return who, self.summaries[self.lengths.index(fixed_length)]

    def _probe(self, layer: int, head: int) -> tuple[np.ndarray, np.ndarray]:
        """Max over the chosen heads of the mean over tokens: the random-direction sensitivity (eps, T) and the
        exact Jacobian norm (T,) at the longest length."""
        last = self.summaries[-1]
        return _heads(last.sensitivity, layer, head).max(0), _heads(last.jacobian_norm, layer, head).max(0)

    # -- findings --

    def findings(self, layer: int = ALL_LAYERS, head: int = 0, fixed_length: int | None = None,
                 section: str | None = None) -> list[Finding]:
        """Paper claim beside measured value, in the page's order.

        Args:
            layer, head: the heads some sentences follow (layer ALL_LAYERS: every head).
            fixed_length: the L of the distinguishability and advice sentences (default: the longest).
            section: one of SECTIONS to keep that section's findings only.
        """
        if section is not None and section not in SECTIONS:
            raise ValueError(f"Unknown section {section!r}; use one of {', '.join(SECTIONS)}.")
        _, fixed = self._view(layer, head, fixed_length)
        made = {"vanishing": lambda: self._vanishing(), "distance_l": lambda: self._distance_l(layer, head),
                "distance_n": lambda: self._distance_n(), "distinguish": lambda: self._distinguish(fixed),
                "temperature": lambda: self._temperature(layer, head),
                "advice": lambda: self._advice(layer, head, fixed)}
        return [item for name in SECTIONS if section in (None, name) for item in made[name]()]

    def _vanishing(self) -> list[Finding]:
        lengths, first, last = self.lengths, self.summaries[0], self.summaries[-1]
        violations = sum(s.corollary_violations for s in self.summaries)
        return [*self._local(), Finding(
            "Vanishing attention",
            f"from L = {lengths[0]} to {lengths[-1]} the mean max weight goes {first.max_weight.mean():.3f} → "
            f"{last.max_weight.mean():.3f} (1/L: {1 / lengths[0]:.3f} → {1 / lengths[-1]:.4f}), the mean entropy "
            f"{first.entropy.mean():.2f} → {last.entropy.mean():.2f} nats (log L: {np.log(lengths[0]):.2f} → "
            f"{np.log(lengths[-1]):.2f}), and the weight on token 0 {first.sink_mass.mean():.2f} → "
            f"{last.sink_mass.mean():.2f}. Weights outside the Corollary 1 band: {violations}; its median half-width "
            f"is e^{{2Δ}} with Δ ≈ {np.log(_median(last.band_high) * lengths[-1]) / 2:.0f}, so it holds without "
            "constraining anything at these logit scales.",
            "every weight tends to 1/L and the entropy to log L as L grows (Lemma 1, Corollary 1); the paper does "
            "not model the first-token sink.")]

    def _local(self) -> list[Finding]:
        """Sliding-window layers and learned sinks, when the model has them."""
        out = []
        first, last = self.summaries[0], self.summaries[-1]
        if last.learned_sink_mass is not None:
            out.append(Finding(
                "Learned sinks",
                f"the learned sink cells take {first.learned_sink_mass.mean():.3f} of the weight at L = "
                f"{self.lengths[0]} and {last.learned_sink_mass.mean():.3f} at L = {self.lengths[-1]}, beside "
                f"{first.sink_mass.mean():.3f} → {last.sink_mass.mean():.3f} on the first token. Each is analysed as "
                "one more cell with no token vector, so the weights over the L + 1 cells sum to 1.",
                "paper B (Mudarisov et al., arXiv 2508.17821) models no sink; a learned sink (as in gpt-oss) is a "
                "built-in one: a logit with no value vector, which takes weight from every token alike."))
        windows = np.asarray(last.layer_windows or (0,) * self.n_layers)
        local = windows > 0
        if not local.any():
            return out
        last, window = self.summaries[-1], int(windows[local].min())
        global_part = (f", against {last.max_weight[~local].mean():.3f} in the {int((~local).sum())} global layers"
                       if (~local).any() else "")
        return out + [Finding(
            "Local (sliding-window) layers",
            f"{int(local.sum())} of {self.n_layers} layers see only their last {window:,} keys "
            f"(layers {', '.join(map(str, np.flatnonzero(local)[:24]))}). At L = {self.lengths[-1]} their mean max "
            f"weight is {last.max_weight[local].mean():.3f} (1/window: {1 / window:.4f}){global_part}; past "
            f"L = {window:,} their figures stop changing with L, as the window, not L, sets what they see.",
            "paper B (Mudarisov et al., arXiv 2508.17821) treats attention over the whole context; its bound, "
            "applied to the at most w keys a query of such a layer sees, puts its weights above about C1 / min(L, w), "
            "not C1 / L, so such a layer cannot collapse past its window.")]

    def _usable(self) -> list[LengthSummary]:
        """The lengths long enough for the fig. 2a selected-set size."""
        return [s for s in self.summaries if FIG_2A_N in s.n_values and FIG_2A_N in s.bound_ns]

    def _distance_l(self, layer: int, head: int) -> list[Finding]:
        usable = self._usable()
        if not usable:
            return [Finding("Distance vs context length",
                            f"Every context here is too short for N = {FIG_2A_N} selected tokens.")]
        checked = sum(s.bound_rows for s in self.summaries)
        broken = sum(s.bound_violations for s in self.summaries)
        first, last = usable[0], usable[-1]
        growth = (_median(last.d_sum[..., last.n_values.index(FIG_2A_N)])
                  / _median(first.d_sum[..., first.n_values.index(FIG_2A_N)]))
        bound = _heads(last.bound[..., last.bound_ns.index(FIG_2A_N)], layer, head)
        measured = _heads(last.d_sum[..., last.n_values.index(FIG_2A_N)], layer, head)
        return [Finding(
            "Distance vs context length",
            f"the median d_sum grows {growth:.1f}× while L grows {last.length / first.length:.0f}×; the Theorem 1 "
            f"bound held in {checked - broken} of {checked} (query, head, N) cases in the summed reading (proved "
            f"there), with a median slack of {_median(bound / np.maximum(measured, 1e-300)):.1f}×. The norm reading "
            "is drawn, not asserted: the theorem does not cover it.",
            "true and expected distance grow about linearly with L for N = 5; the Theorem 1 bound holds, loosely.")]

    def _distance_n(self) -> list[Finding]:
        critical, top = self.critical, self.lengths[-1]
        return [Finding(
            "Critical N",
            f"at L = {top} (0.06 L = {0.06 * top:.0f}; N measured up to {self.summaries[-1].n_values[-1]}) the first "
            f"N the KS test cannot separate is {_said(critical['d_sum'].first[-1])} in the summed reading and "
            f"{_said(critical['d_norm'].first[-1])} in the norm reading; the first N from which it never separates "
            f"them again is {_said(critical['d_sum'].stable[-1])} and {_said(critical['d_norm'].stable[-1])}. The "
            "paper leaves both the reading and this definition open; all four are drawn.",
            "at L = 1024 the distance plateaus past N ≈ 20, and the critical N is about 0.06 L.")]

    def _saturated(self, fixed: LengthSummary) -> tuple[int, np.ndarray]:
        """The column of N = SATURATION_N (or the largest N measured) and, per (layer, head), whether N_s/N lies in
        the paper's saturated band there."""
        at = fixed.n_values.index(SATURATION_N) if SATURATION_N in fixed.n_values else len(fixed.n_values) - 1
        low, high = analysis.SATURATED_BAND
        return at, (fixed.ratio[..., at] >= low) & (fixed.ratio[..., at] <= high)

    def _distinguish(self, fixed: LengthSummary) -> list[Finding]:
        at, in_band = self._saturated(fixed)
        medians = ", ".join(f"{_median(fixed.ratio[..., i]):.2f} (N={n})" for i, n in enumerate(fixed.n_values)
                            if n in (1, 5, 16, 64, 256))
        return [Finding(
            "Distinguishability",
            f"at L = {fixed.length} the median N_s/N is {medians}; {int(in_band.sum())} of {in_band.size} heads sit "
            f"in the saturated band at N = {fixed.n_values[at]}.",
            "N_s/N falls until N ≈ 16 and then saturates at 0.70-0.85; the upper bound tracks the maxima.")]

    def _temperature(self, layer: int, head: int) -> list[Finding]:
        probe, worst = self._probe(layer, head)
        t001, t01, t1 = (_temperature_index(t) for t in (0.01, 0.1, 1.0))
        temps = analysis.TEMPERATURES
        return [Finding(
            "Temperature",
            f"at L = {self.lengths[-1]}, max over heads of the mean over tokens with ε = {analysis.EPSILONS[0]:g}: "
            f"{probe[0, t001]:.3g} at T = 0.01, {probe[0, t01]:.3g} at T = 0.1, {probe[0, t1]:.3g} at T = 1 "
            f"(ratio T=0.01 / T=1: {probe[0, t001] / max(probe[0, t1], 1e-300):.0f}×; 1/T predicts 100×). The exact "
            f"Jacobian norm is {worst[t001]:.3g} at T = 0.01 and {worst[t1]:.3g} at T = 1 (1/(2T): "
            f"{1 / (2 * temps[t001]):.0f} and 0.5).",
            "sensitivity follows 1/T for T < 0.1 and drops about two orders of magnitude by T ≥ 1; "
            "‖∂α/∂l‖ ≤ min(1/(4T), √2).")]

    def _advice(self, layer: int, head: int, fixed: LengthSummary) -> list[Finding]:
        at, in_band = self._saturated(fixed)
        band = analysis.SATURATED_BAND
        saturated = [(ly, h) for ly, h in zip(*np.nonzero(in_band))]
        critical = self.critical["d_sum"].first[self.lengths.index(fixed.length)]
        last = self.summaries[-1]
        probe, _ = self._probe(layer, head)
        t01, t1 = _temperature_index(0.1), _temperature_index(1.0)
        lines = [
            f"- **Saturated heads** (N_s/N in {band[0]:.2f}–{band[1]:.2f} at N = {fixed.n_values[at]}, "
            f"L = {fixed.length}): {len(saturated)} of {in_band.size}"
            + (": " + ", ".join(f"L{ly}H{h}" for ly, h in saturated[:24]) + (" …" if len(saturated) > 24 else "")
               if saturated else "."),
            f"- **Critical N at L = {fixed.length}**: {critical if critical is not None else 'not reached within'} "
            f"{'' if critical is not None else 'N = ' + str(fixed.n_values[-1])} (summed reading); the paper's rule "
            f"of thumb gives {0.06 * fixed.length:.0f}. Keep the set of tokens a head must single out below about "
            "0.06 L.",
            f"- **Entropy**: at L = {last.length} heads use on average "
            f"{last.entropy.mean() / np.log(last.length):.0%} of the maximum entropy log L; the paper suggests "
            "monitoring entropy or N_s/N (70-80% means saturated).",
            f"- **Temperature**: a random direction moves the weights "
            f"{probe[0, t01] / max(probe[0, t1], 1e-300):.0f}× more at T = 0.1 than at the model's own T = 1; the "
            "paper advises against T ≤ 0.1.",
        ]
        return [Finding("What this means for your model", "\n".join(lines))]

    # -- figures --

    def figures(self, layer: int = ALL_LAYERS, head: int = 0, fixed_length: int | None = None) -> dict[str, object]:
        """The page's figures, name -> plotly figure, for every head (layer ALL_LAYERS) or one, with the
        distance-vs-N and distinguishability figures at fixed_length (default: the longest)."""
        who, fixed = self._view(layer, head, fixed_length)
        summaries = self.summaries
        stacked = {name: np.stack([_heads(getattr(s, name), layer, head) for s in summaries])
                   for name in ("max_weight", "entropy", "sink_mass", "band_low", "band_high")}
        out = {"vanishing-attention": figures.vanishing(
            self.lengths, stacked["max_weight"], stacked["entropy"], stacked["sink_mass"], stacked["band_low"],
            stacked["band_high"], title=f"Vanishing attention, {who}")}
        usable = self._usable()
        if usable:
            series = {name: np.stack([_heads(getattr(s, name)[..., s.n_values.index(FIG_2A_N)], layer, head)
                                      for s in usable]) for name in ("d_sum", "d_norm", "expected", "expected_norm")}
            bound = np.stack([_heads(s.bound[..., s.bound_ns.index(FIG_2A_N)], layer, head) for s in usable])
            out["distance-vs-length"] = figures.distance_vs_length(
                [s.length for s in usable], series["d_sum"], series["d_norm"], series["expected"],
                series["expected_norm"], bound, n=FIG_2A_N, title=f"Distance vs L at N = {FIG_2A_N}, {who}")
        out["distance-vs-n"] = figures.distance_vs_n(
            fixed.n_values, _heads(fixed.d_sum, layer, head).T, _heads(fixed.d_norm, layer, head).T,
            _heads(fixed.expected, layer, head).T, _heads(fixed.expected_norm, layer, head).T, fixed.bound_ns,
            _heads(fixed.bound, layer, head).T, title=f"Distance vs N at L = {fixed.length}, {who}")
        out["critical-n"] = figures.critical_n(
            self.lengths, {f"{reading}, {definition} N": getattr(self.critical[reading], definition)
                           for reading in READINGS for definition in DEFINITIONS},
            largest_n=[s.n_values[-1] for s in summaries], fraction=analysis.CRITICAL_FRACTION,
            title="Critical N vs L (all heads)")
        out["distinguishability"] = figures.distinguishability(
            fixed.n_values, _heads(fixed.ratio, layer, head).T, _heads(fixed.theorem2_low, layer, head).T,
            _heads(fixed.theorem2_high, layer, head).T, band=analysis.SATURATED_BAND,
            title=f"N_s / N at L = {fixed.length}, {who}")
        probe, worst = self._probe(layer, head)
        out["temperature"] = figures.temperature(
            analysis.TEMPERATURES, probe, worst, analysis.EPSILONS,
            title=f"Sensitivity vs temperature at L = {self.lengths[-1]}, {who} (mean over tokens, max over heads)")
        return out

    # -- tables --

    def tables(self, layer: int = ALL_LAYERS, head: int = 0, fixed_length: int | None = None
               ) -> dict[str, pd.DataFrame]:
        """The data behind each figure that has a table of its own (name as in figures()); the distance-vs-N
        figure's data are its traces."""
        _, fixed = self._view(layer, head, fixed_length)
        n_layers, n_heads = self.n_layers, self.n_heads
        layers, heads = (a.ravel() for a in np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij"))
        out = {"vanishing-attention": pd.concat([pd.DataFrame({
            "L": s.length, "layer": layers, "head": heads, "max_weight": s.max_weight.ravel(),
            "entropy": s.entropy.ravel(), "sink_mass": s.sink_mass.ravel(), "corollary1_low": s.band_low.ravel(),
            "corollary1_high": s.band_high.ravel()}) for s in self.summaries], ignore_index=True)}
        usable = self._usable()
        if usable:
            out["distance-vs-length"] = pd.concat([pd.DataFrame({
                "L": s.length, "layer": layers, "head": heads, "N": FIG_2A_N,
                **{column: getattr(s, name)[..., s.n_values.index(FIG_2A_N)].ravel() for column, name in (
                    ("d_sum", "d_sum"), ("d_norm", "d_norm"), ("expected_random_sum", "expected"),
                    ("expected_random_norm", "expected_norm"))},
                "theorem1": s.bound[..., s.bound_ns.index(FIG_2A_N)].ravel()}) for s in usable], ignore_index=True)
        out["critical-n"] = pd.DataFrame([{"L": s.length, "N": n, "reading": reading,
                                           "ks_p_value": self.critical[reading].p_values[index][i]}
                                          for index, s in enumerate(self.summaries) for reading in READINGS
                                          for i, n in enumerate(s.n_values)])
        per_n = len(fixed.n_values)
        out["distinguishability"] = pd.DataFrame({
            "L": fixed.length, "N": np.repeat(fixed.n_values, n_layers * n_heads), "layer": np.tile(layers, per_n),
            "head": np.tile(heads, per_n),
            **{name: np.moveaxis(getattr(fixed, attribute), -1, 0).ravel() for name, attribute in (
                ("ratio", "ratio"), ("theorem2_low", "theorem2_low"), ("theorem2_high", "theorem2_high"))}})
        probe, worst = self._probe(layer, head)
        out["temperature"] = pd.DataFrame([{"T": t, "epsilon": eps, "sensitivity_max_over_heads": probe[e, i],
                                            "jacobian_norm_max_over_heads": worst[i]}
                                           for e, eps in enumerate(analysis.EPSILONS)
                                           for i, t in enumerate(analysis.TEMPERATURES)])
        return out

    def to_frame(self) -> pd.DataFrame:
        """Long table: one row per (L, layer, head, N measured at L) with the per-head statistics of that length
        and the distances, N_s/N and bounds at that N (theorem1 is NaN where N has no Theorem 1 bound)."""
        frames = []
        layers, heads = np.meshgrid(np.arange(self.n_layers), np.arange(self.n_heads), indexing="ij")
        for s in self.summaries:
            n_count = len(s.n_values)
            per_head = lambda a: np.repeat(a[..., None], n_count, -1).ravel()  # noqa: E731
            theorem1 = np.full(s.d_sum.shape, np.nan)
            for column, n in enumerate(s.bound_ns):
                theorem1[..., s.n_values.index(n)] = s.bound[..., column]
            frames.append(pd.DataFrame({
                "L": s.length, "layer": per_head(layers), "head": per_head(heads),
                "N": np.broadcast_to(np.array(s.n_values), s.d_sum.shape).ravel(),
                "max_weight": per_head(s.max_weight), "entropy": per_head(s.entropy),
                "sink_mass": per_head(s.sink_mass), "corollary1_low": per_head(s.band_low),
                "corollary1_high": per_head(s.band_high), "d_sum": s.d_sum.ravel(), "d_norm": s.d_norm.ravel(),
                "expected_random_sum": s.expected.ravel(), "expected_random_norm": s.expected_norm.ravel(),
                "theorem1": theorem1.ravel(), "ratio": s.ratio.ravel(), "theorem2_low": s.theorem2_low.ravel(),
                "theorem2_high": s.theorem2_high.ravel()}))
        return pd.concat(frames, ignore_index=True)


def _heads(array: np.ndarray, layer: int, head: int) -> np.ndarray:
    """(layers, heads, ...) -> (samples, ...): every head, or the one chosen."""
    if layer == ALL_LAYERS:
        return array.reshape(-1, *array.shape[2:])
    return array[layer, head][None]


def _median(values) -> float:
    return float(np.nanmedian(values))


def _said(value: int | None) -> str:
    return "not reached" if value is None else str(value)


def _temperature_index(temperature: float) -> int:
    return int(np.argmin(abs(np.array(analysis.TEMPERATURES) - temperature)))


# ---- entry point --------------------------------------------------------------------------------------------------


def run(source: Source, text: str | Sequence[int] | None = None, *, max_length: int = S.default("max_length"),
        windows: int = S.default("windows"), rows: int = S.default("rows"), vectors: str = S.default("vectors"),
        max_tokens: int | None = None, cut: Cut | None = None, progress: ProgressFn | None = None) -> CollapseResult:
    """Paper B's measures over context lengths doubling from 32 to max_length, on consecutive windows of the text.

    Args:
        text: a string or token ids; None: the built-in long document (analysis.builtin_text()).
        max_length: the longest context L (the window length).
        windows: consecutive, non-overlapping windows of the text per length, averaged (fewer when the text is short).
        rows: query positions analysed per window: the last ones, which see about L keys.
        vectors: the token vectors x_i: "values" (each head's value vectors) or "hidden" (the layer's input).
        max_tokens: the longest window one forward pass may take (default: the model's positions); max_length is
            lowered to it. `cut` (its max_tokens), when given, says it instead.
        progress: progress(fraction, message) before each unit.

    Raises:
        ValueError: a setting out of range, a text shorter than 32 tokens, or a layer the analysis cannot take
            (an explicit mask or softcapped logits).
    """
    max_length = S.check("max_length", max_length)
    windows, rows, vectors = S.check("windows", windows), S.check("rows", rows), S.check("vectors", vectors)
    model = source.model
    limit = (model.cut(max_tokens) if cut is None else cut).max_tokens
    longest = min(max_length, limit)
    given = text is not None
    text = analysis.builtin_text() if text is None else text if isinstance(text, str) else tuple(map(int, text))
    tokens = source.tokens(text, Cut(windows * longest))
    if len(tokens) < MIN_TOKENS:
        raise ValueError(f"The text has {len(tokens)} tokens; context collapse needs at least {MIN_TOKENS}: use a "
                         "longer text or the built-in document.")
    settings = analysis.Settings(max_length=longest, windows=windows, rows=rows, vectors=vectors)
    cut = [tuple(window[0].tolist()) for window in analysis.text_windows(tokens.as_tensor(), settings)]
    lengths = tuple(analysis.length_grid(len(cut[0])))
    step = progress_steps(progress, len(cut) * len(lengths))
    measured: dict[int, list[LengthSummary]] = {length: [] for length in lengths}
    for index, window in enumerate(cut):
        for length in lengths:
            step(index * len(lengths) + lengths.index(length),
                 f"Window {index + 1}/{len(cut)}, context length {length}")
            measured[length].append(source.unit(measure, window, length, rows, vectors, length == lengths[-1]))
    step(len(cut) * len(lengths), "Testing the critical N")
    summaries = tuple(analysis.average_windows(measured[length]) for length in lengths)
    critical = {}
    for reading in READINGS:
        found = [analysis.critical_for(summary, reading) for summary in summaries]
        critical[reading] = CriticalN(reading=reading, first=tuple(f[0] for f in found),
                                      stable=tuple(f[1] for f in found), p_values=tuple(f[2] for f in found))
    n_layers, n_heads = summaries[0].max_weight.shape
    return CollapseResult(
        meta=meta_for(model, tokens, max_length=max_length, windows=windows, rows=rows, vectors=vectors,
                      max_tokens=max_tokens if cut is None else limit, text="given" if given else "builtin"),
        text_source="given" if given else "builtin",
        text_tokens=tokens.n_text_tokens,
        windows=len(cut),
        window_tokens=len(cut[0]),
        longest=longest,
        rows=rows,
        vectors=vectors,
        n_layers=int(n_layers),
        n_heads=int(n_heads),
        lengths=lengths,
        summaries=summaries,
        critical=critical,
    )
