"""Plotly figures for the context-collapse page (paper B). Pure functions: arrays in, a go.Figure out.

Lengths are on log axes. Where a figure aggregates heads it draws the median and the 25th-75th percentile band over
every (layer, head); where it follows one head it draws that head alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from attnscope.figures.maps import escape

MEASURED = "#1f77b4"
SECOND = "#ff7f0e"
THEORY = "#2ca02c"
RANDOM = "#9467bd"
_MARGIN = {"l": 10, "r": 10, "t": 60, "b": 10}


def _quartiles(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """values (n_x, samples) -> median, q25, q75 per x."""
    values = np.asarray(values, dtype=np.float64)
    return tuple(np.nanquantile(values, q, axis=1) for q in (0.5, 0.25, 0.75))


def _band(figure, x, values, *, name: str, colour: str, row=None, col=None, dash: str | None = None) -> None:
    """Median line with a 25-75% band; one column of `values` per sample (heads); a single sample: just the line."""
    values = np.asarray(values, dtype=np.float64).reshape(len(x), -1)
    where = {} if row is None else {"row": row, "col": col}
    if values.shape[1] == 1:
        figure.add_trace(go.Scatter(x=x, y=values[:, 0], mode="lines+markers", name=escape(name),
                                    line={"color": colour, "dash": dash}), **where)
        return
    median, low, high = _quartiles(values)
    figure.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]), y=np.concatenate([high, low[::-1]]), fill="toself",
                                fillcolor=colour, opacity=0.18, line={"width": 0}, hoverinfo="skip",
                                showlegend=False, legendgroup=name), **where)
    figure.add_trace(go.Scatter(x=x, y=median, mode="lines+markers", name=escape(name) + " (median)",
                                line={"color": colour, "dash": dash}, legendgroup=name), **where)


def _line(figure, x, y, *, name: str, colour: str = "black", dash: str = "dash", row=None, col=None) -> None:
    where = {} if row is None else {"row": row, "col": col}
    figure.add_trace(go.Scatter(x=x, y=y, mode="lines", name=escape(name), line={"color": colour, "dash": dash,
                                                                                  "width": 1.5}), **where)


def vanishing(lengths: Sequence[int], max_weight: np.ndarray, entropy: np.ndarray, sink: np.ndarray,
              band_low: np.ndarray | None, band_high: np.ndarray | None, *, title: str) -> go.Figure:
    """Max weight (with 1/L and, when given, the Corollary 1 band), entropy (with log L) and sink mass against L.

    Every array is (len(lengths), samples): samples are heads, one head, or prompts."""
    x = np.asarray(lengths, dtype=np.float64)
    figure = make_subplots(rows=1, cols=3, subplot_titles=("max weight", "entropy (nats)", "weight on token 0"))
    _band(figure, x, max_weight, name="max weight", colour=MEASURED, row=1, col=1)
    _line(figure, x, 1 / x, name="1/L (uniform)", row=1, col=1)
    if band_low is not None and band_high is not None:
        band_low, band_high = (np.nanmedian(np.asarray(b).reshape(len(x), -1), 1) for b in (band_low, band_high))
        _line(figure, x, np.minimum(band_high, 1.0), name="Corollary 1 upper e^{2Δ}/L (capped at 1)",
              colour=THEORY, dash="dot", row=1, col=1)
        _line(figure, x, band_low, name="Corollary 1 lower e^{-2Δ}/L", colour=THEORY, dash="dashdot", row=1, col=1)
    _band(figure, x, entropy, name="entropy", colour=SECOND, row=1, col=2)
    _line(figure, x, np.log(x), name="log L (uniform)", row=1, col=2)
    _band(figure, x, sink, name="sink mass", colour=RANDOM, row=1, col=3)
    figure.update_xaxes(type="log", title="context length L")
    lowest = np.nanmin(np.asarray(max_weight)) if np.size(max_weight) else 1e-3
    figure.update_yaxes(type="log", exponentformat="power", row=1, col=1,
                        range=[np.log10(max(min(1 / x.max(), lowest) / 3, 1e-12)), 0.05])
    figure.update_yaxes(range=[0, 1], row=1, col=3)
    figure.update_layout(title=escape(title), height=430, margin=_MARGIN, legend={"orientation": "h", "y": -0.25})
    return figure


def distance_vs_length(lengths: Sequence[int], d_sum: np.ndarray, d_norm: np.ndarray, expected: np.ndarray,
                       expected_norm: np.ndarray, bound: np.ndarray, *, n: int, title: str) -> go.Figure:
    """Fig. 2a: at fixed N, both readings of the distance, the random-subset expectation and the Theorem 1 bound."""
    x = np.asarray(lengths, dtype=np.float64)
    figure = go.Figure()
    _band(figure, x, d_sum, name=f"d_sum = Σ‖αᵢxᵢ − s‖ (N={n})", colour=MEASURED)
    _band(figure, x, d_norm, name=f"d_norm = ‖Σαᵢxᵢ − s‖ (N={n})", colour=SECOND)
    _band(figure, x, expected, name="random-subset expectation, summed", colour=RANDOM, dash="dot")
    _band(figure, x, expected_norm, name="random-subset expectation, norm", colour=RANDOM, dash="dashdot")
    _band(figure, x, bound, name="Theorem 1 bound (summed reading)", colour=THEORY, dash="dash")
    figure.update_xaxes(type="log", title="context length L")
    figure.update_yaxes(type="log", exponentformat="power", title="distance")
    figure.update_layout(title=escape(title), height=440, margin=_MARGIN, legend={"orientation": "h", "y": -0.2})
    return figure


def distance_vs_n(n_values: Sequence[int], d_sum: np.ndarray, d_norm: np.ndarray, expected: np.ndarray,
                  expected_norm: np.ndarray, bound_ns: Sequence[int], bound: np.ndarray, *, title: str) -> go.Figure:
    """Fig. 2b: at fixed L, distance against the selected-set size N.

    Arrays are (len(n_values), samples); bound is (len(bound_ns), samples)."""
    x = np.asarray(n_values, dtype=np.float64)
    figure = go.Figure()
    _band(figure, x, d_sum, name="d_sum", colour=MEASURED)
    _band(figure, x, d_norm, name="d_norm", colour=SECOND)
    _band(figure, x, expected, name="random-subset expectation, summed", colour=RANDOM, dash="dot")
    _band(figure, x, expected_norm, name="random-subset expectation, norm", colour=RANDOM, dash="dashdot")
    if len(bound_ns):
        _band(figure, np.asarray(bound_ns, dtype=np.float64), bound, name="Theorem 1 bound (summed reading)",
              colour=THEORY, dash="dash")
    figure.update_xaxes(type="log", title="selected tokens N")
    figure.update_yaxes(type="log", exponentformat="power", title="distance")
    figure.update_layout(title=escape(title), height=420, margin=_MARGIN, legend={"orientation": "h", "y": -0.2})
    return figure


def critical_n(lengths: Sequence[int], readings: dict[str, Sequence[int | None]], *, largest_n: Sequence[int],
               fraction: float, title: str) -> go.Figure:
    """Fig. 2c: critical N against L for each reading, the fraction x L reference line, and the largest N measured
    (a reading that never reached its critical N is drawn at the top of its range, hollow)."""
    x = np.asarray(lengths, dtype=np.float64)
    figure = go.Figure()
    _line(figure, x, fraction * x, name=f"{fraction:g} L (paper)")
    _line(figure, x, np.asarray(largest_n, dtype=np.float64), name="largest N measured", colour="grey", dash="dot")
    styles = [(MEASURED, "solid"), (MEASURED, "dot"), (SECOND, "solid"), (SECOND, "dot")]
    for (name, values), (colour, dash) in zip(readings.items(), styles):
        reached = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        never = np.array([top if v is None else np.nan for v, top in zip(values, largest_n)], dtype=np.float64)
        figure.add_trace(go.Scatter(x=x, y=reached, mode="lines+markers", name=escape(name),
                                    line={"color": colour, "dash": dash}))
        if np.isfinite(never).any():
            figure.add_trace(go.Scatter(x=x, y=never, mode="markers", name=escape(f"{name}: not reached"),
                                        marker={"color": colour, "symbol": "circle-open", "size": 11}))
    figure.update_xaxes(type="log", title="context length L")
    figure.update_yaxes(type="log", title="critical N (KS p > 0.05)")
    figure.update_layout(title=escape(title), height=420, margin=_MARGIN, legend={"orientation": "h", "y": -0.2})
    return figure


def distinguishability(n_values: Sequence[int], ratio: np.ndarray, low: np.ndarray, high: np.ndarray, *,
                       band: tuple[float, float], title: str) -> go.Figure:
    """Fig. 3: N_s / N per N as box plots over heads, Theorem 2's bounds (median over heads) and the saturated band.

    ratio, low, high: (len(n_values), heads)."""
    figure = go.Figure()
    labels = [str(n) for n in n_values]
    for label, values in zip(labels, np.asarray(ratio)):
        figure.add_trace(go.Box(y=values, name=label, marker={"color": MEASURED}, boxpoints="outliers",
                                showlegend=False))
    figure.add_trace(go.Scatter(x=labels, y=np.nanmedian(high, 1), mode="lines+markers", name="Theorem 2 upper",
                                line={"color": THEORY, "dash": "dash"}))
    figure.add_trace(go.Scatter(x=labels, y=np.clip(np.nanmedian(low, 1), 0, 1), mode="lines+markers",
                                name="Theorem 2 lower (clipped at 0)", line={"color": THEORY, "dash": "dot"}))
    figure.add_hrect(y0=band[0], y1=band[1], fillcolor="orange", opacity=0.15, line_width=0,
                     annotation_text="saturated (paper)", annotation_position="top left")
    figure.update_xaxes(title="selected tokens N", type="category")
    figure.update_yaxes(title="N_s / N", range=[-0.02, 1.05])
    figure.update_layout(title=escape(title), height=440, margin=_MARGIN, legend={"orientation": "h", "y": -0.2})
    return figure


def temperature(temperatures: Sequence[float], sensitivity: np.ndarray, jacobian: np.ndarray,
                epsilons: Sequence[float], *, title: str) -> go.Figure:
    """Fig. 4: random-direction sensitivity per eps and the exact Jacobian norm against T, with 1/(4T) and 1/(2T).

    sensitivity: (len(epsilons), len(temperatures)); jacobian: (len(temperatures),)."""
    t = np.asarray(temperatures, dtype=np.float64)
    figure = go.Figure()
    colours = (MEASURED, SECOND, RANDOM)
    for eps, values, colour in zip(epsilons, np.asarray(sensitivity), colours):
        figure.add_trace(go.Scatter(x=t, y=np.where(values > 0, values, np.nan), mode="lines+markers",
                                    name=f"random direction, ε = {eps:g}", line={"color": colour}))
    figure.add_trace(go.Scatter(x=t, y=np.where(jacobian > 0, jacobian, np.nan), mode="lines+markers",
                                name="exact ‖J‖₂ = λmax(diag(p) − ppᵀ)/T", line={"color": "black"}))
    _line(figure, t, 1 / (4 * t), name="1/(4T) (paper)", colour=THEORY)
    _line(figure, t, 1 / (2 * t), name="1/(2T) (true maximum)", colour=THEORY, dash="dot")
    figure.add_vline(x=1.0, line={"color": "grey", "width": 1}, annotation_text="T = 1: the model as trained")
    figure.update_xaxes(type="log", title="temperature T (logits / T)", exponentformat="power")
    figure.update_yaxes(type="log", title="‖Δ softmax‖ / ε", exponentformat="power")
    figure.update_layout(title=escape(title), height=460, margin=_MARGIN, legend={"orientation": "h", "y": -0.22})
    return figure
