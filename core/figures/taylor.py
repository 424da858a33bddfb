"""Plotly figures for the softmax-vs-Taylor page. Pure functions: arrays in, a go.Figure out, nothing displayed.

Errors span many decades and are often above 1 on real models, so error axes are logarithmic; values that are not
finite (a sum denominator of exactly zero) cannot sit on a log axis and are left out of the line, and the figures say
how many were.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from attnscope.analyses.taylor import exp_truncation_error
from attnscope.figures.maps import escape

DENOMINATOR_LABELS = {  # kernels.DENOMINATORS -> what a reader sees
    "taylor": "Taylor sum (Σ Pₙ(s))",
    "softmax": "exact softmax (Σ eˢ)",
    "l2": "L2 norm of the numerator",
    "none": "visible-key count",
}
DENOMINATOR_COLOURS = {"taylor": "#d62728", "softmax": "#1f77b4", "l2": "#2ca02c", "none": "#9467bd"}
NEVER_COLOUR = "#444444"
TRUNCATION_AXIS = (-16, 12)  # log10 range of the truncation-error axis; order 10 at s = -60 is ~1e19, drawn off the top
_MARGIN = {"l": 10, "r": 10, "t": 50, "b": 10}


@dataclass
class Curve:
    label: str
    values: np.ndarray  # (O,) per order 0..N
    low: np.ndarray | None = None  # (O,) lower edge of a band (e.g. the 25th percentile over heads)
    high: np.ndarray | None = None
    colour: str | None = None


def _positive(values: np.ndarray) -> np.ndarray:
    """Values a log axis can show: non-finite and non-positive ones become gaps."""
    values = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(values) & (values > 0), values, np.nan)


def error_vs_order(curves: Sequence[Curve], *, title: str, tolerance: float | None = None,
                   y_title: str = "relative error ||O_n − O|| / ||O||") -> go.Figure:
    """Error against Taylor order, log y, one line per curve with an optional shaded band."""
    figure = go.Figure()
    gaps = 0
    for curve in curves:
        orders = np.arange(len(curve.values))
        colour = curve.colour
        if curve.low is not None and curve.high is not None:
            band_x = np.concatenate([orders, orders[::-1]])
            band_y = np.concatenate([_positive(curve.high), _positive(curve.low)[::-1]])
            figure.add_trace(go.Scatter(x=band_x, y=band_y, fill="toself", line={"width": 0}, opacity=0.18,
                                        fillcolor=colour, hoverinfo="skip", showlegend=False,
                                        legendgroup=curve.label))
        shown = _positive(curve.values)
        gaps += int(np.isnan(shown).sum())
        figure.add_trace(go.Scatter(x=orders, y=shown, mode="lines+markers", name=escape(curve.label),
                                    line={"color": colour}, legendgroup=curve.label,
                                    hovertemplate=f"{escape(curve.label)}<br>order %{{x}}<br>error %{{y:.3g}}"
                                                  "<extra></extra>"))
    if tolerance is not None:
        figure.add_hline(y=tolerance, line={"dash": "dot", "color": "grey"},
                         annotation_text=f"tolerance {tolerance:g}", annotation_position="bottom right")
    figure.add_hline(y=1.0, line={"dash": "dash", "color": "black", "width": 1},
                     annotation_text="error = 1 (as far off as the output itself)", annotation_position="top left")
    if gaps:
        title += f" ({gaps} non-finite points not drawn)"
    figure.update_layout(title=escape(title), height=440, margin=_MARGIN, hovermode="closest",
                         legend={"orientation": "h", "y": -0.2})
    figure.update_xaxes(title="Taylor order n", dtick=1)
    figure.update_yaxes(title=y_title, type="log", exponentformat="power")
    return figure


def histogram(values: np.ndarray, *, title: str, x_title: str, bins: int = 60) -> go.Figure:
    """A histogram of finite values (used for the per-row norms ||O_t|| that an L2 denominator discards)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    figure = go.Figure(go.Histogram(x=values, nbinsx=bins, marker={"color": DENOMINATOR_COLOURS["l2"]},
                                    hovertemplate="%{x}<br>%{y} rows<extra></extra>"))
    if values.size:
        median = float(np.median(values))
        figure.add_vline(x=median, line={"dash": "dash"}, annotation_text=f"median {median:.3g}")
    figure.update_layout(title=escape(title), height=360, margin=_MARGIN, bargap=0.02)
    figure.update_xaxes(title=x_title)
    figure.update_yaxes(title="query rows")
    return figure


