"""Long attention maps: exact windows of a head (attention_window, the zoom of attnscope.maps), colour scales, axes
that end at the text, tile labels naming their tokens, marks, the compact head grid, and the token search."""

import json
import math
from dataclasses import fields, replace

import numpy as np
import pytest
import torch

import attnscope
from attnscope import cli
from attnscope import settings as S
from attnscope.analyses import maps as analysis
from attnscope.capture import LayerCapture, run_with_capture
from attnscope.figures import maps as figures
from attnscope.studies import maps as study
from attnscope.studies.base import Source, open_result
from attnscope.tokens import MAX_NEEDLE_CHARS, Tokens, find
from tests.unit.tiny_models import VOCAB, build, handle, padded_bert_layer

IDS = torch.randint(0, VOCAB, (1, 75), generator=torch.Generator().manual_seed(7))[0].tolist()


# ---- attention_window against the layer's own probabilities --------------------------------------------------------


def _captured(family: str, layer: int, length: int = 75):
    ids = torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(length))
    return run_with_capture(build(family), ids).layer(layer)


def _padded_bert():
    return padded_bert_layer(length=40, padded_from=31)


def _per_head_mask_softcap():
    plain = _captured("llama", 2, 70)
    per_head = torch.rand(1, 6, 70, 70, generator=torch.Generator().manual_seed(5)) > 0.6
    per_head[:, 2, 10] = False  # a row of head 2 that sees nothing
    return replace(plain, mask=per_head, causal=False, softcap=0.7)


LAYERS = {  # name -> a captured layer of each rule
    "llama-causal-gqa": lambda: _captured("llama", 1),
    "bert-bidirectional": lambda: _captured("bert", 1),
    "gemma2-sliding-softcap": lambda: _captured("gemma2", 0),
    "gemma2-global-softcap": lambda: _captured("gemma2", 1),
    "gpt-oss-sinks-sliding": lambda: _captured("gpt_oss", 0),
    "gpt-oss-sinks-global": lambda: _captured("gpt_oss", 1),
    "bert-padding-mask": _padded_bert,
    "llama-per-head-mask-softcap": _per_head_mask_softcap,
}
RANGES = [((0, 1), (0, 1)), ((0, 40), (0, 40)), ((39, 40), (0, 40)), ((3, 37), (11, 12)), ((10, 33), (5, 39)),
          ((17, 18), (17, 18))]


@pytest.mark.parametrize("name", list(LAYERS))
def test_window_is_the_same_cells_of_the_layers_probabilities(name, monkeypatch):
    monkeypatch.setattr(analysis, "WINDOW_ROWS", 7)  # several row chunks, one cut inside each range
    layer = LAYERS[name]()
    n = min(layer.q.shape[2], layer.k.shape[2])
    assert name != "gemma2-sliding-softcap" or (layer.window is not None and layer.softcap is not None)
    assert not name.startswith("gpt-oss") or layer.sinks is not None
    for head in (0, layer.n_heads - 1, 2):
        full = layer.probs([head])[0, 0]
        visible = layer.visible()[0]
        visible = visible[head if visible.shape[0] > 1 else 0]
        expected = full.masked_fill(~visible, float("nan"))
        for queries, keys in RANGES:
            queries, keys = (min(queries[0], n - 1), min(queries[1], n)), (min(keys[0], n - 1), min(keys[1], n))
            got = analysis.attention_window(layer, head=head, queries=queries, keys=keys)
            assert got.shape == (queries[1] - queries[0], keys[1] - keys[0]) and got.dtype == torch.float32
            torch.testing.assert_close(got, expected[queries[0]:queries[1], keys[0]:keys[1]], equal_nan=True,
                                       msg=lambda m: f"{name} head {head} {queries} x {keys}: {m}")


