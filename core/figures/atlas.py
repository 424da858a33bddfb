"""Plotly figures of a head atlas: the 2-D embedding of every head's fingerprint, coloured by cluster, and the marks
that say which cells of a difference map are significant. Pure functions, nothing displayed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative

from attnscope.figures.maps import escape


def embedding(coords: np.ndarray, labels: np.ndarray, *, n_heads: int, names: Sequence[str],
              hover: Sequence[Sequence[str]], title: str, axis: str) -> go.Figure:
    """One point per head at `coords` (heads, 2), heads in layer-major order, one trace per cluster.

    Args:
        labels: (heads,) cluster of each head; names: each cluster's description.
        hover: per head, the lines shown under its name on hover (plain text).
        axis: what the axes are ("PCA: 41% + 22% of the variance"), shown under the title.
    The points carry customdata (layer, head), so a selection on the page names the head.
    """
    figure = go.Figure()
    palette = qualitative.D3
    for cluster in range(int(labels.max()) + 1 if len(labels) else 0):
        members = np.flatnonzero(labels == cluster)
        figure.add_trace(go.Scatter(
            x=coords[members, 0], y=coords[members, 1], mode="markers",
            name=escape(f"cluster {cluster}: {names[cluster]}"),
            marker={"size": 9, "color": palette[cluster % len(palette)], "line": {"width": 0.5, "color": "white"}},
            customdata=np.stack([members // n_heads, members % n_heads], 1).tolist(),  # plain pairs for the selection
            text=["<br>".join(escape(line) for line in hover[i]) for i in members],
            hovertemplate="L%{customdata[0]} H%{customdata[1]}<br>%{text}<extra></extra>",
        ))
    figure.update_layout(title=f"{escape(title)}<br><sup>{escape(axis)}</sup>", height=520, clickmode="event+select",
                         legend={"orientation": "h", "y": -0.15}, margin={"l": 10, "r": 10, "t": 70, "b": 10})
    figure.update_xaxes(showticklabels=False, title=None)
    figure.update_yaxes(showticklabels=False, title=None)
    return figure


def mark_significant(figure: go.Figure, significant: np.ndarray) -> go.Figure:
    """Dots on the cells of a layers x heads heatmap where `significant` (layers, heads) is True."""
    rows, cols = np.nonzero(significant)
    figure.add_trace(go.Scatter(x=[f"H{c}" for c in cols], y=[f"L{r}" for r in rows], mode="markers",
                                marker={"symbol": "circle", "size": 5, "color": "black"},
                                name="significant (FDR 5%)", hoverinfo="skip", showlegend=True))
    figure.update_layout(legend={"orientation": "h", "y": -0.05})
    return figure
