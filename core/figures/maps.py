"""Plotly figures for attention maps. Pure functions: arrays and labels in, a go.Figure out, nothing displayed.

Token strings may contain "<", ">" or "&"; plotly renders a subset of HTML in labels and hover text, so every token
string is escaped here and shown literally.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

WEIGHT_SCALE = "Viridis"
ENTROPY_SCALE = "Plasma"


def escape(text: str) -> str:
    return html.escape(text, quote=False)


def _check_square(values: np.ndarray, n_rows: int, n_cols: int, what: str) -> None:
    if values.ndim != 2 or values.shape != (n_rows, n_cols):
        raise ValueError(f"{what}: values have shape {values.shape}, labels give ({n_rows}, {n_cols}).")


def head_heatmap(
    values: np.ndarray,
    *,
    tokens: Sequence[str],
    block: int,
    title: str,
    reduce: str = "mean",
) -> go.Figure:
    """One head's attention map, cell by cell (block = 1) or pooled into block x block tiles.

    Args:
        values: (ceil(T/block), ceil(S/block)) weights; NaN cells are drawn blank.
        tokens: the S display strings of the keys (queries are the last T of them).
        block: cells per tile side; 1 draws every token pair with its tokens on the axes.
        title: figure title (plain text).
        reduce: how tiles were pooled, for the hover text.
    """
    n_keys = len(tokens)
    if block == 1:
        _check_square(values, values.shape[0], n_keys, "head_heatmap")
        key_labels = [f"{i}:{escape(t)}" for i, t in enumerate(tokens)]
        query_labels = key_labels[n_keys - values.shape[0] :]
        hover = "query %{y}<br>key %{x}<br>weight %{z:.4f}<extra></extra>"
        heatmap = go.Heatmap(z=values, x=key_labels, y=query_labels, colorscale=WEIGHT_SCALE, hovertemplate=hover,
                             colorbar={"title": "weight"}, hoverongaps=False)
        figure = go.Figure(heatmap)
        tick_every = max(1, math.ceil(n_keys / 60))
        figure.update_xaxes(tickangle=-60, tickmode="array", tickvals=key_labels[::tick_every])
        figure.update_yaxes(tickmode="array", tickvals=query_labels[::tick_every])
    else:
        key_starts = np.arange(values.shape[1]) * block
        query_starts = np.arange(values.shape[0]) * block
        hover = (f"queries %{{y}} to %{{y}}+{block - 1}<br>keys %{{x}} to %{{x}}+{block - 1}<br>"
                 f"{reduce} weight %{{z:.4g}}<extra></extra>")
        heatmap = go.Heatmap(z=values, x=key_starts, y=query_starts, colorscale=WEIGHT_SCALE, hovertemplate=hover,
                             colorbar={"title": f"{reduce}<br>weight"}, hoverongaps=False)
        figure = go.Figure(heatmap)
        figure.update_xaxes(title=f"key position (tiles of {block} tokens)")
        figure.update_yaxes(title=f"query position (tiles of {block} tokens)")
    figure.update_yaxes(autorange="reversed", scaleanchor="x", constrain="domain")
    figure.update_layout(title=escape(title), height=680, margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return figure


@dataclass
class Thumbnail:
    layer: int
    head: int
    values: np.ndarray  # (r, c) pooled weights of the head, NaN = no visible cell
    entropy: float  # mean row entropy, nats
    max_weight: float  # mean largest weight per row


def head_grid(
    thumbnails: Sequence[Thumbnail],
    *,
    n_cols: int,
    sort_by_entropy: bool,
    title: str,
) -> go.Figure:
    """All heads as a grid of small maps, each framed in the colour of its mean entropy.

    Each tile is scaled to its own maximum so structure shows in every head. One invisible point sits at the
    centre of each tile and carries customdata [layer, head]; with hoverdistance=-1 a click anywhere in a tile
    selects that point, which is how the app learns which head to open (plotly heatmaps emit no selections).
    """
    if not thumbnails:
        raise ValueError("head_grid needs at least one thumbnail.")
    order = sorted(thumbnails, key=lambda t: t.entropy) if sort_by_entropy else list(thumbnails)
    size = max(max(t.values.shape) for t in order)
    gap = max(2, size // 6)
    n_rows = math.ceil(len(order) / n_cols)
    pitch = size + gap
    mosaic = np.full((n_rows * pitch, n_cols * pitch), np.nan)
    centers_x, centers_y, custom, hover, entropies = [], [], [], [], []
    shapes, annotations = [], []
    entropy_values = np.array([t.entropy for t in order])
    low, high = float(entropy_values.min()), float(entropy_values.max())
    for index, thumb in enumerate(order):
        row, col = divmod(index, n_cols)
        top, left = row * pitch + gap, col * pitch
        tile = thumb.values
        peak = np.nanmax(tile) if np.isfinite(tile).any() else 1.0
        mosaic[top : top + tile.shape[0], left : left + tile.shape[1]] = tile / (peak if peak > 0 else 1.0)
        centers_x.append(left + tile.shape[1] / 2)
        centers_y.append(top + tile.shape[0] / 2)
        custom.append([thumb.layer, thumb.head])
        entropies.append(thumb.entropy)
        hover.append(f"layer {thumb.layer} head {thumb.head}<br>entropy {thumb.entropy:.3f} nats<br>"
                     f"mean max weight {thumb.max_weight:.3f}<br>click to open")
        shapes.append({"type": "rect", "x0": left - 0.5, "x1": left + tile.shape[1] - 0.5, "y0": top - 0.5,
                       "y1": top + tile.shape[0] - 0.5, "line": {"width": 3,
                       "color": _colour_at(ENTROPY_SCALE, (thumb.entropy - low) / (high - low or 1.0))}})
        annotations.append({"x": left + tile.shape[1] / 2, "y": top - 0.5, "text": f"L{thumb.layer} H{thumb.head}",
                            "showarrow": False, "yanchor": "bottom", "font": {"size": 10}})
    figure = go.Figure()
    figure.add_trace(go.Heatmap(z=mosaic, colorscale=WEIGHT_SCALE, showscale=False, hoverinfo="skip"))
    figure.add_trace(go.Scatter(
        x=centers_x, y=centers_y, mode="markers", customdata=custom, text=hover, hovertemplate="%{text}<extra></extra>",
        marker={"size": 14, "color": entropies, "colorscale": ENTROPY_SCALE, "opacity": 0.0, "showscale": True,
                "colorbar": {"title": "entropy<br>(nats)"}},
        unselected={"marker": {"opacity": 0.0}}, selected={"marker": {"opacity": 0.0}}, showlegend=False,
        name="heads",
    ))
    figure.update_xaxes(visible=False, range=[-gap, n_cols * pitch])
    figure.update_yaxes(visible=False, autorange="reversed", scaleanchor="x")
    figure.update_layout(
        title=escape(title), shapes=shapes, annotations=annotations, hovermode="closest", hoverdistance=-1,
        clickmode="event+select", dragmode=False, height=max(320, 40 + n_rows * 130),
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
    )
    return figure


def _colour_at(scale: str, fraction: float) -> str:
    from plotly.colors import sample_colorscale

    return sample_colorscale(scale, [min(max(fraction, 0.0), 1.0)])[0]


def query_bars(weights: np.ndarray, *, tokens: Sequence[str], query: int, top_k: int, title: str) -> go.Figure:
    """Which keys one query token attends to: a bar per key (the top_k heaviest when there are more), in text order.

    Args:
        weights: (S,) weights of the query row.
        tokens: the S key display strings.
        query: query position, for the title.
        top_k: most bars drawn.
    """
    if weights.shape != (len(tokens),):
        raise ValueError(f"query_bars: {weights.shape[0]} weights for {len(tokens)} tokens.")
    keys = np.arange(len(tokens))
    if len(tokens) > top_k:
        keys = np.sort(np.argsort(-weights, kind="stable")[:top_k])
    labels = [f"{k}:{escape(tokens[k])}" for k in keys]
    figure = go.Figure(go.Bar(x=labels, y=weights[keys], marker={"color": weights[keys], "colorscale": WEIGHT_SCALE},
                              hovertemplate="key %{x}<br>weight %{y:.4f}<extra></extra>"))
    shown = "all keys" if len(keys) == len(tokens) else f"the {len(keys)} heaviest of {len(tokens)} keys"
    figure.update_layout(title=f"{escape(title)}: query {query}:{escape(tokens[query])} ({shown})", height=380,
                         yaxis_title="weight", margin={"l": 10, "r": 10, "t": 50, "b": 10})
    figure.update_xaxes(tickangle=-60, type="category")
    return figure


def stat_heatmap(values: np.ndarray, *, title: str, label: str) -> go.Figure:
    """Layers x heads grid of one per-head statistic (rows: layers, columns: heads).

    Args:
        values: (n_layers, n_heads) statistic values.
        title: figure title; label: the colour bar's name.
    """
    if values.ndim != 2:
        raise ValueError(f"stat_heatmap: values must be (layers, heads); got shape {values.shape}.")
    figure = go.Figure(go.Heatmap(
        z=values, x=[f"H{h}" for h in range(values.shape[1])], y=[f"L{layer}" for layer in range(values.shape[0])],
        colorscale=ENTROPY_SCALE, colorbar={"title": escape(label)},
        hovertemplate="%{y} %{x}<br>" + escape(label) + " %{z:.4g}<extra></extra>",
    ))
    figure.update_yaxes(autorange="reversed")
    figure.update_layout(title=escape(title), height=max(320, 60 + 22 * values.shape[0]),
                         margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return figure