def order_needed_heatmap(needed: np.ndarray, *, max_order: int, tolerance: float, error_at_max: np.ndarray,
                         logit_min: np.ndarray, logit_max: np.ndarray, title: str) -> go.Figure:
    """Layers x heads: the smallest order with error below `tolerance`; heads that never get there are dark.

    Args:
        needed: (L, H) int, -1 where no order up to max_order is good enough.
        error_at_max, logit_min, logit_max: (L, H) shown in the hover.
    """
    n_layers, n_heads = needed.shape
    reached = np.where(needed >= 0, needed, np.nan).astype(np.float64)
    never = np.where(needed < 0, 1.0, np.nan)
    custom = np.stack([error_at_max, logit_min, logit_max], -1)
    hover = ("layer %{y}, head %{x}<br>%{text}<br>error at order " + str(max_order) +
             ": %{customdata[0]:.3g}<br>logits %{customdata[1]:.1f} … %{customdata[2]:.1f}<extra></extra>")
    text = np.where(needed >= 0, np.char.add("order ", needed.astype(str)), f"never within {max_order}")
    figure = go.Figure()
    figure.add_trace(go.Heatmap(z=reached, colorscale="Viridis", zmin=0, zmax=max(max_order, 1), text=text,
                                customdata=custom, hovertemplate=hover, colorbar={"title": "order"},
                                hoverongaps=False, xgap=1, ygap=1))
    figure.add_trace(go.Heatmap(z=never, colorscale=[[0, NEVER_COLOUR], [1, NEVER_COLOUR]], showscale=False,
                                text=text, customdata=custom, hovertemplate=hover, hoverongaps=False, xgap=1, ygap=1))
    n_never = int((needed < 0).sum())
    figure.update_layout(
        title=escape(f"{title}: {n_never} of {needed.size} heads never below {tolerance:g} (dark)"),
        height=max(320, 70 + 20 * n_layers), margin=_MARGIN)
    figure.update_xaxes(title="head", dtick=1)
    figure.update_yaxes(title="layer", autorange="reversed", dtick=1 if n_layers <= 40 else None)
    return figure


def logit_histogram(counts: np.ndarray, edges: np.ndarray, *, orders: Sequence[int], clamp: tuple | None,
                    title: str) -> go.Figure:
    """Histogram of scaled logits (fraction per bin) with |P_n(x) − e^x| / e^x for each order on a log axis.

    The histogram is trimmed to the bins that hold logits; the truncation curves are drawn over the same range.
    """
    counts = np.asarray(counts, dtype=np.float64)
    held = np.nonzero(counts)[0]
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    if held.size == 0:
        figure.update_layout(title=escape(title + ": no visible logits"), height=420, margin=_MARGIN)
        return figure
    first, last = max(held[0] - 2, 0), min(held[-1] + 3, len(counts))
    centres = (edges[first:last] + edges[first + 1:last + 1]) / 2
    fraction = counts[first:last] / counts.sum()
    figure.add_trace(go.Bar(x=centres, y=fraction, width=edges[1] - edges[0], name="logits (fraction)",
                            marker={"color": "#8c8c8c"}, hovertemplate="logit %{x:.2f}<br>%{y:.2%}<extra></extra>"),
                     secondary_y=False)
    x = np.linspace(edges[first], edges[last], 400)
    colours = _order_colours(len(orders))
    for colour, order in zip(colours, orders):
        error = exp_truncation_error(x, order)
        figure.add_trace(go.Scatter(x=x, y=_positive(error), mode="lines", name=f"n={order}: |P_n(x)−eˣ|/eˣ",
                                    line={"color": colour}, hovertemplate=f"order {order}<br>logit %{{x:.2f}}<br>"
                                                                          "rel. error %{y:.3g}<extra></extra>"),
                         secondary_y=True)
    for bound in ([] if clamp is None else [b for b in clamp if b is not None]):
        figure.add_vline(x=bound, line={"dash": "dot", "color": "black"}, annotation_text=f"clamp {bound:g}")
    figure.update_layout(title=escape(title), height=440, margin=_MARGIN, bargap=0, legend={"orientation": "h"})
    figure.update_xaxes(title="scaled logit s = q·k / √d")
    figure.update_yaxes(title="fraction of logits", secondary_y=False)
    figure.update_yaxes(title="truncation error of exp (|Pₙ(x) − eˣ| / eˣ)", type="log", exponentformat="power",
                        range=list(TRUNCATION_AXIS), dtick=4, secondary_y=True)
    return figure


def _order_colours(n: int) -> list[str]:
    from plotly.colors import sample_colorscale

    return sample_colorscale("Plasma", [i / max(n - 1, 1) * 0.85 for i in range(n)])


