"""Softmax vs its Taylor expansion as a study: the units the Softmax-vs-Taylor page caches, and the result
attnscope.taylor returns (paper A: Mongaras & Larson, arXiv 2507.23632; the mathematics in attnscope.analyses.taylor).

Units (each cached on its own by the dashboard, each a module-level function of the Source and hashable arguments):
- layer_sweep: every order 0..N and every denominator for one layer's heads on the first n tokens;
- query_weights: one query's truncated weights beside its softmax weights (one layer, head, order, denominator);
- recurrent: orders 0-2 of one causal head run as RNNs against the parallel form;
- loss: the next-token loss with every attention layer replaced by one Substitute (one forward pass).

`run` plans them, reports progress between them and returns a TaylorResult: the ModelSweep (layers, heads, orders,
denominators), the probes of the chosen head, the losses asked for, and the settings. The result says what it found
(`findings`, paper claim beside measured value), draws the page's figures (`figures`) and tabulates (`to_frame`).
Nothing here assumes the series converges on a softmax-trained model: errors of order one and above, inf from a sum
denominator of zero and non-finite losses are reported as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from attnscope import settings as S
from attnscope.analyses import taylor as analysis
from attnscope.analyses.taylor import Clamp, ModelSweep, RecurrentCheck, RowWeights, Substitute
from attnscope.figures import taylor as figures
from attnscope.figures.taylor import DENOMINATOR_LABELS
from attnscope.kernels import DENOMINATORS
from attnscope.kernels.taylor import logit_bin_edges
from attnscope.studies.base import Finding, ProgressFn, Result, Source, meta_for, progress_steps
from attnscope.tokens import Cut

PAPER = "[Mongaras & Larson, arXiv 2507.23632](https://arxiv.org/abs/2507.23632)"
SECTIONS = ("error", "needed", "logits", "weights", "rnn", "loss")  # the page's tabs, in order
SCOPES = ("model", "layer", "head")  # what the error-vs-order figure summarises
RNN_TOKENS = (16, 32, 64, 128, 256)  # tokens the recurrences may run over (order 2 runs token by token in Python)
REFERENCES = (Substitute("model"), Substitute("softmax"), Substitute("elu+1"))  # beside every loss sweep
NO_LOSS = "Next-token loss needs a decoder (a causal language model) and at least two tokens."
HELP = {
    "intro": (
        f"exp(s) = Σₙ sⁿ/n!, and because (q·k)ⁿ = q⊗ⁿ·k⊗ⁿ each order is a linear RNN: softmax attention is an "
        f"infinite sum of RNNs, and linear attention is its first-order term ({PAPER}). The paper trains models with "
        "the truncation in place; here a model trained with softmax is evaluated with it, zero-shot, head by head on "
        "your text, so large errors are an honest answer, not a bug."
    ),
    "error": (
        "Each curve is the relative error ‖Oₙ − O‖ / ‖O‖ between the head's output with exp cut at order n and its "
        "softmax output, over all query rows (for the L2 denominator, against the L2-normalised softmax rows). "
        f"The paper ({PAPER}) reports that 10 orders nearly match softmax in models trained that way; a line that does "
        "not fall means the head's logits sit where the series about 0 cannot follow exp."
    ),
    "norms": (
        "An L2 denominator keeps only the direction of each output row; this is the length ‖Oₜ‖ of the softmax "
        f"output rows it throws away. A model trained with softmax relies on these lengths, which is why swapping in "
        f"the paper's L2 norm ({PAPER}) without retraining changes what every later layer sees."
    ),
    "needed": (
        "Each cell is the smallest order n whose error falls below the tolerance for that head; dark cells never get "
        f"there within the maximum order. Hover for the head's logit range: heads with logits far below zero are "
        f"the ones the truncated series ({PAPER}) cannot reproduce."
    ),
    "logits": (
        "Grey bars are the scaled logits q·k/√d of the layer's visible query-key pairs; the lines are the relative "
        "error of the order-n polynomial against exp at each logit value. Where the bars sit beyond the point a line "
        f"crosses 1, that order cannot reproduce exp for those pairs ({PAPER})."
    ),
    "terms": (
        "Each cell is the mean size of one term |sⁿ/n!| of the series over the layer's logits; the cross marks the "
        f"largest (the 'dominant order' of the paper's analysis, {PAPER}). A dominant order at or past the last one "
        "computed means the series has not started to shrink yet."
    ),
    "weights": (
        "Blue is the model's softmax weight on each key for the chosen query; red is the order-n weight Pₙ(s) "
        "divided by the chosen denominator. Odd orders make very negative logits into negative weights and even "
        f"orders into large positive ones, so the sum denominator can vanish or change sign ({PAPER})."
    ),
    "health": (
        "For this head and each order: the share of truncated weights below zero, and the share of query rows whose "
        "Taylor-sum denominator is at most zero or below 1% of the exact one. Those rows are where the 'taylor' "
        f"denominator divides by almost nothing, which is why the paper ({PAPER}) prefers norm-type denominators."
    ),
    "rnn": (
        "Orders 0, 1 and 2 run here as recurrent networks with explicit states S⁽ⁿ⁾ of d ⁿ × d_v numbers, token by "
        "token, and are compared with the parallel (matrix) form; order 1 is also compared with linear attention "
        f"φ(q)·Σφ(k)vᵀ with φ(x) = [1, √scale·x]. Agreement to rounding is the identity the paper ({PAPER}) builds on."
    ),
    "rnn_equation": (r"S^{(n)}_t = S^{(n)}_{t-1} + k_t^{\otimes n} v_t^\top,\quad z^{(n)}_t = z^{(n)}_{t-1} + "
                     r"k_t^{\otimes n},\quad o_t = \frac{\sum_n \mathrm{scale}^n (q_t^{\otimes n})^\top S^{(n)}_t / n!}"
                     r"{\sum_n \mathrm{scale}^n (q_t^{\otimes n})^\top z^{(n)}_t / n!}"),
    "loss": (
        "Every attention layer of the model is replaced by Taylor-n attention and the next-token loss on your text is "
        "measured, beside the model as trained, exact softmax written out (a check of the replacement machinery) and "
        f"elu(x)+1 linear attention. This is zero-shot: unlike the paper's models ({PAPER}) nothing was retrained."
    ),
    "rnn_tokens": "The order-2 state has d² × d_v numbers and is updated token by token in Python.",
}


def clamp_bounds(clamp: str | None, value: float) -> Clamp:
    """The settings' clamp ("none", "upper", "both"; older links' labels are read too) and its value c as the
    analysis takes it: None, c (clamp from above) or (−|c|, |c|)."""
    mode = "none" if clamp is None else S.check("clamp", clamp)
    if mode == "upper":
        return float(value)
    if mode == "both":
        return (-abs(float(value)), abs(float(value)))
    return None


def clamp_label(clamp: Clamp) -> str:
    if clamp is None:
        return "no clamp"
    if isinstance(clamp, tuple):
        return f"logits clamped to [{clamp[0]:g}, {clamp[1]:g}]"
    return f"logits clamped above at {clamp:g}"


# ---- units --------------------------------------------------------------------------------------------------------


def layer_sweep(source: Source, text, cut: Cut, layer: int, n_tokens: int, max_order: int,
                clamp: Clamp) -> analysis.LayerSweep:
    """Orders 0..max_order, every denominator, for one layer's heads on the first n_tokens tokens."""
    captured = source.capture(text, cut).layer(layer).prefix(n_tokens)
    return analysis.sweep_layer(captured, max_order=max_order, clamp=clamp)