def _written_out(q, k, *, scale, causal, window=None, softcap=None, sinks=None, mask=None) -> np.ndarray:
    """(Hq, T, S) softmax weights in fp64, cell by cell: the rule, the cap and the sink spelled out; NaN = hidden."""
    q, k = q[0].double().numpy(), k[0].double().numpy()
    n_heads, n_queries, _ = q.shape
    n_keys = k.shape[1]
    groups = n_heads // k.shape[0]
    out = np.full((n_heads, n_queries, n_keys), np.nan)
    for h in range(n_heads):
        for i in range(n_queries):
            seen, logits = [], []
            for j in range(n_keys):
                if mask is not None:
                    visible = bool(mask[0, h if mask.shape[1] > 1 else 0, i, j])
                else:
                    visible = not causal or (j <= i + n_keys - n_queries
                                             and (window is None or j > i + n_keys - n_queries - window))
                if visible:
                    logit = scale * float(np.dot(q[h, i], k[h // groups, j]))
                    seen.append(j)
                    logits.append(softcap * math.tanh(logit / softcap) if softcap is not None else logit)
            sink = [float(sinks[h])] if sinks is not None else []
            if not seen:
                continue
            top = max(logits + sink)
            denominator = sum(math.exp(x - top) for x in logits + sink)
            for j, logit in zip(seen, logits):
                out[h, i, j] = math.exp(logit - top) / denominator
    return out


RULES = {  # name -> LayerCapture keywords beyond q, k, v, scale
    "causal": dict(causal=True, mask=None),
    "bidirectional": dict(causal=False, mask=None),
    "window5": dict(causal=True, mask=None, window=5),
    "sinks": dict(causal=True, mask=None, sinks=torch.tensor([0.5, -1.0, 2.0, 0.0])),
    "softcap": dict(causal=False, mask=None, softcap=1.5),
    "window-sinks-softcap": dict(causal=True, mask=None, window=3, softcap=2.0,
                                 sinks=torch.tensor([1.0, 0.0, -2.0, 3.0])),
    "mask": dict(causal=False, mask=torch.rand(1, 4, 13, 21, generator=torch.Generator().manual_seed(2)) > 0.5),
}


@pytest.mark.parametrize("rule", list(RULES))
def test_window_matches_a_written_out_softmax(rule):
    generator = torch.Generator().manual_seed(11)
    q = torch.randn(1, 4, 13, 8, generator=generator) * 2  # 13 queries over 21 keys: bottom-right causal alignment
    k = torch.randn(1, 2, 21, 8, generator=generator) * 2
    layer = LayerCapture(q=q, k=k, v=torch.zeros(1, 2, 21, 8), scale=8 ** -0.5, **RULES[rule])
    expected = _written_out(q, k, scale=layer.scale, causal=layer.causal, window=layer.window,
                            softcap=layer.softcap, sinks=layer.sinks, mask=layer.mask)
    assert np.isfinite(expected).any() and np.isnan(expected).any() == (rule not in ("bidirectional", "softcap"))
    for head in range(4):
        for queries, keys in [((0, 13), (0, 21)), ((12, 13), (20, 21)), ((4, 9), (2, 17))]:
            got = analysis.attention_window(layer, head=head, queries=queries, keys=keys).double().numpy()
            np.testing.assert_allclose(got, expected[head, queries[0]:queries[1], keys[0]:keys[1]], rtol=1e-5,
                                       atol=1e-7, equal_nan=True, err_msg=f"{rule} head {head} {queries} {keys}")


class _CountingLayer(LayerCapture):
    """A captured layer that records which query rows each probs call builds."""

    rows_asked: list

    def probs(self, heads=None, rows=None):
        type(self).rows_asked.append(rows)
        return super().probs(heads, rows)


def test_window_builds_rows_in_chunks_never_the_whole_map(monkeypatch):
    monkeypatch.setattr(analysis, "WINDOW_ROWS", 16)
    layer = _captured("llama", 1, 120)
    counting = _CountingLayer(**{f.name: getattr(layer, f.name) for f in fields(layer)})
    _CountingLayer.rows_asked = []
    analysis.attention_window(counting, head=3, queries=(5, 90), keys=(0, 10))
    asked = [(rows.start, rows.stop) for rows in _CountingLayer.rows_asked]
    assert asked == [(5, 21), (21, 37), (37, 53), (53, 69), (69, 85), (85, 90)]


def test_window_hides_the_sink_like_pooled_maps():
    layer = _captured("llama", 1, 30)
    hidden = analysis.attention_window(layer, head=1, queries=(0, 30), keys=(0, 30), hide_sink=True)
    pooled = analysis.pooled_map(layer, heads=[1], block=1, hide_sink=True).values[0]
    assert torch.isnan(hidden[:, 0]).all()
    torch.testing.assert_close(hidden, pooled, equal_nan=True, rtol=1e-5, atol=1e-7)
    kept = analysis.attention_window(layer, head=1, queries=(0, 30), keys=(1, 30), hide_sink=True)
    torch.testing.assert_close(kept, hidden[:, 1:], equal_nan=True)


@pytest.mark.parametrize("queries, keys, message", [
    ((5, 3), (0, 10), r"queries=\(5, 3\) is not a range of this text's 20 positions: give \(start, end\) with "
                      r"0 <= start < end <= 20, the end excluded\."),
    ((0, 21), (0, 10), r"queries=\(0, 21\)"),
    ((-1, 4), (0, 10), r"queries=\(-1, 4\)"),
    ((1.5, 4), (0, 10), r"queries=\(1.5, 4\)"),
    ("0:4", (0, 10), r"queries='0:4'"),
    ((0, 4), (7, 7), r"keys=\(7, 7\)"),
    ((0, 4), (0, 4, 8), r"keys=\(0, 4, 8\)"),
])
def test_window_refuses_ranges_outside_the_text_in_one_sentence(queries, keys, message):
    layer = _captured("llama", 0, 20)
    with pytest.raises(ValueError, match=message):
        analysis.attention_window(layer, head=0, queries=queries, keys=keys)


def test_window_refuses_a_head_that_does_not_exist():
    with pytest.raises(ValueError, match=r"Heads \[6\] do not exist"):
        analysis.attention_window(_captured("llama", 0, 20), head=6, queries=(0, 2), keys=(0, 2))


# ---- colour scales ------------------------------------------------------------------------------------------------


TOKENS = [f"t{i}" for i in range(6)]


def _weights() -> np.ndarray:
    """A causal 6 x 6 map with a zero weight, a weight below the log floor, and a row of one visible cell."""
    values = np.tril(np.full((6, 6), 0.2))
    values[0, 0] = 1.0
    values[2, :3] = [0.9, 1e-9, 0.0]
    values[3, :4] = [0.5, 0.25, 0.125, 0.125]
    return np.where(np.tril(np.ones((6, 6))) > 0, values, np.nan)


def test_log_scale_draws_log10_above_a_floor_and_hovers_the_real_weight():
    values = _weights()
    trace = figures.head_heatmap(values, tokens=TOKENS, block=1, title="t", scale="log").data[0]
    z = np.asarray(trace.z, dtype=float)
    assert np.array_equal(np.isnan(z), np.isnan(values)), "hidden cells stay blank"
    visible = ~np.isnan(values)
    np.testing.assert_allclose(z[visible], np.log10(np.maximum(values[visible], figures.LOG_FLOOR)))
    assert z[2, 1] == z[2, 2] == math.log10(figures.LOG_FLOOR) == trace.zmin, "1e-9 and 0 sit at the floor"
    assert trace.zmax == 0.0
    np.testing.assert_array_equal(np.asarray(trace.customdata, dtype=float), values)
    assert "%{customdata:.4g}" in trace.hovertemplate and "%{z" not in trace.hovertemplate
    assert list(trace.colorbar.tickvals) == list(range(-6, 1))
    assert list(trace.colorbar.ticktext) == ["10⁻⁶", "10⁻⁵", "10⁻⁴", "10⁻³", "10⁻²", "10⁻¹", "1"]


def test_log_scale_within_one_decade_ticks_its_ends():
    values = np.array([[0.3, 0.5], [0.4, 0.35]])
    trace = figures.head_heatmap(values, tokens=["a", "b"], block=1, title="t", scale="log").data[0]
    assert trace.zmin == pytest.approx(math.log10(0.3)) and trace.zmax == pytest.approx(math.log10(0.5))
    assert list(trace.colorbar.ticktext) == ["0.3", "0.5"]


def test_row_scale_divides_each_row_by_its_largest_visible_weight():
    values = _weights()
    values[4] = np.nan  # a row with no visible cell
    values[5, :] = [0.0, 0.0, 0.0, 0.0, 0.0, np.nan]  # visible, all zero
    trace = figures.head_heatmap(values, tokens=TOKENS, block=1, title="t", scale="row").data[0]
    z = np.asarray(trace.z, dtype=float)
    assert np.isnan(z[4]).all() and (z[5, :5] == 0).all() and np.isnan(z[5, 5])
    for row in (0, 1, 2, 3):
        seen = ~np.isnan(values[row])
        np.testing.assert_allclose(z[row, seen], values[row, seen] / values[row, seen].max())
        assert np.nanmax(z[row]) == 1.0
    np.testing.assert_allclose(z[3, :4], [1.0, 0.5, 0.25, 0.25])
    np.testing.assert_array_equal(np.asarray(trace.customdata, dtype=float), values)
    assert "%{customdata:.4g}" in trace.hovertemplate and "%{z:.1%} of the row's largest" in trace.hovertemplate
    assert (trace.zmin, trace.zmax) == (0.0, 1.0)


def test_linear_scale_is_the_weights_and_an_unknown_scale_is_refused():
    values = _weights()
    trace = figures.head_heatmap(values, tokens=TOKENS, block=1, title="t").data[0]
    np.testing.assert_array_equal(np.asarray(trace.z, dtype=float), values)
    assert trace.customdata is None
    with pytest.raises(ValueError, match="scale='sqrt' is not a colour scale: use one of linear, log, row."):
        figures.head_heatmap(values, tokens=TOKENS, block=1, title="t", scale="sqrt")


def test_pooled_row_scale_uses_the_tiles():
    values = np.array([[0.02, np.nan], [0.01, 0.04]])
    trace = figures.head_heatmap(values, tokens=[f"t{i}" for i in range(7)], block=4, title="t", scale="row").data[0]
    np.testing.assert_allclose(np.asarray(trace.z, dtype=float), [[1.0, np.nan], [0.25, 1.0]])
    assert "mean weight %{customdata:.4g}" in trace.hovertemplate


# ---- axes, labels and marks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_tokens, block", [(3000, 32), (100, 32), (97, 32), (33, 32), (5, 1)])
def test_axes_end_at_the_text(n_tokens, block):
    n = math.ceil(n_tokens / block)
    figure = figures.head_heatmap(np.ones((n, n)), tokens=[f"t{i}" for i in range(n_tokens)], block=block,
                                  title="t")
    x, y = figure.layout.xaxis, figure.layout.yaxis
    assert tuple(x.range) == (-0.5, n - 0.5) and tuple(y.range) == (n - 0.5, -0.5)
    assert x.type == y.type == "category" and x.constrain == y.constrain == "domain" and y.scaleanchor == "x"
    assert len(figure.data[0].x) == len(figure.data[0].y) == n


def test_pooled_tiles_name_their_range_and_first_and_last_tokens():
    tokens = [f"w{i}" for i in range(97)]
    tokens[0], tokens[31], tokens[96] = "<s>", "a&b", "␣end"
    figure = figures.head_heatmap(np.ones((4, 4)), tokens=tokens, block=32, title="t")
    trace = figure.data[0]
    assert list(trace.x) == ["keys 0-31: &lt;s&gt; … a&amp;b", "keys 32-63: w32 … w63", "keys 64-95: w64 … w95",
                             "key 96: ␣end"]
    assert list(trace.y) == [label.replace("keys", "queries").replace("key ", "query ") for label in trace.x]
    assert trace.hovertemplate.startswith("%{y}<br>%{x}<br>mean weight")
    assert list(figure.layout.xaxis.ticktext) == ["0", "32", "64", "96"]
    assert list(figure.layout.xaxis.tickvals) == list(trace.x)


def test_pooled_ticks_stay_few_and_on_tile_starts():
    figure = figures.head_heatmap(np.ones((94, 94)), tokens=[f"t{i}" for i in range(3000)], block=32, title="t")
    ticks = [int(t) for t in figure.layout.xaxis.ticktext]
    assert ticks == list(range(0, 3000, 320)) and len(ticks) <= figures.TICKS_PER_AXIS


def test_long_tokens_are_cut_in_tile_labels():
    tokens = ["x" * 40, "b", "c"]
    label = figures.span_labels(tokens, start=0, end=3, block=4, singular="key", plural="keys")
    assert label == ["keys 0-2: " + "x" * (figures.SPAN_TOKEN_CHARS - 1) + "… … c"]


def test_a_window_is_labelled_with_its_true_positions_and_tokens():
    tokens = [f"t{i}" for i in range(50)]
    figure = figures.head_heatmap(np.ones((3, 4)), tokens=tokens, block=1, title="t", queries=(10, 13),
                                  keys=(20, 24))
    assert list(figure.data[0].y) == ["10:t10", "11:t11", "12:t12"]
    assert list(figure.data[0].x) == ["20:t20", "21:t21", "22:t22", "23:t23"]
    assert tuple(figure.layout.xaxis.range) == (-0.5, 3.5) and tuple(figure.layout.yaxis.range) == (2.5, -0.5)
    with pytest.raises(ValueError, match="labels give"):
        figures.head_heatmap(np.ones((3, 5)), tokens=tokens, block=1, title="t", queries=(10, 13), keys=(20, 24))
    with pytest.raises(ValueError, match="must lie within the 50 tokens"):
        figures.head_heatmap(np.ones((3, 4)), tokens=tokens, block=1, title="t", queries=(48, 51), keys=(20, 24))


def test_marks_frame_the_tiles_that_hold_them():
    tokens = [f"t{i}" for i in range(100)]
    figure = figures.head_heatmap(np.ones((4, 4)), tokens=tokens, block=32, title="t",
                                  marks=[70, (30, 40), 75, 99])
    columns = sorted((s.x0, s.x1) for s in figure.layout.shapes if s.y0 == -0.5 and s.y1 == 3.5)
    rows = sorted((s.y0, s.y1) for s in figure.layout.shapes if s.x0 == -0.5 and s.x1 == 3.5)
    assert columns == rows == [(-0.5, 1.5), (1.5, 2.5), (2.5, 3.5)], "70 and 75 share a tile: one frame"
    assert all(s.line.width == 1 for s in figure.layout.shapes)
    window = figures.head_heatmap(np.ones((3, 4)), tokens=tokens, block=1, title="t", queries=(10, 13),
                                  keys=(20, 24), marks=[(18, 21), 12, 50])
    columns = sorted((s.x0, s.x1) for s in window.layout.shapes if s.y0 == -0.5 and s.y1 == 2.5)
    rows = sorted((s.y0, s.y1) for s in window.layout.shapes if s.x0 == -0.5 and s.x1 == 3.5)
    assert columns == [(-0.5, 1.5)], "keys 20-21 of the span 18-21; 12 and 50 are not keys of the window"
    assert rows == [(1.5, 2.5)], "query 12; the span 18-21 and 50 are not queries of the window"


def test_unpooled_map_keeps_its_token_labels():
    figure = figures.head_heatmap(np.tril(np.ones((3, 3))), tokens=["<b>", "a", "b"], block=1, title="t")
    assert list(figure.data[0].x) == ["0:&lt;b&gt;", "1:a", "2:b"]
    assert figure.data[0].hovertemplate.startswith("query %{y}<br>key %{x}<br>weight")


# ---- head grid ----------------------------------------------------------------------------------------------------


def _thumbs(n_layers: int, n_heads: int, cells: int = 24) -> list[figures.Thumbnail]:
    rng = np.random.default_rng(0)
    return [figures.Thumbnail(layer=layer, head=head, values=rng.random((cells, cells)),
                              entropy=float(rng.random()), max_weight=0.5)
            for layer in range(n_layers) for head in range(n_heads)]


def _plot_box(figure) -> tuple[float, float]:
    margin = figure.layout.margin
    return figure.layout.width - margin.l - margin.r, figure.layout.height - margin.t - margin.b


def _units(axis) -> float:
    return abs(axis.range[1] - axis.range[0])


@pytest.mark.parametrize("n_layers, n_heads", [(30, 9), (32, 32), (2, 6)])
def test_every_layer_grid_is_a_layers_by_heads_table_sized_to_its_mosaic(n_layers, n_heads):
    figure = figures.head_grid(_thumbs(n_layers, n_heads), n_cols=n_heads, sort_by_entropy=False, title="All")
    width, height = _plot_box(figure)
    x_units, y_units = _units(figure.layout.xaxis), _units(figure.layout.yaxis)
    assert width / x_units == pytest.approx(height / y_units, rel=0.01), "square cells, no blank band"
    assert width > height or n_heads >= n_layers, "layers as columns: wide and short"
    assert width / n_layers >= figures.GRID_MIN_TILE_PX and width <= figures.GRID_WIDTH_PX + 1
    assert not figure.layout.annotations, "the axes label layers and heads, not each tile"
    assert list(figure.layout.xaxis.ticktext) == [str(layer) for layer in range(n_layers)]
    assert list(figure.layout.yaxis.ticktext) == [str(head) for head in range(n_heads)]
    points = next(t for t in figure.data if t.name == "heads")
    assert sorted(tuple(c) for c in points.customdata) == [(l, h) for l in range(n_layers) for h in range(n_heads)]
    mosaic = np.asarray(figure.data[0].z, dtype=float)
    for (layer, head), x, y, frame in zip(points.customdata, points.x, points.y, figure.layout.shapes):
        assert frame.x0 < x < frame.x1 and frame.y0 < y < frame.y1, "the click point lies in its own tile"
        assert np.isfinite(mosaic[round(y), round(x)])
        column = list(figure.layout.xaxis.ticktext).index(str(layer))
        row = list(figure.layout.yaxis.ticktext).index(str(head))
        assert abs(figure.layout.xaxis.tickvals[column] - x) <= 0.5
        assert abs(figure.layout.yaxis.tickvals[row] - y) <= 0.5


def test_thirty_layers_of_nine_heads_is_short():
    figure = figures.head_grid(_thumbs(30, 9), n_cols=9, sort_by_entropy=False, title="All")
    assert figure.layout.height < 500 and figure.layout.width <= 1400


def test_one_layer_grid_labels_each_tile_in_its_own_band():
    thumbs = _thumbs(1, 9, cells=48)
    figure = figures.head_grid(thumbs, n_cols=6, sort_by_entropy=False, title="Layer 0")
    width, height = _plot_box(figure)
    assert width / _units(figure.layout.xaxis) == pytest.approx(height / _units(figure.layout.yaxis), rel=0.01)
    assert [a.text for a in figure.layout.annotations] == [f"L0 H{h}" for h in range(9)]
    px_per_unit = height / _units(figure.layout.yaxis)
    frames = list(figure.layout.shapes)
    for index, label in enumerate(figure.layout.annotations):
        assert label.y == frames[index].y0 and label.yanchor == "bottom"
        above = index - 6
        room = (frames[index].y0 - (frames[above].y1 if above >= 0 else -0.5)) * px_per_unit
        assert room >= figures.GRID_LABEL_PX, f"label {label.text} has {room:.1f} px above its tile"
    points = next(t for t in figure.data if t.name == "heads")
    assert [tuple(c) for c in points.customdata] == [(0, h) for h in range(9)]


def test_sorted_grid_of_every_layer_stays_flat_and_refuses_unknown_arrangements():
    figure = figures.head_grid(_thumbs(3, 4), n_cols=4, sort_by_entropy=True, title="sorted")
    points = next(t for t in figure.data if t.name == "heads")
    entropies = [t.entropy for t in _thumbs(3, 4)]
    assert len(figure.layout.annotations) == 12 and list(points.marker.color) == sorted(entropies)
    with pytest.raises(ValueError, match="arrangement='spiral' is not one of auto, table, flat."):
        figures.head_grid(_thumbs(1, 2), n_cols=2, sort_by_entropy=False, title="t", arrangement="spiral")


def test_grid_tiles_follow_the_colour_scale_each_to_its_own_range():
    values = np.array([[1.0, np.nan], [1e-3, 1e-2]])
    thumbs = [figures.Thumbnail(layer=0, head=h, values=values * (h + 1) / 4, entropy=1.0, max_weight=0.5)
              for h in range(2)]
    for scale, expected in [("linear", [[1.0, np.nan], [1e-3, 1e-2]]), ("log", [[1.0, np.nan], [0.0, 1 / 3]]),
                            ("row", [[1.0, np.nan], [0.1, 1.0]])]:
        figure = figures.head_grid(thumbs, n_cols=2, sort_by_entropy=False, title="t", scale=scale)
        mosaic = np.asarray(figure.data[0].z, dtype=float)
        for frame in figure.layout.shapes:
            tile = mosaic[int(frame.y0 + 0.5):int(frame.y1 + 0.5), int(frame.x0 + 0.5):int(frame.x1 + 0.5)]
            np.testing.assert_allclose(tile, expected, rtol=1e-12, err_msg=scale)


def test_axis_boundary_lies_between_tiles():
    assert figures.axis_boundary(64, block=32) == 1.5 and figures.axis_boundary(5, block=1) == 4.5
    assert figures.axis_boundary(20, start=20, block=1) == -0.5
    assert figures.axis_index(63, block=32) == 1 and figures.axis_index(20, start=20, block=1) == 0


# ---- token search -------------------------------------------------------------------------------------------------


SENTENCE = ("<s>", "The", "␣cat", "␣sat", "␣on", "␣the", "␣mat", ".", "↵", "THE", "␣C", "AT", "⇥", "!")


@pytest.mark.parametrize("needle, expected", [
    ("the cat", [(1, 2), (9, 11)]),  # across tokens, across case, and a word split in two tokens
    ("cat", [(2, 2), (10, 11)]),
    (" the", [(5, 5)]),  # a leading space matches the visible-space marker, not the start of "The"
    ("␣the", [(5, 5)]),  # the marker itself is read as a space too
    (".\nthe", [(7, 9)]),  # a newline matches ↵
    ("at\t!", [(11, 13)]),
    ("mat.", [(6, 7)]),
    ("dog", []),
    ("the cat sat on the mat.\nthe cat\t!", [(1, 13)]),
    ("T", [(1, 1), (2, 2), (3, 3), (5, 5), (6, 6), (9, 9), (11, 11)]),  # at most one match starts in a token
])
def test_find_gives_the_token_span_of_every_occurrence(needle, expected):
    assert find(SENTENCE, needle) == expected
    assert find(Tokens(ids=tuple(range(len(SENTENCE))), strings=SENTENCE, n_text_tokens=14, truncated=False),
                needle) == expected


def test_find_is_bounded():
    many = ("␣a",) * 5000
    assert find(many, "a", max_matches=7) == [(i, i) for i in range(7)]
    assert len(find(many, "a")) == 100
    assert find(many, "a a") == [(i, i + 1) for i in range(100)]
    with pytest.raises(ValueError, match=f"has {MAX_NEEDLE_CHARS + 1} characters; search for at most"):
        find(many, "a" * (MAX_NEEDLE_CHARS + 1))
    with pytest.raises(ValueError, match="The search text is empty"):
        find(many, "")


def test_find_copes_with_empty_tokens_and_case_folding():
    assert find(("", "Stra", "", "ße", ""), "STRASSE") == [(1, 3)]
    assert find(("a", "", "b"), "ab") == [(0, 2)]


# ---- MapsResult and the zoom --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama():
    return handle("llama")


@pytest.mark.parametrize("family, layer", [("llama", 1), ("bert", 0), ("gemma2", 0), ("gpt_oss", 1)])
def test_zoom_is_the_same_cells_as_the_unpooled_map(family, layer):
    model = handle(family)
    full = attnscope.maps(model, IDS, layer=layer, heads=[0, 3])
    for queries, keys in [((17, 60), (3, 50)), ((74, 75), (0, 75)), ((0, 1), (0, 1))]:
        zoom = attnscope.maps(model, IDS, layer=layer, heads=[0, 3], queries=queries, keys=keys, cell_limit=75)
        assert zoom.block == 1 and (zoom.queries, zoom.keys) == (queries, keys) and zoom.zoomed
        np.testing.assert_allclose(zoom.values, full.values[:, queries[0]:queries[1], keys[0]:keys[1]], rtol=1e-5,
                                   atol=1e-7, equal_nan=True)
        np.testing.assert_array_equal(zoom.entropy, full.entropy)


def test_zoom_of_one_side_keeps_the_other_whole_and_hides_the_sink(llama):
    full = attnscope.maps(llama, IDS, layer=2, heads=[5], hide_sink=True)
    zoom = attnscope.maps(llama, IDS, layer=2, heads=[5], hide_sink=True, queries=(40, 60))
    assert zoom.keys == (0, 75) and zoom.values.shape == (1, 20, 75)
    np.testing.assert_allclose(zoom.values, full.values[:, 40:60], rtol=1e-5, atol=1e-7, equal_nan=True)
    assert np.isnan(zoom.values[..., 0]).all()


def test_zoom_larger_than_the_cell_limit_or_outside_the_text_is_refused(llama):
    with pytest.raises(ValueError, match=r"The zoom's keys 0:75 span 75 tokens, more than the cell limit of 32 per "
                                         r"side: narrow the range or raise the cell limit\."):
        attnscope.maps(llama, IDS, layer=0, queries=(0, 10), cell_limit=32)
    with pytest.raises(ValueError, match=r"queries=\(70, 80\) is not a range of this text's 75 positions"):
        attnscope.maps(llama, IDS, layer=0, queries=(70, 80), keys=(0, 10))
    with pytest.raises(ValueError, match=r"map_scale='dark' must be one of linear, log, row"):
        attnscope.maps(llama, IDS, layer=0, map_scale="dark")


def test_maps_without_a_zoom_are_the_pooled_maps_as_before(llama):
    result = attnscope.maps(llama, IDS, layer=1, heads=[2, 4], cell_limit=16, reduce="max")
    layer = run_with_capture(llama.module, torch.tensor([IDS])).layer(1)
    pooled = analysis.pooled_map(layer, heads=[2, 4], block=5, reduce="max").values.numpy()
    assert result.block == 5 and not result.zoomed and (result.query_start, result.key_start) == (0, 0)
    np.testing.assert_array_equal(result.values, pooled)
    assert (result.queries, result.keys) == ((0, 75), (0, 75))


def test_zoom_frames_tables_and_figures_use_true_positions(llama):
    zoom = attnscope.maps(llama, IDS, layer=1, heads=[2, 4], queries=(10, 14), keys=(3, 8), map_scale="row")
    frame = zoom.to_frame()
    assert list(frame.columns) == ["layer", "head", "query_start", "key_start", "block", "weight"]
    assert len(frame) == zoom.values.size and set(frame["query_start"]) == set(range(10, 14))
    assert set(frame["key_start"]) == set(range(3, 8))
    row = frame[(frame["head"] == 4) & (frame["query_start"] == 12) & (frame["key_start"] == 5)]
    assert row["weight"].item() == zoom.values[1, 2, 2]
    matrix = zoom.matrix_frame(head=4)
    assert list(matrix.index) == [f"query {i}: t{IDS[i]}" for i in range(10, 14)]
    assert list(matrix.columns) == [f"key {j}: t{IDS[j]}" for j in range(3, 8)]
    np.testing.assert_array_equal(matrix.to_numpy(), zoom.values[1])
    assert matrix.to_csv().splitlines()[0] == "query," + ",".join(matrix.columns)
    with pytest.raises(ValueError, match="Head 3 is not in these maps; they hold heads 2, 4."):
        zoom.matrix_frame(head=3)
    figure = zoom.figures()["attention-map-layer1-head4"]
    assert figure.layout.title.text == "Layer 1, head 4, queries 10-13 × keys 3-7"
    assert list(figure.data[0].y) == [f"{i}:t{IDS[i]}" for i in range(10, 14)]
    assert "of the row's largest" in figure.data[0].hovertemplate, "the result's own scale"
    linear = zoom.figures(scale="linear", marks=[(5, 6)])["attention-map-layer1-head4"]
    assert linear.data[0].customdata is None and len(linear.layout.shapes) == 1
    assert "keys 3-7" in zoom.findings()[0].text()


def test_pooled_matrix_frame_labels_tiles(llama):
    result = attnscope.maps(llama, IDS, layer=0, heads=[1], cell_limit=8)  # block 10: tiles 0-9 ... 70-74
    matrix = result.matrix_frame(head=1)
    assert matrix.shape == (8, 8)
    assert matrix.index[0] == f"queries 0-9: t{IDS[0]} … t{IDS[9]}"
    assert matrix.columns[-1] == f"keys 70-74: t{IDS[70]} … t{IDS[74]}"


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_zoom_survives_save_and_open(llama, tmp_path, suffix):
    zoom = attnscope.maps(llama, IDS, layer=1, heads=[0], queries=(30, 41), keys=(2, 9), map_scale="linear")
    again = open_result(zoom.save(tmp_path / f"zoom{suffix}"))
    assert (again.query_start, again.key_start, again.scale) == (30, 2, "linear")
    assert (again.queries, again.keys) == ((30, 41), (2, 9))
    np.testing.assert_array_equal(again.values, zoom.values)
    assert again.meta["queries"] == (30, 41) and again.meta["map_scale"] == "linear"


def test_results_saved_before_zooms_still_open(llama, tmp_path):
    result = attnscope.maps(llama, IDS, layer=0, heads=[0], cell_limit=32)
    payload = json.loads(result.to_json())
    for name in ("query_start", "key_start", "scale"):
        del payload["result"]["fields"][name]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(payload))
    old = open_result(path)
    assert (old.query_start, old.key_start, old.scale) == (0, 0, S.default("map_scale"))
    assert not old.zoomed and old.figures()  # draws with the default scale


# ---- settings, API and CLI ----------------------------------------------------------------------------------------


def test_settings_declare_the_colour_scale_and_the_zoom():
    scale = S.setting("map_scale")
    assert scale.default in figures.SCALES
    assert scale.url and all(scale.domain.label(v) for v in figures.SCALES)
    for key in ("queries", "keys"):
        span = S.setting(key)
        assert span.default is None and span.parse("100:356") == (100, 356) and span.parse("all") is None
        assert span.format((100, 356)) == "100:356" and span.format(None) == "all"
        for bad in ("5:3", "1:1", "a:b", "-1:4", "3"):
            with pytest.raises(ValueError, match="must be start:end"):
                span.parse(bad)


def test_cli_reads_the_zoom_and_the_scale():
    args = cli.parser().parse_args(["maps", "--text", "x", "--queries", "100:356", "--keys", "0:256",
                                    "--map-scale", "row"])
    assert (args.queries, args.keys, args.map_scale) == ((100, 356), (0, 256), "row")
    plain = cli.parser().parse_args(["maps", "--text", "x"])
    assert (plain.queries, plain.keys, plain.map_scale) == (None, None, S.default("map_scale"))
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["maps", "--text", "x", "--queries", "9:3"])


def test_api_maps_passes_the_zoom_through(llama):
    direct = study.maps(Source(llama), IDS, cut=llama.cut(), layer=0, heads=[1], queries=(5, 9), keys=(0, 4))
    api = attnscope.maps(llama, IDS, layer=0, heads=[1], queries=(5, 9), keys=(0, 4))
    np.testing.assert_array_equal(api.values, direct.values)
    assert api.queries == (5, 9) and api.keys == (0, 4)


# ---- the packaged real model --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_zoom_and_search_on_its_own_tokens():
    """SmolLM2 (byte-level BPE: tokens decode with their spaces): the search finds a phrase across tokens, and the
    zoom around it equals the same cells of the unpooled map of the whole text."""
    model = attnscope.load("smollm2-135m")
    text = "The capital of France is Paris. " * 6 + "The capital of Italy is Rome."
    full = attnscope.maps(model, text, layer=3, heads=[0, 5])
    found = find(full.tokens, "capital of italy")
    assert len(found) == 1
    first, last = found[0]
    spelled = "".join(full.tokens[first:last + 1]).replace("␣", " ")
    assert spelled.strip().lower() == "capital of italy"
    assert len(find(full.tokens, "PARIS.")) == 6
    queries, keys = (first, len(full.tokens)), (0, last + 1)
    zoom = attnscope.maps(model, text, layer=3, heads=[0, 5], queries=queries, keys=keys)
    np.testing.assert_allclose(zoom.values, full.values[:, queries[0]:, :keys[1]], rtol=1e-5, atol=1e-7,
                               equal_nan=True)
    figure = zoom.figures(marks=found)["attention-map-layer3-head5"]
    assert figure.data[0].y[0] == f"{first}:{figures.escape(full.tokens[first])}"
    assert len(figure.layout.shapes) == 2  # the span's key columns and its query rows