def term_size_heatmap(term_mean: np.ndarray, dominant: np.ndarray, *, title: str) -> go.Figure:
    """Layers x orders: log10 of the mean |s^n / n!| over heads and logits, with each layer's largest term marked."""
    n_layers, n_orders = term_mean.shape
    values = np.log10(np.where(term_mean > 0, term_mean, np.nan))
    figure = go.Figure(go.Heatmap(z=values, colorscale="Magma", colorbar={"title": "log10 mean |sⁿ/n!|"},
                                  customdata=term_mean,
                                  hovertemplate="layer %{y}, order %{x}<br>mean |sⁿ/n!| = %{customdata:.3g}"
                                                "<extra></extra>"))
    figure.add_trace(go.Scatter(x=dominant, y=np.arange(n_layers), mode="markers", name="dominant order",
                                marker={"symbol": "x", "color": "cyan", "size": 9},
                                hovertemplate="layer %{y}: dominant order %{x}<extra></extra>"))
    figure.update_layout(title=escape(title), height=max(320, 70 + 18 * n_layers), margin=_MARGIN,
                         legend={"orientation": "h", "y": -0.08})
    figure.update_xaxes(title="order n", dtick=1)
    figure.update_yaxes(title="layer", autorange="reversed")
    return figure


def row_weights(logits: np.ndarray, softmax: np.ndarray, truncated: np.ndarray, *, tokens: Sequence[str], order: int,
                denominator_label: str, title: str) -> go.Figure:
    """One query's softmax weights and order-n weights against key position, with the logit in the hover."""
    positions = np.flatnonzero(np.isfinite(softmax))  # keys the query sees
    labels = np.asarray([escape(t) for t in tokens[: len(softmax)]], dtype=object)
    logits, softmax, truncated = logits[positions], softmax[positions], truncated[positions]
    custom = np.stack([labels[positions], logits], -1)
    hover = "key %{x}: %{customdata[0]}<br>logit %{customdata[1]:.2f}<br>weight %{y:.4g}<extra>%{fullData.name}</extra>"
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=positions, y=softmax, mode="markers+lines", name="softmax (the model)",
                                marker={"size": 5, "color": DENOMINATOR_COLOURS["softmax"]}, line={"width": 1},
                                customdata=custom, hovertemplate=hover))
    figure.add_trace(go.Scatter(x=positions, y=truncated, mode="markers", name=f"order {order}, {denominator_label}",
                                marker={"size": 6, "color": DENOMINATOR_COLOURS["taylor"], "symbol": "diamond"},
                                customdata=custom, hovertemplate=hover))
    figure.add_hline(y=0, line={"color": "black", "width": 1})
    figure.update_layout(title=escape(title), height=420, margin=_MARGIN, legend={"orientation": "h"})
    figure.update_xaxes(title="key position")
    figure.update_yaxes(title="weight")
    return figure


def denominator_health(negative: np.ndarray, nonpositive: np.ndarray, small: np.ndarray, *, title: str) -> go.Figure:
    """Per order: fraction of negative weights, and of rows whose sum denominator is <= 0 or nearly zero."""
    orders = np.arange(len(negative))
    figure = go.Figure()
    for values, name, colour in ((negative, "negative weights (of visible)", "#ff7f0e"),
                                 (small, "rows with sum denominator < 1e-2 × exact (or ≤ 0)", "#d62728"),
                                 (nonpositive, "rows with sum denominator ≤ 0", "#7f0000")):
        figure.add_trace(go.Scatter(x=orders, y=values, mode="lines+markers", name=name, line={"color": colour},
                                    hovertemplate="order %{x}<br>%{y:.1%}<extra></extra>"))
    figure.update_layout(title=escape(title), height=380, margin=_MARGIN, legend={"orientation": "h", "y": -0.25})
    figure.update_xaxes(title="Taylor order n", dtick=1)
    figure.update_yaxes(title="fraction", tickformat=".0%", range=[-0.02, 1.02])
    return figure


def loss_vs_order(orders: Sequence[int], losses: Sequence[float], *, references: dict[str, float],
                  title: str) -> go.Figure:
    """Next-token loss with Taylor-n attention in every layer, and horizontal lines for the references."""
    figure = go.Figure()
    shown = np.asarray(losses, dtype=np.float64)
    finite = np.isfinite(shown)
    figure.add_trace(go.Scatter(x=list(orders), y=np.where(finite, shown, np.nan), mode="lines+markers",
                                name="Taylor-n in every layer", line={"color": DENOMINATOR_COLOURS["taylor"]},
                                hovertemplate="order %{x}<br>loss %{y:.3f} nats<extra></extra>"))
    styles = [("solid", "top left"), ("dash", "bottom right"), ("dot", "top right"), ("dashdot", "bottom left")]
    for (label, value), (dash, where) in zip(references.items(), styles):  # equal losses must stay readable
        if np.isfinite(value):
            figure.add_hline(y=value, line={"dash": dash, "color": "black", "width": 1},
                             annotation_text=f"{escape(label)}: {value:.3f}", annotation_position=where)
    if not finite.all():
        bad = int((~finite).sum())
        title += f" ({bad} order{'s' if bad != 1 else ''} gave a non-finite loss)"
    figure.update_layout(title=escape(title), height=400, margin=_MARGIN)
    figure.update_xaxes(title="Taylor order n", dtick=1)
    figure.update_yaxes(title="next-token loss (nats)")
    return figure
