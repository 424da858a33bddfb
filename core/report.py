"""Exports: a figure's data as a table, and one self-contained HTML report with every figure of a page.

The report opens offline, without attnscope, and carries plotly.js once. plotly.js is 4.8 MB of JavaScript, almost all
of a report, so it travels gzip-compressed and base64-encoded (1.96 MB for plotly.js 4.1.1) and the browser unpacks it
with the standard DecompressionStream (Chrome and Edge 80+, Firefox 113+, Safari 16.4+) before drawing the figures;
a browser without it shows one line saying so. Each figure is embedded as plotly JSON, numpy data as plotly's
typed arrays (base64 of the raw values, about 11 characters per float64 where JSON text takes up to 24), and the
layout template every plotly figure carries (6.5 kB) once per report instead of once per figure. Every string that
reaches the HTML is escaped; JSON inside a script element is written with <, > and / escaped, so no string can end it.
"""

from __future__ import annotations

import base64
import functools
import gzip
import html
import re
from collections.abc import Sequence
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import plotly.graph_objects as go

DEFAULT_HEIGHT = 450  # plotly's own default height (px), for a figure whose layout sets none
NO_DECOMPRESSION = ("This browser cannot unpack the report's charts (it has no DecompressionStream): open the file "
                    "in a current Chrome, Edge, Firefox or Safari.")
NO_SCRIPT = "The charts need JavaScript: open the file in a browser with JavaScript turned on."

# Unpacks plotly.js, runs it as a classic script (it defines window.Plotly), then draws each figure in page order.
_LOADER = """(async () => {
  const note = document.getElementById("attnscope-note");
  const say = (text) => { note.textContent = text; note.hidden = false; };
  if (typeof DecompressionStream !== "function") { say(note.dataset.missing); return; }
  try {
    const packed = atob(document.getElementById("attnscope-plotly").textContent.trim());
    const bytes = new Uint8Array(packed.length);
    for (let i = 0; i < packed.length; i++) bytes[i] = packed.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    const library = document.createElement("script");
    library.textContent = await new Response(stream).text();
    window.PlotlyConfig = {MathJaxConfig: "local"};
    document.head.appendChild(library);
    const templates = JSON.parse(document.getElementById("attnscope-templates").textContent);
    for (const div of document.querySelectorAll("div[data-attnscope-figure]")) {
      const figure = JSON.parse(document.getElementById(div.id + "-json").textContent);
      if (div.dataset.template !== undefined) figure.layout.template = templates[Number(div.dataset.template)];
      await Plotly.newPlot(div, figure.data, figure.layout, {responsive: true});
    }
  } catch (error) {
    say("The charts could not be drawn (" + error + "): the file may be damaged; build the report again.");
  }
})();"""


def _axis_title(layout: dict, axis: str) -> str:
    """Plain text of the title of axis "x", "y2", ... of a layout given as plotly JSON ("" when it has none)."""
    title = layout.get(f"{axis[0]}axis{axis[1:]}", {}).get("title", "")
    text = title.get("text", "") if isinstance(title, dict) else title
    return " ".join(html.unescape(re.sub(r"<[^>]*>", " ", str(text or ""))).split())


def _heatmap_columns(layout: dict, trace) -> tuple[str, str]:
    """Column names for a heatmap's x and y: its axes' titles (e.g. "key position", "query position") when both have
    distinct ones that clash with no other column, else "x" and "y"."""
    x_name = _axis_title(layout, getattr(trace, "xaxis", None) or "x")
    y_name = _axis_title(layout, getattr(trace, "yaxis", None) or "y")
    if not x_name or not y_name or x_name == y_name or {x_name, y_name} & {"trace", "value"}:
        return "x", "y"
    return x_name, y_name


