"""core.report: tables from any figure, and a self-contained, escaped HTML report."""

import numpy as np
import plotly.graph_objects as go

from attnscope.report import build_report, figure_table


def test_figure_table_reads_lines_and_heatmaps():
    figure = go.Figure([go.Scatter(x=[1, 2], y=[3.0, 4.0], name="line"),
                        go.Heatmap(z=np.array([[1.0, 2.0], [3.0, 4.0]]), x=["a", "b"], y=["r", "s"], name="map")])
    table = figure_table(figure)
    assert table[table.trace == "line"][["x", "y"]].values.tolist() == [[1, 3.0], [2, 4.0]]
    heat = table[table.trace == "map"]
    assert heat[["x", "y", "value"]].values.tolist() == [["a", "r", 1.0], ["b", "r", 2.0], ["a", "s", 3.0],
                                                          ["b", "s", 4.0]]


def test_report_inlines_plotly_once_and_escapes_settings():
    figures = [("first", go.Figure(go.Scatter(y=[1, 2]))), ("<second>", go.Figure(go.Bar(y=[3])))]
    report = build_report("attnscope: test", {"text": "<script>alert(1)</script>"}, figures)
    assert report.startswith("<!doctype html>") and report.rstrip().endswith("</html>")
    assert report.count("plotly.js v") == 1  # the library is inlined once, not fetched
    assert "<script>alert(1)</script>" not in report and "&lt;script&gt;alert(1)&lt;/script&gt;" in report
    assert "<h2>&lt;second&gt;</h2>" in report
    assert report.count('class="plotly-graph-div"') == 2