def query_weights(source: Source, text, cut: Cut, layer: int, n_tokens: int, head: int, query: int, order: int,
                  denominator: str, clamp: Clamp) -> RowWeights:
    captured = source.capture(text, cut).layer(layer).prefix(n_tokens)
    return analysis.row_weights(captured, head=head, query=query, order=order, denominator=denominator, clamp=clamp)


def recurrent(source: Source, text, cut: Cut, layer: int, head: int, n_tokens: int) -> RecurrentCheck:
    return analysis.recurrent_check(source.capture(text, cut).layer(layer), head=head, n_tokens=n_tokens)


def loss(source: Source, text, cut: Cut, n_tokens: int, substitute: Substitute) -> float:
    """Mean next-token loss (nats) on the first n_tokens tokens with every attention layer replaced."""
    ids = source.tokens(text, cut).as_tensor()[:, :n_tokens]
    with source.turn():
        return analysis.substitution_loss(source.model.module, ids, substitute)


# ---- the result ---------------------------------------------------------------------------------------------------


@dataclass
class QueryProbe:
    """One query's weights at one order and denominator (the page's "One head's weights")."""

    query: int
    order: int
    denominator: str
    weights: RowWeights


@dataclass
class Losses:
    """Zero-shot next-token losses with every attention layer replaced."""

    orders: tuple[int, ...]  # Taylor orders 1..N
    denominators: tuple[str, ...]  # one loss curve per denominator
    taylor: np.ndarray  # (len(denominators), len(orders)) nats; non-finite where the replacement's output was
    references: dict[str, float]  # Substitute label -> nats: the model as trained, exact softmax, elu(x)+1


