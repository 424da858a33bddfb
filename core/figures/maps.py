"""Plotly figures for attention maps. Pure functions: arrays and labels in, a go.Figure out, nothing displayed.

Token strings may contain "<", ">" or "&"; plotly renders a subset of HTML in labels and hover text, so every token
string is escaped here and shown literally.

A head's map (head_heatmap) has categorical axes, one category per row or column: a pooled tile's category label
names its positions and its first and last tokens, so the hover shows them at the cost of 2 x tiles strings, and the
ticks show positions. The colour scale is linear, log10 (for long texts, whose weights span decades) or each row over
its own largest weight; under the last two the hover reads the model's weight from customdata. The head grid
(head_grid) sizes the figure from its mosaic, so no blank band is left around it.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from attnscope.settings import MAP_SCALES

WEIGHT_SCALE = "Viridis"
ENTROPY_SCALE = "Plasma"
SCALES = MAP_SCALES.values  # colour scales of head_heatmap: those the "map_scale" setting offers
LOG_FLOOR = 1e-6  # the log scale draws weights below this at its bottom colour (a uniform row over 10^6 keys)
SPAN_TOKEN_CHARS = 24  # a token longer than this is cut (with "…") in a pooled tile's label
TICKS_PER_AXIS = 12  # at most about this many position ticks on a pooled axis
MARK_LINE = {"color": "rgba(255, 64, 64, 0.95)", "width": 1}  # marks (a token search) on a map


def escape(text: str) -> str:
    return html.escape(text, quote=False)


def _check_square(values: np.ndarray, n_rows: int, n_cols: int, what: str) -> None:
    if values.ndim != 2 or values.shape != (n_rows, n_cols):
        raise ValueError(f"{what}: values have shape {values.shape}, labels give ({n_rows}, {n_cols}).")


def _short(token: str) -> str:
    return token if len(token) <= SPAN_TOKEN_CHARS else token[: SPAN_TOKEN_CHARS - 1] + "…"


def span_labels(tokens: Sequence[str], *, start: int, end: int, block: int, singular: str,
                plural: str) -> list[str]:
    """Plain-text labels of the tiles of `block` positions covering [start, end): "key 7: ␣cat" for a tile of one
    token, "keys 96-127: ␣the … ␣cat" (first and last token, each cut to SPAN_TOKEN_CHARS) for a longer one.

    Not escaped: a figure escapes them (escape), a table shows them as they are.
    """
    labels = []
    for first in range(start, end, block):
        last = min(first + block, end) - 1
        if first == last:
            labels.append(f"{singular} {first}: {tokens[first]}")
        else:
            labels.append(f"{plural} {first}-{last}: {_short(tokens[first])} … {_short(tokens[last])}")
    return labels


def _nice_step(n_tiles: int) -> int:
    """Tiles between two ticks: 1, 2, 5, 10, 20, 50, ... so that at most about TICKS_PER_AXIS ticks are drawn."""
    step = 1
    while n_tiles / step > TICKS_PER_AXIS:
        step = _next_nice(step)
    return step


def _next_nice(step: int) -> int:
    digits = 10 ** (len(str(step)) - 1)
    return {1: 2, 2: 5, 5: 10}[step // digits] * digits


def _power_of_ten(exponent: int) -> str:
    if exponent == 0:
        return "1"
    return "10" + str(exponent).translate(str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"))


def colour_values(values: np.ndarray, scale: str) -> tuple[np.ndarray, dict]:
    """What a map draws under a colour scale: (z, the heatmap's colour keywords). NaN stays NaN (blank).

    linear: the weights. log: log10 of the weights, those below LOG_FLOOR drawn at the floor; the colour bar is ticked
    in powers of ten. row: each row divided by its largest value over the cells shown (a row whose cells are all 0
    stays 0; a row with no visible cell stays blank), so every query's own strongest keys get the top colour.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if scale == "linear":
        return values, {}
    if scale == "log":
        z = np.where(finite, np.log10(np.clip(np.where(finite, values, 1.0), LOG_FLOOR, None)), np.nan)
        if not finite.any():
            return z, {}
        low, high = float(np.nanmin(z)), float(np.nanmax(z))
        ticks = list(range(math.ceil(low), math.floor(high) + 1)) or [low, high]
        text = [_power_of_ten(t) if float(t).is_integer() else f"{10 ** t:.2g}" for t in ticks]
        return z, {"zmin": low, "zmax": high if high > low else low + 1,
                   "colorbar": {"tickvals": ticks, "ticktext": text}}
    if scale == "row":
        peak = np.where(finite, values, -np.inf).max(axis=1, keepdims=True) if values.size else values
        share = np.divide(values, peak, out=np.zeros_like(values), where=finite & (peak > 0))
        return np.where(finite, share, np.nan), {"zmin": 0.0, "zmax": 1.0}
    raise ValueError(f"scale={scale!r} is not a colour scale: use one of {', '.join(SCALES)}.")


def axis_index(position: int, *, start: int = 0, block: int) -> int:
    """The tile (a category index on head_heatmap's axis) that holds token `position`, on an axis whose first tile
    starts at token `start`."""
    return (position - start) // block


def axis_boundary(position: int, *, start: int = 0, block: int) -> float:
    """Where on head_heatmap's axis the text before token `position` ends (tile k spans k - 0.5 .. k + 0.5): the
    coordinate for a line drawn between tokens, e.g. where generated text starts."""
    return (position - start) / block - 0.5


def head_heatmap(
    values: np.ndarray,
    *,
    tokens: Sequence[str],
    block: int,
    title: str,
    reduce: str = "mean",
    scale: str = "linear",
    queries: tuple[int, int] | None = None,
    keys: tuple[int, int] | None = None,
    marks: Sequence[int | tuple[int, int]] = (),
    label: str = "weight",
) -> go.Figure:
    """One head's attention map, cell by cell (block = 1) or pooled into block x block tiles, of the whole text or of
    a window of it.

    Both axes are categorical, one category per row or column of `values`, so a map sends 2 x tiles labels, never one
    per cell: cell by cell the labels are "i:token"; a pooled tile's label names its range and its first and last
    tokens ("keys 96-127: ␣the … ␣cat"), which the hover shows, while the ticks show positions. The axes end at the
    text (no range beyond the first and last token) and cells stay square by shrinking the plotting area.

    Args:
        values: (ceil((q1 - q0)/block), ceil((k1 - k0)/block)) weights; NaN cells are drawn blank.
        tokens: the S display strings of the whole text (positions index it).
        block: cells per tile side; 1 draws every token pair with its tokens on the axes.
        title: figure title (plain text).
        reduce: how tiles were pooled, for the hover text.
        scale: "linear", "log" or "row" (colour_values); under log and row the hover also shows the real weight.
        queries: (q0, q1), the token positions of the rows, q1 excluded (default: the last rows of the text, all of
            it when pooled).
        keys: (k0, k1), the token positions of the columns (default: the whole text).
        marks: token positions, or (first, last) spans (attnscope.tokens.find), framed on the map by thin lines: the
            column(s) and the row(s) of the tiles holding them. Marks outside the window are left out.
        label: what the values are, for the colour bar and the hover (a value-weighted map is not a weight).
    """
    n_tokens = len(tokens)
    n_rows, n_cols = values.shape if values.ndim == 2 else (0, 0)
    if keys is None:
        keys = (0, n_tokens)
    if queries is None:
        queries = (max(0, n_tokens - n_rows * block), n_tokens)
    (q0, q1), (k0, k1) = queries, keys
    if not (0 <= q0 < q1 <= n_tokens and 0 <= k0 < k1 <= n_tokens):
        raise ValueError(f"head_heatmap: queries {queries} and keys {keys} must lie within the {n_tokens} tokens.")
    _check_square(values, math.ceil((q1 - q0) / block), math.ceil((k1 - k0) / block), "head_heatmap")
    if block == 1:
        x = [f"{i}:{escape(tokens[i])}" for i in range(k0, k1)]
        y = [f"{i}:{escape(tokens[i])}" for i in range(q0, q1)]
        where, weight = "query %{y}<br>key %{x}", escape(label)
    else:
        x = [escape(span) for span in span_labels(tokens, start=k0, end=k1, block=block, singular="key",
                                                  plural="keys")]
        y = [escape(span) for span in span_labels(tokens, start=q0, end=q1, block=block, singular="query",
                                                  plural="queries")]
        where, weight = "%{y}<br>%{x}", f"{reduce} {escape(label)}"
    z, colour = colour_values(values, scale)
    colorbar = {"title": weight.replace(" ", "<br>"), **colour.pop("colorbar", {})}
    custom = {}
    if scale == "linear":
        hover = f"{where}<br>{weight} %{{z:.4g}}<extra></extra>"
    elif scale == "log":
        custom = {"customdata": values}
        colorbar["title"] = f"{weight}<br>(log scale)"
        hover = f"{where}<br>{weight} %{{customdata:.4g}}<extra></extra>"
    else:
        custom = {"customdata": values}
        colorbar["title"] = f"{weight}<br>/ row max"
        hover = f"{where}<br>{weight} %{{customdata:.4g}}<br>%{{z:.1%}} of the row's largest<extra></extra>"
    figure = go.Figure(go.Heatmap(z=z, x=x, y=y, colorscale=WEIGHT_SCALE, hovertemplate=hover, colorbar=colorbar,
                                  hoverongaps=False, **colour, **custom))
    if block == 1:  # cells are square, so both axes take the same step: about 60 labels along the longer one
        x_every = y_every = max(1, math.ceil(max(n_rows, n_cols) / 60))
        # titled, so a figure's CSV (attnscope.report.figure_table) names which axis is the query
        figure.update_xaxes(title="key", tickangle=-60, tickmode="array", tickvals=x[::x_every])
        figure.update_yaxes(title="query", tickmode="array", tickvals=y[::y_every])
    else:
        x_every, y_every = _nice_step(len(x)), _nice_step(len(y))
        figure.update_xaxes(title=f"key position (tiles of {block} tokens)", tickmode="array", tickvals=x[::x_every],
                            ticktext=[str(p) for p in range(k0, k1, block)][::x_every])
        figure.update_yaxes(title=f"query position (tiles of {block} tokens)", tickmode="array",
                            tickvals=y[::y_every], ticktext=[str(p) for p in range(q0, q1, block)][::y_every])
    figure.update_xaxes(type="category", range=[-0.5, n_cols - 0.5], constrain="domain", showgrid=False)
    figure.update_yaxes(type="category", range=[n_rows - 0.5, -0.5], constrain="domain", scaleanchor="x",
                        showgrid=False)
    figure.update_layout(title=escape(title), height=680, margin={"l": 10, "r": 10, "t": 50, "b": 10},
                         shapes=_mark_shapes(marks, queries=(q0, q1), keys=(k0, k1), block=block))
    return figure


def _mark_shapes(marks: Sequence[int | tuple[int, int]], *, queries: tuple[int, int], keys: tuple[int, int],
                 block: int) -> list[dict]:
    """Thin frames around the key column(s) and the query row(s) of each mark's tiles, once per distinct frame."""
    n_rows = math.ceil((queries[1] - queries[0]) / block)
    n_cols = math.ceil((keys[1] - keys[0]) / block)
    frames: dict[tuple[str, int, int], dict] = {}
    for mark in marks:
        first, last = (mark, mark) if isinstance(mark, (int, np.integer)) else mark
        for axis, (start, end), across in (("x", keys, n_rows), ("y", queries, n_cols)):
            low, high = max(first, start), min(last, end - 1)
            if low > high:
                continue
            a, b = axis_index(low, start=start, block=block), axis_index(high, start=start, block=block)
            span = {f"{axis}0": a - 0.5, f"{axis}1": b + 0.5}
            other = "y" if axis == "x" else "x"
            extent = {f"{other}0": -0.5, f"{other}1": across - 0.5}
            frames[(axis, a, b)] = {"type": "rect", "xref": "x", "yref": "y", **span, **extent, "line": MARK_LINE,
                                    "fillcolor": "rgba(0, 0, 0, 0)", "layer": "above"}
    return list(frames.values())


@dataclass
class Thumbnail:
    layer: int
    head: int
    values: np.ndarray  # (r, c) pooled weights of the head, NaN = no visible cell
    entropy: float  # mean row entropy, nats
    max_weight: float  # mean largest weight per row


ARRANGEMENTS = ("auto", "table", "flat")  # head_grid: layers x heads with axis ticks, or a grid of labelled tiles
GRID_WIDTH_PX = 1200  # plotting width a head grid aims for; tiles shrink to fit it, down to GRID_MIN_TILE_PX
GRID_MIN_TILE_PX = 24  # the smallest tile: still a readable thumbnail and a click target (32 layers x 32 heads: 33 px)
GRID_MAX_TILE_PX = 140  # the largest tile (a few heads of one layer)
GRID_GAP_PX = 4  # between tiles
GRID_LABEL_PX = 14  # the band above each tile that holds its label (flat arrangement), font 10 px
GRID_COLORBAR_PX = 90  # right margin: the entropy colour bar


def head_grid(
    thumbnails: Sequence[Thumbnail],
    *,
    n_cols: int,
    sort_by_entropy: bool,
    title: str,
    arrangement: str = "auto",
    scale: str = "linear",
) -> go.Figure:
    """All heads as a grid of small maps, each framed in the colour of its mean entropy.

    Two arrangements: "table" puts layers in columns and heads in rows (a wide, short figure for every layer of a
    model) and labels them by the axes' ticks; "flat" fills rows of n_cols tiles in the given (or entropy) order and
    labels each tile in a band above it. "auto" takes the table when the thumbnails span several layers and are not
    sorted by entropy. The figure's width and height are set from the mosaic (tiles as large as GRID_WIDTH_PX allows,
    within GRID_MIN_TILE_PX..GRID_MAX_TILE_PX), so plotly leaves no blank band; a page should draw it at that width
    (st.plotly_chart(..., width="content")).

    Each tile is scaled to its own range so structure shows in every head: under scale "linear" its weights over
    its maximum, "log" its log10 weights (colour_values) from the tile's lowest to its highest, "row" each row over
    the row's largest. One invisible point sits at the
    centre of each tile and carries customdata [layer, head]; with hoverdistance=-1 a click anywhere in a tile
    selects that point, which is how the app learns which head to open (plotly heatmaps emit no selections).
    """
    if not thumbnails:
        raise ValueError("head_grid needs at least one thumbnail.")
    if arrangement not in ARRANGEMENTS:
        raise ValueError(f"arrangement={arrangement!r} is not one of {', '.join(ARRANGEMENTS)}.")
    order = sorted(thumbnails, key=lambda t: t.entropy) if sort_by_entropy else list(thumbnails)
    layers = sorted({t.layer for t in order})
    table = arrangement == "table" or (arrangement == "auto" and len(layers) > 1 and not sort_by_entropy)
    if table:
        heads = sorted({t.head for t in order})
        places = [(heads.index(t.head), layers.index(t.layer)) for t in order]
        n_rows, n_cols = len(heads), len(layers)
    else:
        places = [divmod(index, n_cols) for index in range(len(order))]
        n_rows = math.ceil(len(order) / n_cols)
    size = max(max(t.values.shape) for t in order)
    tile_px = min(max(GRID_WIDTH_PX / n_cols - GRID_GAP_PX, GRID_MIN_TILE_PX), GRID_MAX_TILE_PX)
    gap = max(1, round(GRID_GAP_PX * size / tile_px))  # cells between tiles
    px_per_cell = (tile_px + GRID_GAP_PX) / (size + gap)  # so that a tile and its gap take tile_px + GRID_GAP_PX
    label = 0 if table else math.ceil(GRID_LABEL_PX / px_per_cell)
    pitch_x, pitch_y = size + gap, size + gap + label
    mosaic = np.full((n_rows * pitch_y, n_cols * pitch_x), np.nan)
    centers_x, centers_y, custom, hover, entropies = [], [], [], [], []
    shapes, annotations = [], []
    entropy_values = np.array([t.entropy for t in order])
    low, high = float(entropy_values.min()), float(entropy_values.max())
    frame_width = 2 if tile_px < 48 else 3
    for thumb, (row, col) in zip(order, places):
        top, left = row * pitch_y + label + gap // 2, col * pitch_x + gap // 2
        tile = _tile_colours(thumb.values, scale)
        mosaic[top : top + tile.shape[0], left : left + tile.shape[1]] = tile
        centers_x.append(left + tile.shape[1] / 2 - 0.5)
        centers_y.append(top + tile.shape[0] / 2 - 0.5)
        custom.append([thumb.layer, thumb.head])
        entropies.append(thumb.entropy)
        hover.append(f"layer {thumb.layer} head {thumb.head}<br>entropy {thumb.entropy:.3f} nats<br>"
                     f"mean max weight {thumb.max_weight:.3f}<br>click to open")
        shapes.append({"type": "rect", "x0": left - 0.5, "x1": left + tile.shape[1] - 0.5, "y0": top - 0.5,
                       "y1": top + tile.shape[0] - 0.5, "line": {"width": frame_width,
                       "color": _colour_at(ENTROPY_SCALE, (thumb.entropy - low) / (high - low or 1.0))}})
        if not table:
            annotations.append({"x": left + tile.shape[1] / 2 - 0.5, "y": top - 0.5,
                                "text": f"L{thumb.layer} H{thumb.head}", "showarrow": False, "yanchor": "bottom",
                                "font": {"size": 10}})
    figure = go.Figure()
    figure.add_trace(go.Heatmap(z=mosaic, colorscale=WEIGHT_SCALE, showscale=False, hoverinfo="skip"))
    figure.add_trace(go.Scatter(
        x=centers_x, y=centers_y, mode="markers", customdata=custom, text=hover, hovertemplate="%{text}<extra></extra>",
        marker={"size": 14, "color": entropies, "colorscale": ENTROPY_SCALE, "opacity": 0.0, "showscale": True,
                "colorbar": {"title": {"text": "entropy (nats)", "side": "right"}, "thickness": 12, "len": 1.0,
                             "x": 1.0, "xanchor": "left", "xpad": 8}},
        unselected={"marker": {"opacity": 0.0}}, selected={"marker": {"opacity": 0.0}}, showlegend=False,
        name="heads",
    ))
    plot_width, plot_height = n_cols * pitch_x * px_per_cell, n_rows * pitch_y * px_per_cell
    margin = {"l": 10, "r": GRID_COLORBAR_PX, "t": 45, "b": 10}
    figure.update_xaxes(range=[-0.5, n_cols * pitch_x - 0.5], showgrid=False, zeroline=False)
    figure.update_yaxes(range=[n_rows * pitch_y - 0.5, -0.5], showgrid=False, zeroline=False)
    if table:
        margin.update(l=55, b=45)
        figure.update_xaxes(title="layer", tickmode="array", ticks="",
                            tickvals=[col * pitch_x + gap // 2 + size / 2 - 0.5 for col in range(n_cols)],
                            ticktext=[str(layer) for layer in layers])
        figure.update_yaxes(title="head", tickmode="array", ticks="",
                            tickvals=[row * pitch_y + gap // 2 + size / 2 - 0.5 for row in range(n_rows)],
                            ticktext=[str(head) for head in heads])
    else:
        figure.update_xaxes(visible=False)
        figure.update_yaxes(visible=False)
    figure.update_layout(
        title=escape(title), shapes=shapes, annotations=annotations, hovermode="closest", hoverdistance=-1,
        clickmode="event+select", dragmode=False, margin=margin,
        width=round(plot_width) + margin["l"] + margin["r"], height=round(plot_height) + margin["t"] + margin["b"],
    )
    return figure


def _tile_colours(values: np.ndarray, scale: str) -> np.ndarray:
    """A thumbnail's values in [0, 1] under a colour scale, scaled to the tile's own range; NaN stays NaN."""
    z, _ = colour_values(values, scale)
    if scale == "row" or not np.isfinite(z).any():
        return z
    low = float(np.nanmin(z)) if scale == "log" else 0.0
    high = float(np.nanmax(z))
    return (z - low) / (high - low) if high > low else np.where(np.isfinite(z), float(high > 0), np.nan)


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
