"""Exports: a figure's data as a table, and one self-contained HTML report with every figure of a page.

The report inlines plotly.js once (so it opens offline, without attnscope) and embeds each figure with its data, under
a table of the settings that produced it. Every string that reaches the HTML is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import plotly.graph_objects as go


def figure_table(figure: go.Figure) -> pd.DataFrame:
    """Every trace's data in long form: one row per point (x, y) or per heatmap cell (x, y, z)."""
    rows = []
    for index, trace in enumerate(figure.data):
        name = trace.name or f"trace {index}"
        z = getattr(trace, "z", None)
        if z is not None:
            z = np.asarray(z, dtype=np.float64)
            xs = trace.x if trace.x is not None else range(z.shape[1])
            ys = trace.y if trace.y is not None else range(z.shape[0])
            rows += [{"trace": name, "x": x, "y": y, "value": z[i, j]}
                     for i, y in enumerate(ys) for j, x in enumerate(xs)]
            continue
        xs, ys = getattr(trace, "x", None), getattr(trace, "y", None)
        if ys is None:
            continue
        xs = range(len(ys)) if xs is None else xs
        rows += [{"trace": name, "x": x, "y": y} for x, y in zip(xs, ys)]
    return pd.DataFrame(rows)


def build_report(title: str, settings: dict[str, object], figures: Sequence[tuple[str, go.Figure]],
                 findings: Sequence = ()) -> str:
    """One HTML file: the settings table, the findings (claim beside measurement), then every figure (interactive),
    plotly.js included once."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:left;vertical-align:top}table{border-collapse:collapse}pre{white-space:pre-wrap;margin:0}</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>attnscope report, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. {len(figures)} figure(s).</p>",
        "<h2>Settings</h2><table>",
    ]
    for key, value in settings.items():
        parts.append(f"<tr><th>{html.escape(str(key))}</th><td><pre>{html.escape(str(value))}</pre></td></tr>")
    parts.append("</table>")
    if findings:
        parts.append("<h2>Findings</h2><table><tr><th>topic</th><th>paper</th><th>measured here</th></tr>")
        parts += [f"<tr><td>{html.escape(f.topic)}</td><td>{html.escape(f.paper or '')}</td>"
                  f"<td>{html.escape(f.measured)}</td></tr>" for f in findings]
        parts.append("</table>")
    for index, (name, figure) in enumerate(figures):
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(figure.to_html(full_html=False, include_plotlyjs=index == 0, default_width="100%"))
    parts.append("</body></html>")
    return "\n".join(parts)
