"""Plotly figures for "why here": per-head ablation deltas, information-flow graphs and per-head contribution totals.
Pure functions: arrays and labels in, a go.Figure out. Token strings are escaped (figures.maps.escape)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from attnscope.figures.compare import DIFFERENCE_SCALE, _symmetric_range
from attnscope.figures.maps import ENTROPY_SCALE, escape

WIDTHS = (1.0, 2.5, 4.5, 7.0)  # edge widths of the graph, from the weakest quarter of contributions to the strongest
EDGE_COLOURS = ("rgba(99, 110, 250, 0.35)", "rgba(99, 110, 250, 0.55)", "rgba(239, 85, 59, 0.7)",
                "rgba(239, 85, 59, 0.95)")
RESIDUAL_COLOUR = "rgba(120, 120, 120, 0.6)"


def delta_heatmap(grid: np.ndarray, *, title: str, label: str) -> go.Figure:
    """Layers x heads map of ablation deltas (NaN: a head not ablated), diverging around 0."""
    if grid.ndim != 2:
        raise ValueError(f"delta_heatmap: values must be (layers, heads); got shape {grid.shape}.")
    figure = go.Figure(go.Heatmap(
        z=grid, x=[f"H{h}" for h in range(grid.shape[1])], y=[f"L{layer}" for layer in range(grid.shape[0])],
        colorscale=DIFFERENCE_SCALE, colorbar={"title": escape(label)}, **_symmetric_range(grid),
        hovertemplate="%{y} %{x}<br>" + escape(label) + " %{z:+.4g}<extra></extra>",
    ))
    figure.update_yaxes(autorange="reversed")
    figure.update_layout(title=escape(title), height=max(320, 60 + 22 * grid.shape[0]),
                         margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return figure


def delta_bars(layers: np.ndarray, heads: np.ndarray, deltas: np.ndarray, *, title: str, label: str,
               top: int = 20) -> go.Figure:
    """The `top` heads by |delta|, sorted, as horizontal bars (largest at the top)."""
    order = np.argsort(-np.abs(deltas), kind="stable")[:top][::-1]
    names = [f"L{layers[i]}.H{heads[i]}" for i in order]
    figure = go.Figure(go.Bar(
        x=deltas[order], y=names, orientation="h",
        marker_color=["rgb(239, 85, 59)" if deltas[i] > 0 else "rgb(99, 110, 250)" for i in order],
        hovertemplate="%{y}<br>" + escape(label) + " %{x:+.4g}<extra></extra>",
    ))
    figure.update_layout(title=escape(title), xaxis_title=escape(label), height=max(300, 60 + 20 * len(order)),
                         margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return figure


def contribution_graph(layer: np.ndarray, query: np.ndarray, key: np.ndarray, head: np.ndarray,
                       contribution: np.ndarray, *, tokens: Sequence[str], n_layers: int, title: str) -> go.Figure:
    """The information-flow graph of some edges: tokens left to right (only those an edge touches), layers bottom to
    top; an edge of layer l runs from key j at height l to query i at height l + 1, a residual edge (key -1) from i
    to i. Edge width and colour by contribution quartile; hovering or clicking an edge's midpoint names it
    (customdata: layer, head, query, key)."""
    touched = np.unique(np.concatenate([query, key[key >= 0]])) if len(query) else np.zeros(0, int)
    column = {int(p): c for c, p in enumerate(touched)}
    figure = go.Figure()
    if len(contribution):
        edges = np.quantile(contribution, [0.25, 0.5, 0.75]) if len(contribution) > 3 else np.array([0, 0, 0])
        klass = np.searchsorted(edges, contribution, side="right")
    else:
        klass = np.zeros(0, int)
    source_x = np.array([column[int(q if k < 0 else k)] for q, k in zip(query, key)], dtype=float)
    target_x = np.array([column[int(q)] for q in query], dtype=float)
    for residual in (True, False):
        for level in range(len(WIDTHS)):
            pick = np.nonzero((klass == level) & ((key < 0) == residual))[0]
            if not len(pick):
                continue
            xs = np.column_stack([source_x[pick], target_x[pick], np.full(len(pick), np.nan)]).ravel()
            ys = np.column_stack([layer[pick], layer[pick] + 1, np.full(len(pick), np.nan)]).ravel()
            figure.add_trace(go.Scatter(
                x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                line={"width": WIDTHS[level], "color": RESIDUAL_COLOUR if residual else EDGE_COLOURS[level]}))
    middle = go.Scatter(
        x=(source_x + target_x) / 2, y=layer + 0.5, mode="markers", showlegend=False,
        marker={"size": 9, "color": contribution, "colorscale": ENTROPY_SCALE, "opacity": 0.8,
                "colorbar": {"title": "contribution"}},
        customdata=np.column_stack([layer, head, query, key]) if len(layer) else None,
        text=[_edge_text(int(l_), int(h), int(q), int(k), float(c), tokens)
              for l_, h, q, k, c in zip(layer, head, query, key, contribution)],
        hovertemplate="%{text}<extra></extra>")
    figure.add_trace(middle)
    labels = [f"{p}: {escape(tokens[p]) if p < len(tokens) else ''}" for p in touched]
    figure.update_xaxes(tickvals=list(range(len(touched))), ticktext=labels, tickangle=-60)
    figure.update_yaxes(title="layer (residual stream entering it)", range=[-0.5, n_layers + 0.5], dtick=1)
    figure.update_layout(title=escape(title), height=max(420, 80 + 26 * n_layers), clickmode="event+select",
                         margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return figure


def _edge_text(layer: int, head: int, query: int, key: int, contribution: float, tokens: Sequence[str]) -> str:
    name = lambda p: escape(tokens[p]) if 0 <= p < len(tokens) else "?"  # noqa: E731
    if key == -1:
        return f"L{layer} residual of {query} ({name(query)})<br>contribution {contribution:.3g}"
    if key == -2:
        return f"L{layer}.H{head} learned sink → {query} ({name(query)})<br>contribution {contribution:.3g}"
    return (f"L{layer}.H{head}: key {key} ({name(key)}) → query {query} ({name(query)})<br>"
            f"contribution {contribution:.3g}")


def head_totals(grid: np.ndarray, *, title: str) -> go.Figure:
    """Layers x heads: the sum of each head's contributions over the edges shown."""
    figure = go.Figure(go.Heatmap(
        z=grid, x=[f"H{h}" for h in range(grid.shape[1])], y=[f"L{layer}" for layer in range(grid.shape[0])],
        colorscale=ENTROPY_SCALE, colorbar={"title": "contribution"},
        hovertemplate="%{y} %{x}<br>summed contribution %{z:.4g}<extra></extra>"))
    figure.update_yaxes(autorange="reversed")
    figure.update_layout(title=escape(title), height=max(320, 60 + 22 * grid.shape[0]),
                         margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return figure


def relevance_bars(relevance: np.ndarray, *, tokens: Sequence[str], token: int, title: str,
                   flow: np.ndarray | None = None) -> go.Figure:
    """The relevance of each input position (T,) as bars over the token positions, the chosen token's bar marked; with
    `flow` (T,), a second relevance (along the contribution graph) as markers on the same axis."""
    if relevance.ndim != 1 or len(relevance) != len(tokens):
        raise ValueError(f"relevance_bars: relevance must be ({len(tokens)},) for the tokens; got {relevance.shape}.")
    positions = np.arange(len(tokens))
    names = [f"{p}: {escape(t)}" for p, t in zip(positions, tokens)]
    figure = go.Figure(go.Bar(
        x=positions, y=relevance, name="attention rollout", text=names, textposition="none",
        marker_color=["rgb(239, 85, 59)" if p == token else "rgb(99, 110, 250)" for p in positions],
        hovertemplate="%{text}<br>rollout %{y:.3g}<extra></extra>"))
    if flow is not None:
        if flow.shape != relevance.shape:
            raise ValueError(f"relevance_bars: flow must have the shape of relevance {relevance.shape}; got "
                             f"{flow.shape}.")
        figure.add_trace(go.Scatter(
            x=positions, y=flow, mode="markers", name="along the contribution graph", text=names,
            marker={"symbol": "diamond", "size": 8, "color": "rgb(0, 0, 0)"},
            hovertemplate="%{text}<br>contribution graph %{y:.3g}<extra></extra>"))
    if len(tokens) <= 60:
        figure.update_xaxes(tickvals=list(positions), ticktext=names, tickangle=-60)
    figure.update_xaxes(title="input token position")
    figure.update_yaxes(title="relevance (sums to 1)")
    figure.update_layout(title=escape(title), height=420, legend={"orientation": "h", "y": 1.08},
                         margin={"l": 10, "r": 10, "t": 60, "b": 10})
    return figure
