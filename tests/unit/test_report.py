"""core.report: tables from any figure, and a self-contained, escaped, compressed HTML report that still draws."""

import base64
import gzip
import json
import re

import numpy as np
import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from attnscope.figures.maps import stat_heatmap
from attnscope.report import build_report, figure_table, packed_plotlyjs
from attnscope.studies.base import Finding

HOSTILE = "<script>alert(1)</script>&"  # must reach the HTML only escaped


def _stat_figure(seed: int = 0) -> go.Figure:
    """A SmolLM2-sized (30 layers x 9 heads) statistic grid, the Compare page's usual figure."""
    return stat_heatmap(np.random.default_rng(seed).random((30, 9)), title=f"entropy {seed}", label="entropy (nats)")


def _figure_json(report: str) -> list[dict]:
    """Every embedded figure's JSON, in page order."""
    return [json.loads(text) for text in re.findall(
        r'<script type="application/json" id="attnscope-figure-\d+-json">(.*?)</script>', report, flags=re.S)]


def _typed(value) -> np.ndarray:
    """A plotly typed array ({"dtype", "bdata", "shape"}) or a JSON list, as a numpy array."""
    if isinstance(value, dict):
        shape = tuple(int(n) for n in str(value.get("shape", "-1")).split(","))
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).reshape(shape)
    return np.asarray(value, dtype=np.float64)


def test_figure_table_reads_lines_and_heatmaps():
    figure = go.Figure([go.Scatter(x=[1, 2], y=[3.0, 4.0], name="line"),
                        go.Heatmap(z=np.array([[1.0, 2.0], [3.0, 4.0]]), x=["a", "b"], y=["r", "s"], name="map")])
    table = figure_table(figure)
    assert table[table.trace == "line"][["x", "y"]].values.tolist() == [[1, 3.0], [2, 4.0]]
    heat = table[table.trace == "map"]
    assert heat[["x", "y", "value"]].values.tolist() == [["a", "r", 1.0], ["b", "r", 2.0], ["a", "s", 3.0],
                                                          ["b", "s", 4.0]]


def test_figure_table_names_heatmap_columns_after_the_axis_titles():
    pooled = go.Figure(go.Heatmap(z=np.array([[0.5, np.nan], [0.25, 0.75]]), x=[0, 2], y=[0, 2]))
    pooled.update_xaxes(title="key position (tiles of 2 tokens)")
    pooled.update_yaxes(title="query position (tiles of 2 tokens)")
    table = figure_table(pooled)
    assert list(table.columns) == ["trace", "key position (tiles of 2 tokens)", "query position (tiles of 2 tokens)",
                                   "value"]
    assert table.iloc[2].tolist()[1:] == [0, 2, 0.25]  # row 1 of z is the queries from position 2
    # titles with markup come out as plain text; a subplot's heatmap reads its own axes (x2, y2)
    figure = make_subplots(rows=1, cols=2)
    figure.add_trace(go.Heatmap(z=[[1.0]], name="left"), row=1, col=1)
    figure.add_trace(go.Heatmap(z=[[2.0]], name="right"), row=1, col=2)
    figure.update_xaxes(title="key <b>position</b> &amp; more", row=1, col=2)
    figure.update_yaxes(title="query position", row=1, col=2)
    table = figure_table(figure)
    assert table.set_index("trace").loc["right", ["key position & more", "query position", "value"]].tolist() == [
        0, 0, 2.0]
    assert table.set_index("trace").loc["left", ["x", "y", "value"]].tolist() == [0, 0, 1.0]
    # the same title on both axes, or one that clashes with another column, would be ambiguous: x and y stay
    for x_title, y_title in (("position", "position"), ("value", "query"), ("key", "")):
        clash = go.Figure(go.Heatmap(z=[[1.0]]))
        clash.update_layout(xaxis_title=x_title, yaxis_title=y_title)
        assert list(figure_table(clash).columns) == ["trace", "x", "y", "value"]