def figure_table(figure: go.Figure) -> pd.DataFrame:
    """Every trace's data in long form: one row per point (columns trace, x, y) or per heatmap cell (columns trace,
    the x axis's title, the y axis's title, value; x and y where an axis has no title)."""
    layout = figure.layout.to_plotly_json()
    rows = []
    for index, trace in enumerate(figure.data):
        name = trace.name or f"trace {index}"
        z = getattr(trace, "z", None)
        if z is not None:
            z = np.asarray(z, dtype=np.float64)
            x_name, y_name = _heatmap_columns(layout, trace)
            xs = trace.x if trace.x is not None else range(z.shape[1])
            ys = trace.y if trace.y is not None else range(z.shape[0])
            rows += [{"trace": name, x_name: x, y_name: y, "value": z[i, j]}
                     for i, y in enumerate(ys) for j, x in enumerate(xs)]
            continue
        xs, ys = getattr(trace, "x", None), getattr(trace, "y", None)
        if ys is None:
            continue
        xs = range(len(ys)) if xs is None else xs
        rows += [{"trace": name, "x": x, "y": y} for x, y in zip(xs, ys)]
    return pd.DataFrame(rows)


@functools.lru_cache(maxsize=1)
def packed_plotlyjs() -> tuple[str, str]:
    """(version, plotly.js gzip-compressed at level 9 and base64-encoded); computed once per process (about a
    second), byte for byte the same every time (no timestamp in the gzip header)."""
    from plotly.offline import get_plotlyjs, get_plotlyjs_version

    packed = gzip.compress(get_plotlyjs().encode("utf-8"), compresslevel=9, mtime=0)
    return get_plotlyjs_version(), base64.b64encode(packed).decode("ascii")


def _figure_parts(index: int, figure: go.Figure, templates: list[str]) -> list[str]:
    """A figure's placeholder div and its JSON without the layout template, which joins `templates` (once). plotly's
    JSON writes numpy arrays as typed arrays and <, > and / escaped (\\u003c, ...), so no string inside a script
    element can end it."""
    from plotly.io.json import to_json_plotly

    payload = figure.to_dict()
    template = payload["layout"].pop("template", None)
    reference = ""
    if template is not None:
        text = to_json_plotly(template)
        if text not in templates:
            templates.append(text)
        reference = f' data-template="{templates.index(text)}"'
    height = int(figure.layout.height or DEFAULT_HEIGHT)
    width = f"{int(figure.layout.width)}px" if figure.layout.width else "100%"
    return [f'<div id="attnscope-figure-{index}" class="plotly-graph-div" data-attnscope-figure{reference} '
            f'style="height:{height}px;width:{width}"></div>',
            f'<script type="application/json" id="attnscope-figure-{index}-json">{to_json_plotly(payload)}</script>']


def build_report(title: str, settings: dict[str, object], figures: Sequence[tuple[str, go.Figure]],
                 findings: Sequence = ()) -> str:
    """One HTML file: the settings table, the findings (claim beside measurement), then every figure (interactive),
    plotly.js included once, compressed (see the module docstring).

    Args:
        title: the page title and heading (plain text).
        settings: name -> value, shown as a table (values as text).
        figures: (heading, plotly figure) in page order.
        findings: attnscope.studies.base.Finding objects.

    Returns:
        The HTML document as a string; about 2 MB for one small figure, plotly.js being 1.96 MB of it.
    """
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:left;vertical-align:top}table{border-collapse:collapse}pre{white-space:pre-wrap;margin:0}"
        ".attnscope-note{color:#a00;font-weight:bold}</style>",
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
    if figures:
        parts += [f"<noscript><p class='attnscope-note'>{html.escape(NO_SCRIPT)}</p></noscript>",
                  f"<p id='attnscope-note' class='attnscope-note' data-missing='{html.escape(NO_DECOMPRESSION)}' "
                  "hidden></p>"]
        templates: list[str] = []
        for index, (name, figure) in enumerate(figures):
            parts.append(f"<h2>{html.escape(name)}</h2>")
            parts += _figure_parts(index, figure, templates)
        version, packed = packed_plotlyjs()
        parts += [f'<script type="application/json" id="attnscope-templates">[{",".join(templates)}]</script>',
                  f"<!-- plotly.js v{html.escape(version)}, gzip-compressed and base64-encoded: the script below "
                  "unpacks it with DecompressionStream -->",
                  f'<script type="application/octet-stream" id="attnscope-plotly">{packed}</script>',
                  f"<script>{_LOADER}</script>"]
    parts.append("</body></html>")
    return "\n".join(parts)
