"""Plotly figures for a comparison of two runs: B - A on a diverging colour scale centred at 0, so a rise and a fall
of the same size get colours of the same strength and an unchanged cell is white. Pure functions, nothing displayed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from attnscope.figures.maps import escape, head_heatmap

DIFFERENCE_SCALE = "RdBu_r"  # red: B above A, blue: B below A, white: equal


def _symmetric_range(values: np.ndarray) -> dict:
    """zmin = -zmax = the largest |value| (1 when every value is 0 or missing), zmid = 0."""
    finite = np.abs(values[np.isfinite(values)])
    bound = float(finite.max()) if finite.size else 0.0
    bound = bound or 1.0
    return {"zmin": -bound, "zmax": bound, "zmid": 0.0}


def difference_heatmap(values: np.ndarray, *, columns: Sequence[str], title: str, label: str,
                       rows: Sequence[str] | None = None) -> go.Figure:
    """B - A of one statistic, layers (or pairs of layers) as rows.

    Args:
        values: (n_rows, len(columns)) differences; the columns are heads ("H0", ...) or one "mean over heads".
        columns: the column labels.
        title: figure title (plain text); label: the statistic's name, for the colour bar and the hover text.
        rows: the row labels (plain text), e.g. "A L6 / B L1" for a pair of layers; None: "L0", "L1", ...
    """
    rows = [f"L{layer}" for layer in range(len(values) if values.ndim else 0)] if rows is None else list(rows)
    if values.ndim != 2 or values.shape != (len(rows), len(columns)):
        raise ValueError(f"difference_heatmap: values have shape {values.shape}, labels give "
                         f"({len(rows)}, {len(columns)}).")
    figure = go.Figure(go.Heatmap(
        z=values, x=[escape(column) for column in columns], y=[escape(row) for row in rows],
        colorscale=DIFFERENCE_SCALE, colorbar={"title": f"B − A<br>{escape(label)}"}, **_symmetric_range(values),
        hovertemplate="%{y} %{x}<br>B − A " + escape(label) + " %{z:+.4g}<extra></extra>",
    ))
    figure.update_yaxes(autorange="reversed")
    figure.update_layout(title=escape(title), height=max(320, 60 + 22 * values.shape[0]),
                         margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return figure


def difference_map(values: np.ndarray, *, tokens: Sequence[str], block: int, title: str,
                   reduce: str = "mean") -> go.Figure:
    """B - A of one head's attention map, cell by cell (block 1) or tile by tile, drawn like head_heatmap.

    Args:
        values: (ceil(T/block), ceil(S/block)) differences of weights; NaN cells are drawn blank.
        tokens: the S key labels (both sides' token strings, or "a|b" where they differ).
        block: cells per tile side; title: figure title (plain text); reduce: how tiles were pooled.
    """
    figure = head_heatmap(values, tokens=tokens, block=block, title=title, reduce=reduce)
    where = "query %{y}<br>key %{x}" if block == 1 else "%{y}<br>%{x}"  # tile labels name their tokens
    pooled = "" if block == 1 else f" ({reduce} of each tile)"
    figure.data[0].update(colorscale=DIFFERENCE_SCALE, colorbar={"title": "B − A<br>weight"},
                          hovertemplate=f"{where}<br>B − A weight{pooled} %{{z:+.4f}}<extra></extra>",
                          **_symmetric_range(values))
    return figure