@dataclass(repr=False)  # Result's short repr
class TaylorResult(Result):
    """Every head's order-n truncation of exp against its softmax output, with the chosen head's probes."""

    kind = "taylor"
    title = "attnscope: softmax vs Taylor"

    meta: dict
    tokens: tuple[str, ...]  # the analysed tokens (the first n_tokens of the text)
    model_kind: str  # "decoder" or "encoder"
    precision: str  # how the sweep was computed
    vocab_size: int | None  # for the uniform-guess loss log V
    max_order: int
    clamp: Clamp  # None, an upper bound, or (low, high)
    tolerance: float  # the error a head must get below for the order-needed map
    sweep: ModelSweep  # arrays (L, H, O) over layers, heads, orders 0..max_order
    layer: int  # the head the probes below and the one-head figures follow
    head: int
    row: QueryProbe
    recurrent: RecurrentCheck | None  # None for encoders (the recurrence runs left to right)
    losses: Losses | None  # None unless asked for

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def shape(self) -> tuple[int, int]:
        return self.sweep.logit_min.shape

    @property
    def can_measure_loss(self) -> bool:
        """Next-token loss needs a decoder and at least two tokens."""
        return self.model_kind == "decoder" and self.n_tokens >= 2

    def summary(self) -> str:
        n_layers, n_heads = self.shape
        return (f"{self.n_tokens} tokens · {n_layers} layers × {n_heads} heads · orders 0–{self.max_order} · "
                f"{clamp_label(self.clamp)} · {self.precision}")

    # -- findings --

    def findings(self, section: str | None = None) -> list[Finding]:
        """Paper claim beside measured value, in the page's order; `section` (one of SECTIONS) keeps one tab's."""
        if section is not None and section not in SECTIONS:
            raise ValueError(f"Unknown section {section!r}; use one of {', '.join(SECTIONS)}.")
        made = {"error": self._error_findings, "needed": self._needed_findings, "logits": self._logit_findings,
                "weights": self._weight_findings, "rnn": self._rnn_findings, "loss": self._loss_findings}
        return [item for name in SECTIONS if section in (None, name) for item in made[name]()]

    def _error_findings(self) -> list[Finding]:
        sweep, n_heads_all, top = self.sweep, self.sweep.logit_min.size, self.max_order
        medians = ", ".join(f"{_number(np.median(sweep.error[name][..., -1]))} ({DENOMINATOR_LABELS[name]})"
                            for name in DENOMINATORS)
        linear = _number(np.median(sweep.error["taylor"][..., 1]))
        worst = np.unravel_index(np.argmin(sweep.logit_min), sweep.logit_min.shape)
        worst_errors = ", ".join(f"{_number(sweep.error[name][worst][-1])} ({DENOMINATOR_LABELS[name]})"
                                 for name in DENOMINATORS)
        truncation = {x: float(analysis.exp_truncation_error(np.array([x]), top)[0]) for x in (1.0, 5.0, -5.0)}
        norms = self.sweep.target_norm
        low, median, high = np.quantile(norms[np.isfinite(norms)], [0.25, 0.5, 0.75])
        return [
            Finding("Error vs order",
                    f"Zero-shot on this model, the median over the {n_heads_all} heads of ‖Oₙ − O‖ / ‖O‖ at order "
                    f"{top} is {medians}; at order 1 with the Taylor-sum denominator (linear attention) it is "
                    f"{linear}.",
                    f"Linear attention is the first-order term, and orders up to n = 10 nearly match softmax in models "
                    f"trained with the truncation in place ({PAPER})."),
            Finding("Heads by their most negative logit",
                    f"Scaled logits here span {sweep.logit_min.min():.1f} to {sweep.logit_max.max():.1f}; "
                    f"{int((sweep.logit_min < -5).sum())} of {n_heads_all} heads see a logit below −5. The most "
                    f"negative is in layer {worst[0]}, head {worst[1]}, whose error at order {top} is {worst_errors}.",
                    f"The series about 0 follows exp only near 0: order {top} is off by {truncation[1.0]:.1e} at "
                    f"s = 1, {truncation[5.0]:.1e} at s = 5 and {truncation[-5.0]:.1e} at s = −5, relative to exp."),
            Finding("What an L2 denominator discards",
                    f"The softmax output rows' lengths ‖Oₜ‖, which an L2 denominator throws away, have median "
                    f"{median:.3g} here (25th–75th percentile {low:.3g}–{high:.3g}, all heads); a model trained with "
                    "softmax relies on them.",
                    f"An L2-norm denominator matches softmax's loss curves in models trained with it ({PAPER})."),
        ]

    def _needed_findings(self) -> list[Finding]:
        total = self.sweep.logit_min.size
        parts = []
        for name in DENOMINATORS:
            needed = analysis.order_needed(self.sweep.error[name], self.tolerance)
            reached = needed[needed >= 0]
            parts.append(f"{DENOMINATOR_LABELS[name]}: {reached.size} of {total} heads"
                         + (f" (median order {np.median(reached):g})" if reached.size else ""))
        return [Finding("Order needed",
                        f"Heads whose error falls below {self.tolerance:g} within order {self.max_order}: "
                        + "; ".join(parts) + ".",
                        f"Orders up to n = 10 nearly match softmax in models trained with the truncation ({PAPER}).")]

    def _logit_findings(self) -> list[Finding]:
        dominant = analysis.dominant_order(self.sweep.term_mean)
        unfinished = int((dominant >= self.max_order).sum())
        return [Finding("Dominant order per layer",
                        f"The largest mean term |sⁿ/n!| per layer is order {', '.join(map(str, dominant.tolist()))} "
                        f"(layers 0–{len(dominant) - 1}); in {unfinished} of {len(dominant)} layers it is the last "
                        f"order computed ({self.max_order}), so the series has not started to shrink there.",
                        "The paper's analysis plots, per layer, the order whose term |sⁿ/n!| is largest on average, "
                        f"the dominant Taylor order ({PAPER}).")]

    def _weight_findings(self) -> list[Finding]:
        sweep, layer, head, probe = self.sweep, self.layer, self.head, self.row
        negative = sweep.negative_weights.mean((0, 1))  # (O,) mean over heads
        nonpositive = sweep.nonpositive_denominator.mean((0, 1))
        odd, even = slice(1, None, 2), slice(0, None, 2)
        row = probe.weights
        return [
            Finding(f"One query's weights (layer {layer}, head {head}, query {probe.query}, order {probe.order}, "
                    f"{DENOMINATOR_LABELS[probe.denominator]})",
                    f"Denominator of this row: {row.denominator:.4g}. Negative weights in this row: "
                    f"{int(np.nansum(row.truncated < 0))} of {int(np.isfinite(row.truncated).sum())}."),
            Finding("Denominator health",
                    f"Mean over all heads, at the odd orders up to {negative[odd].max():.1%} of the visible truncated "
                    f"weights are negative and up to {nonpositive[odd].max():.1%} of query rows have a Taylor-sum "
                    f"denominator ≤ 0; at the even orders {negative[even].max():.1%} and "
                    f"{nonpositive[even].max():.1%}. Layer {layer}, head {head} at order {self.max_order}: "
                    f"{sweep.negative_weights[layer, head, -1]:.1%} negative weights, "
                    f"{sweep.nonpositive_denominator[layer, head, -1]:.1%} of rows with a sum denominator ≤ 0, "
                    f"{sweep.small_denominator[layer, head, -1]:.1%} below 1% of the exact one.",
                    "Odd orders turn very negative logits into negative weights, so a sum denominator can approach "
                    f"zero or change sign; that is why norm-type denominators are stable ({PAPER})."),
        ]

    def _rnn_findings(self) -> list[Finding]:
        check = self.recurrent
        if check is None:
            return []
        differences = ", ".join(f"{d:.2e}" for d in check.max_difference)
        return [Finding("The recurrent form",
                        f"Orders 0, 1, 2 as RNNs against the parallel form: max difference {differences} (outputs up "
                        f"to {max(check.output_scale):.3g}). Order 1 against linear attention with φ(x) = [1, "
                        f"√scale·x] on the first {check.n_tokens} tokens of layer {self.layer}, head {self.head}: max "
                        f"difference **{check.linear_difference:.2e}** (fp64).",
                        "Each order n is a linear RNN whose state holds dⁿ × d_v numbers; the recurrent and parallel "
                        f"forms are the same computation ({PAPER}).")]

    def _loss_findings(self) -> list[Finding]:
        if self.losses is None:
            return []
        references = self.losses.references
        model, control, linear = (references[s.label] for s in REFERENCES)
        uniform = f"; a uniform guess costs {np.log(self.vocab_size):.3f}" if self.vocab_size else ""
        found = []
        for index, name in enumerate(self.losses.denominators):
            values = self.losses.taylor[index]
            finite = np.isfinite(values)
            if finite.any():
                best = int(np.nanargmin(np.where(finite, values, np.nan)))
                curve = (f"Taylor n = 1–{self.losses.orders[-1]}: lowest {values[best]:.3f} at n = "
                         f"{self.losses.orders[best]}, {values[-1]:.3f} at n = {self.losses.orders[-1]}")
            else:
                curve = f"Taylor n = 1–{self.losses.orders[-1]}: no finite loss"
            if not finite.all():
                curve += f" ({int((~finite).sum())} non-finite)"
            found.append(Finding(
                f"Zero-shot loss, {DENOMINATOR_LABELS[name]}",
                f"Next-token loss in nats with every layer replaced ({clamp_label(self.clamp)}): the model as trained "
                f"{model:.3f}, exact softmax written out {control:.3f} (the replacement's control), elu(x)+1 linear "
                f"attention {linear:.3f}, {curve}{uniform}.",
                "With the L2-norm denominator the loss matches softmax, and orders up to n = 10 nearly match it and "
                f"beat linear-attention variants, in models trained that way ({PAPER})."))
        n_layers = self.shape[0]
        found.append(Finding("Zero-shot", f"Zero-shot: the model was trained with softmax and is evaluated with the "
                                          f"replacement in all {n_layers} layers at once; the paper's models were "
                                          "trained with the approximation in place."))
        return found

    # -- tables --

    def heads_frame(self) -> pd.DataFrame:
        """One row per head, most negative logit first: logit range and median, and the error at the top order."""
        sweep = self.sweep
        n_layers, n_heads = self.shape
        median = analysis.logit_quantiles(sweep.logit_hist, [0.5])[..., 0]
        rows = [{"layer": layer, "head": head, "min logit": float(sweep.logit_min[layer, head]),
                 "median logit": float(median[layer, head]), "max logit": float(sweep.logit_max[layer, head]),
                 **{f"error n={self.max_order}, {name}": float(sweep.error[name][layer, head, -1])
                    for name in DENOMINATORS}}
                for layer in range(n_layers) for head in range(n_heads)]
        return pd.DataFrame(rows).sort_values("min logit")

    def recurrent_frame(self) -> pd.DataFrame | None:
        check = self.recurrent
        if check is None:
            return None
        return pd.DataFrame({"order n": [0, 1, 2], "state size d^n × d_v": check.state_entries,
                             "max |recurrent − parallel|": check.max_difference, "max |output|": check.output_scale})

    def loss_frame(self, denominator: str | None = None) -> pd.DataFrame | None:
        """The references and Taylor n = 1..N for one denominator (default: the first measured)."""
        if self.losses is None:
            return None
        index = self.losses.denominators.index(denominator or self.losses.denominators[0])
        model = self.losses.references[REFERENCES[0].label]
        values = [*self.losses.references.items(),
                  *((Substitute("taylor", order=n).label, float(v))
                    for n, v in zip(self.losses.orders, self.losses.taylor[index]))]
        return pd.DataFrame([{"attention": label, "loss (nats)": value,
                              "perplexity": float(np.exp(value)) if np.isfinite(value) else np.inf,
                              "Δ loss vs the model": value - model} for label, value in values])

    def to_frame(self) -> pd.DataFrame:
        """Long table: one row per (layer, head, order, denominator) with the error and the order's diagnostics."""
        sweep = self.sweep
        n_layers, n_heads = self.shape
        n_orders = self.max_order + 1
        layer, head, order = (a.ravel() for a in np.meshgrid(np.arange(n_layers), np.arange(n_heads),
                                                             np.arange(n_orders), indexing="ij"))
        per_order = {"negative_weights": sweep.negative_weights, "nonpositive_denominator":
                     sweep.nonpositive_denominator, "small_denominator": sweep.small_denominator,
                     "term_mean": sweep.term_mean}
        frames = [pd.DataFrame({"layer": layer, "head": head, "order": order, "denominator": name,
                                "error": sweep.error[name].ravel(),
                                **{key: values.ravel() for key, values in per_order.items()},
                                "logit_min": sweep.logit_min[layer, head], "logit_max": sweep.logit_max[layer, head]})
                  for name in DENOMINATORS]
        return pd.concat(frames, ignore_index=True)

    # -- figures --

    def figures(self, *, scope: str = "model", layer: int | None = None, head: int | None = None,
                needed_denominator: str = "softmax", hist_layer: int | None = None,
                hist_orders: Sequence[int] = (1, 2, 4, 10)) -> dict[str, object]:
        """The page's figures, name -> plotly figure.

        Args:
            scope: "model", "layer" or "head": what the error-vs-order curves and the row-norm histogram cover.
            layer, head: for scope "layer"/"head" and the denominator-health figure (default: the probed head).
            needed_denominator: the denominator of the order-needed map.
            hist_layer: the layer of the logit histogram (None: all layers).
            hist_orders: orders whose truncation error is drawn over the logit histogram.
        """
        if scope not in SCOPES:
            raise ValueError(f"Unknown scope {scope!r}; use one of {', '.join(SCOPES)}.")
        sweep = self.sweep
        layer = self.layer if layer is None else layer
        head = self.head if head is None else head
        where = {"model": "all heads", "layer": f"layer {layer}", "head": f"layer {layer}, head {head}"}[scope]
        norms = {"model": sweep.target_norm, "layer": sweep.target_norm[layer],
                 "head": sweep.target_norm[layer, head]}[scope]
        curves = []
        for name in DENOMINATORS:
            error = sweep.error[name]
            if scope == "head":
                curves.append(figures.Curve(DENOMINATOR_LABELS[name], error[layer, head],
                                            colour=figures.DENOMINATOR_COLOURS[name]))
                continue
            spread = analysis.spread_over_heads(error if scope == "model" else error[layer])
            curves.append(figures.Curve(f"{DENOMINATOR_LABELS[name]}: median", spread["median"], low=spread["q25"],
                                        high=spread["q75"], colour=figures.DENOMINATOR_COLOURS[name]))
        spread_note = "" if scope == "head" else " (median over heads, band: 25th–75th percentile)"
        needed = analysis.order_needed(sweep.error[needed_denominator], self.tolerance)
        counts = sweep.logit_hist.sum((0, 1)) if hist_layer is None else sweep.logit_hist[hist_layer].sum(0)
        hist_where = "all layers" if hist_layer is None else f"layer {hist_layer}"
        bounds = None if self.clamp is None else (self.clamp if isinstance(self.clamp, tuple) else (None, self.clamp))
        row = self.row
        row_denominator = ("exact softmax (an L2 denominator normalises outputs, not weights)"
                           if row.denominator == "l2" else DENOMINATOR_LABELS[row.denominator])
        out = {
            "error-vs-order": figures.error_vs_order(curves, title=f"Error vs order, {where}{spread_note}"),
            "softmax-output-row-norms": figures.histogram(norms, title=f"‖softmax output row‖, {where}",
                                                          x_title="‖Oₜ‖"),
            "order-needed": figures.order_needed_heatmap(
                needed, max_order=self.max_order, tolerance=self.tolerance,
                error_at_max=sweep.error[needed_denominator][..., -1], logit_min=sweep.logit_min,
                logit_max=sweep.logit_max,
                title=f"Order needed for error < {self.tolerance:g}, {DENOMINATOR_LABELS[needed_denominator]}"),
            "logit-histogram": figures.logit_histogram(
                counts, logit_bin_edges().numpy(), orders=sorted(hist_orders), clamp=bounds,
                title=f"Scaled logits, {hist_where}, and where each order fails"),
            "term-sizes": figures.term_size_heatmap(sweep.term_mean.mean(1), analysis.dominant_order(sweep.term_mean),
                                                    title="Mean size of each term |sⁿ/n!| per layer"),
            "one-query-weights": figures.row_weights(
                row.weights.logits, row.weights.softmax, row.weights.truncated, tokens=self.tokens, order=row.order,
                denominator_label=f"÷ {row_denominator}",
                title=f"Layer {self.layer}, head {self.head}, query {row.query}: weights at order {row.order}"),
            "denominator-health": figures.denominator_health(
                sweep.negative_weights[layer, head], sweep.nonpositive_denominator[layer, head],
                sweep.small_denominator[layer, head],
                title=f"Layer {layer}, head {head}: weights and sum denominators"),
        }
        if self.losses is not None:
            references = dict(self.losses.references)
            if self.vocab_size:
                references["uniform guess, log V"] = float(np.log(self.vocab_size))
            for index, name in enumerate(self.losses.denominators):
                key = "zero-shot-loss" if index == 0 else f"zero-shot-loss-{name}"
                out[key] = figures.loss_vs_order(
                    self.losses.orders, list(self.losses.taylor[index]), references=references,
                    title=f"Next-token loss with every layer replaced, {DENOMINATOR_LABELS[name]}, "
                          f"{clamp_label(self.clamp)} (zero-shot)")
        return out