def test_report_escapes_every_string_and_keeps_every_figures_data():
    heat = go.Figure(go.Heatmap(z=np.array([[1.5, np.nan], [-2.0, 4.0]]), x=[HOSTILE, "b"], y=["r", "s"]))
    heat.update_layout(title=HOSTILE)
    line = go.Figure(go.Scatter(x=np.arange(3), y=np.array([0.25, 0.5, 0.125]), name=HOSTILE))
    bar = go.Figure(go.Bar(y=[3, 1]))
    finding = Finding(HOSTILE, HOSTILE + " measured", paper=HOSTILE + " paper")
    report = build_report(HOSTILE, {HOSTILE: HOSTILE}, [("first", heat), (HOSTILE, line), ("third", bar)],
                          findings=[finding])
    assert report.startswith("<!doctype html>") and report.rstrip().endswith("</html>")
    assert "alert(1)</script>" not in report and "<script>alert" not in report
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;&amp;"
    assert report.count(escaped) == 1 + 1 + 2 + 3 + 1  # title, heading, settings (key, value), findings, figure name
    # the only script elements are the report's own: one per figure, the template, plotly.js and its loader
    assert report.count("<script") == report.count("</script>") == 3 + 3
    assert report.count("plotly.js v") == 1 and report.count('class="plotly-graph-div"') == 3

    figures = _figure_json(report)
    assert len(figures) == 3
    z = figures[0]["data"][0]["z"]
    assert isinstance(z, dict) and z["dtype"] == "f8"  # numpy data as plotly's typed arrays
    np.testing.assert_array_equal(_typed(z), heat.data[0].z)  # NaN included
    assert figures[0]["data"][0]["x"][0] == HOSTILE and figures[0]["layout"]["title"]["text"] == HOSTILE
    np.testing.assert_array_equal(_typed(figures[1]["data"][0]["y"]), line.data[0].y)
    assert figures[1]["data"][0]["name"] == HOSTILE and _typed(figures[2]["data"][0]["y"]).tolist() == [3, 1]
    templates = json.loads(re.search(r'id="attnscope-templates">(.*?)</script>', report, flags=re.S).group(1))
    assert len(templates) == 1 and templates[0] == json.loads(go.Figure().to_json())["layout"]["template"]
    assert report.count('data-template="0"') == 3  # every figure's template, written once


def test_report_carries_plotly_js_compressed_and_stays_small():
    """Bounds from what was measured with plotly.js 4.1.1 (4.82 MB): gzip level 9 + base64 gives 1.96 MB, a report
    with one 30 x 9 grid 1.97 MB (4.83 MB when plotly.js was inlined as it is), each further grid 4.7 kB (11.6 kB
    when every figure carried its own 6.5 kB layout template; its data is 2.9 kB). The bounds are relative to the
    library, so a plotly.js update moves them with it: under half of plotly.js fails whenever the library is inlined
    uncompressed (gzip and base64 give about 0.41 of it), and 6 kB per further grid fails with a template each."""
    library = get_plotlyjs()
    version, packed = packed_plotlyjs()
    assert gzip.decompress(base64.b64decode(packed)).decode("utf-8") == library  # the browser runs this very code
    assert f"plotly.js v{version}" in build_report("t", {}, [("one", _stat_figure())])
    one = len(build_report("t", {}, [("one", _stat_figure())]).encode())
    six = len(build_report("t", {}, [(f"f{i}", _stat_figure(i)) for i in range(6)]).encode())
    assert one < len(library.encode()) / 2
    assert one - len(packed) < 20_000  # the page, one grid (3 kB of data) and the one template
    assert (six - one) / 5 < 6_000  # each further grid: its data and layout, no second template
    assert len(build_report("t", {"a": 1}, [])) < 5_000  # no figure, no plotly.js


@pytest.mark.slow
def test_report_draws_every_figure_in_a_real_browser_from_a_file(tmp_path):
    """chromium opens the report from a file:// URL (no server, no network): plotly.js unpacks and every figure is
    drawn, each in its own div with an SVG inside."""
    from playwright.sync_api import sync_playwright

    figures = [("grid", _stat_figure()),
               ("map", go.Figure(go.Heatmap(z=np.array([[1.0, np.nan], [0.4, 0.6]]), x=["&lt;a&gt;", "b"]),
                                 layout={"title": "m"})),
               ("line", go.Figure(go.Scatter(y=np.array([1.0, 3.0, 2.0]))))]
    path = tmp_path / "report.html"
    path.write_text(build_report("attnscope: browser check", {"text": HOSTILE}, figures), encoding="utf-8")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(path.as_uri())
            drawn = "document.querySelectorAll('.js-plotly-plot .main-svg').length > 0"
            page.wait_for_function(f"() => {drawn} || !document.getElementById('attnscope-note').hidden",
                                   timeout=60_000)
            page.wait_for_function(f"() => document.querySelectorAll('.js-plotly-plot').length === {len(figures)}",
                                   timeout=30_000)
            with_svg = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')]"
                                     ".filter(div => div.querySelector('svg.main-svg')).length")
            assert (with_svg, errors, page.locator("#attnscope-note").is_hidden()) == (len(figures), [], True)
            assert page.locator(".js-plotly-plot .gtitle").all_text_contents() == ["entropy 0", "m"]
        finally:
            browser.close()
