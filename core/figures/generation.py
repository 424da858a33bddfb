"""Plotly figures for attention over generated text. Pure functions: arrays and labels in, a go.Figure out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from attnscope.figures.maps import ENTROPY_SCALE, axis_boundary, escape

LABELS = {"entropy": "entropy (nats)", "max_weight": "max weight", "sink_mass": "weight on token 0",
          "mean_distance": "mean distance (tokens)", "learned_sink_mass": "learned sink mass"}


def timeline(values: dict[str, np.ndarray], *, tokens: Sequence[str], title: str) -> go.Figure:
    """Per-step statistics of generation: one panel per statistic, the mean over every head with the band between
    the 10% and 90% of heads, the x axis the generated tokens in order.

    Args:
        values: statistic -> (steps, layers, heads).
        tokens: the display string of each generated token (one per step).
    """
    names = list(values)
    figure = make_subplots(rows=len(names), cols=1, shared_xaxes=True, vertical_spacing=0.04,
                           subplot_titles=[LABELS.get(name, name) for name in names])
    x = [f"{i}:{escape(t)}" for i, t in enumerate(tokens)]
    for row, name in enumerate(names, start=1):
        heads = values[name].reshape(len(tokens), -1)  # every head of every layer
        low, high = np.nanpercentile(heads, 10, axis=1), np.nanpercentile(heads, 90, axis=1)
        figure.add_trace(go.Scatter(x=x, y=high, mode="lines", line={"width": 0}, showlegend=False,
                                    hoverinfo="skip"), row=row, col=1)
        figure.add_trace(go.Scatter(x=x, y=low, mode="lines", line={"width": 0}, fill="tonexty",
                                    fillcolor="rgba(99, 110, 250, 0.2)", name="10-90% of heads",
                                    showlegend=row == 1, hoverinfo="skip"), row=row, col=1)
        figure.add_trace(go.Scatter(x=x, y=np.nanmean(heads, axis=1), mode="lines+markers", name="mean of heads",
                                    line={"color": "rgb(99, 110, 250)"}, showlegend=row == 1,
                                    hovertemplate="%{x}<br>%{y:.3f}<extra></extra>"), row=row, col=1)
    figure.update_layout(title=title, height=180 * len(names) + 80, margin={"t": 70})
    figure.update_xaxes(tickangle=-60, row=len(names), col=1)
    return figure


def layer_timeline(values: np.ndarray, *, tokens: Sequence[str], label: str, title: str) -> go.Figure:
    """(steps, layers, heads) -> a layers x steps heatmap of the mean over each layer's heads."""
    z = np.nanmean(values, axis=2).T  # (layers, steps)
    x = [f"{i}:{escape(t)}" for i, t in enumerate(tokens)]
    figure = go.Figure(go.Heatmap(z=z, x=x, y=list(range(z.shape[0])), colorscale=ENTROPY_SCALE,
                                  colorbar={"title": label},
                                  hovertemplate="step %{x}<br>layer %{y}<br>" + label + " %{z:.3f}<extra></extra>"))
    figure.update_layout(title=title, xaxis_title="generated token", yaxis_title="layer")
    figure.update_xaxes(tickangle=-60)
    return figure


def mark_generated(figure: go.Figure, *, n_prompt: int, block: int) -> go.Figure:
    """Draw where the generated text starts on a head_heatmap of the whole text (queries and keys from token n_prompt
    on), between the tiles or cells on either side of it (attnscope.figures.maps.axis_boundary)."""
    edge = axis_boundary(n_prompt, block=block)
    line = {"color": "white", "width": 2, "dash": "dot"}
    figure.add_vline(x=edge, line=line, annotation_text="generated →", annotation_position="top right")
    figure.add_hline(y=edge, line=line)
    return figure