def _number(value: float) -> str:
    return f"{value:.3g}" if np.isfinite(value) else "not finite"


# ---- entry point --------------------------------------------------------------------------------------------------


def run(source: Source, text, *, max_order: int = S.default("max_order"), n_tokens: int = S.default("n_tokens"),
        clamp: str | None = S.default("clamp"), clamp_value: float = S.default("clamp_value"),
        tolerance: float = S.default("tolerance"), taylor_layer: int = S.default("taylor_layer"),
        taylor_head: int = S.default("taylor_head"), taylor_order: int = S.default("taylor_order"),
        query: int | None = None, row_denominator: str = "taylor", rnn_tokens: int = 64,
        losses: Sequence[str] = (), max_tokens: int | None = None, keep: str = "start", cut: Cut | None = None,
        progress: ProgressFn | None = None) -> TaylorResult:
    """Every head's order-0..max_order truncation of exp against its softmax output, every denominator.

    Args:
        text: a string, or token ids.
        max_order: the highest order N (1..20).
        n_tokens: decoders analyse their first n_tokens tokens (exact under the causal mask); encoders all of them.
        clamp, clamp_value: "none", "upper" (clamp scaled logits at c from above, as the paper's code) or "both"
            ([−c, c]) before the series is taken; the target is always the model's unclamped softmax.
        tolerance: the error a head must get below for the order-needed map and finding.
        taylor_layer, taylor_head: the head of the one-head probes and figures.
        taylor_order: the order of the one-query probe (at most max_order; larger values are taken as max_order).
        query: the query token of the one-query probe (default: the last analysed token, which sees them all).
        row_denominator: the denominator of the one-query probe (one of kernels.DENOMINATORS).
        rnn_tokens: tokens the order 0-2 recurrences run over (decoders only).
        losses: denominators whose zero-shot loss curve (Taylor n = 1..N in every layer, plus the model, exact softmax
            and elu(x)+1 once) is measured: N + 3 forward passes for the first, N more for each other. Decoders only.
        max_tokens, keep: how much of a long text is read (see attnscope.models.Model.cut), unless `cut` says.
        progress: progress(fraction, message) after each unit.

    Raises:
        ValueError: a setting out of range, losses asked of an encoder, or a layer the analysis cannot take (an
            explicit mask or softcapped logits), naming the layer.
    """
    text = text if isinstance(text, str) else tuple(int(i) for i in text)
    max_order = S.check("max_order", max_order)
    S.check("clamp_value", clamp_value)
    bounds = clamp_bounds(clamp, clamp_value)
    tolerance = float(tolerance)
    if not tolerance > 0:
        raise ValueError(f"tolerance must be a positive number; got {tolerance!r}.")
    losses = tuple(losses)
    for name in (row_denominator, *losses):
        if name not in DENOMINATORS:
            raise ValueError(f"Unknown denominator {name!r}; use one of {', '.join(DENOMINATORS)}.")
    model = source.model
    cut = model.cut(max_tokens, keep) if cut is None else cut
    tokens = source.tokens(text, cut)
    decoder = model.kind == "decoder"
    n = min(int(n_tokens), len(tokens)) if decoder else len(tokens)
    n_layers, n_heads = model.info["n_layers"], model.info["n_heads"]
    for name, value, upper in (("n_tokens", n, len(tokens)), ("taylor_layer", taylor_layer, n_layers - 1),
                               ("taylor_head", taylor_head, n_heads - 1), ("rnn_tokens", rnn_tokens, None)):
        if value < (1 if name in ("n_tokens", "rnn_tokens") else 0) or (upper is not None and value > upper):
            raise ValueError(f"{name}={value} is out of range for this model and text.")
    order = max(0, min(int(taylor_order), max_order))
    query = n - 1 if query is None else int(query)
    if not 0 <= query < n:
        raise ValueError(f"query={query} is outside the {n} analysed tokens (0..{n - 1}).")
    if losses and (not decoder or n < 2):
        raise ValueError(NO_LOSS)

    substitutes = [*REFERENCES] if losses else []
    substitutes += [Substitute("taylor", order=k, denominator=name, clamp=bounds)
                    for name in losses for k in range(1, max_order + 1)]
    step = progress_steps(progress, n_layers + 1 + decoder + len(substitutes))
    layers = []
    for index in range(n_layers):
        try:
            layers.append(source.unit(layer_sweep, text, cut, index, n, max_order, bounds))
        except ValueError as error:
            raise ValueError(f"Layer {index}: {error}") from None
        step(index + 1, f"Orders 0–{max_order} for every head: layer {index + 1}/{n_layers}")
    row = source.unit(query_weights, text, cut, taylor_layer, n, taylor_head, query, order, row_denominator, bounds)
    step(n_layers + 1, f"Query {query}'s weights at order {order}")
    check = None
    if decoder:
        check = source.unit(recurrent, text, cut, taylor_layer, taylor_head, int(rnn_tokens))
        step(n_layers + 2, "Running the recurrences")
    measured = []
    for index, substitute in enumerate(substitutes):
        measured.append(source.unit(loss, text, cut, n, substitute))
        step(n_layers + 2 + decoder + index,
             f"Forward pass {index + 1}/{len(substitutes)}: {substitute.label}")
    loss_result = None
    if losses:
        loss_result = Losses(orders=tuple(range(1, max_order + 1)), denominators=losses,
                             taylor=np.array(measured[len(REFERENCES):], dtype=np.float64).reshape(len(losses), -1),
                             references={s.label: measured[i] for i, s in enumerate(REFERENCES)})
    device = next(model.module.parameters()).device
    return TaylorResult(
        meta=meta_for(model, tokens, max_tokens=cut.max_tokens, keep=cut.keep, max_order=max_order, n_tokens=n,
                      clamp="none" if clamp is None else S.check("clamp", clamp), clamp_value=float(clamp_value),
                      tolerance=tolerance, taylor_layer=taylor_layer, taylor_head=taylor_head, taylor_order=order,
                      query=query, row_denominator=row_denominator, rnn_tokens=int(rnn_tokens), losses=losses),
        tokens=tokens.strings[:n],
        model_kind=model.kind,
        precision="fp64 on CPU" if device.type == "cpu" else "Triton fp32 on GPU",
        vocab_size=getattr(model.module.config, "vocab_size", None),
        max_order=max_order,
        clamp=bounds,
        tolerance=tolerance,
        sweep=ModelSweep.stack(layers),
        layer=taylor_layer,
        head=taylor_head,
        row=QueryProbe(query=query, order=order, denominator=row_denominator, weights=row),
        recurrent=check,
        losses=loss_result,
    )
