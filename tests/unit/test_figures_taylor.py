"""core.figures.taylor: figures build from awkward inputs (inf, NaN, empty) and say what they left out."""

import numpy as np

from attnscope.figures import taylor as figures
from attnscope.kernels.taylor import logit_bin_edges


def test_error_vs_order_leaves_out_and_counts_non_finite_points():
    curve = figures.Curve("taylor", np.array([1.0, np.inf, 0.1, np.nan, 0.0]), low=np.zeros(5), high=np.ones(5))
    figure = figures.error_vs_order([curve], title="t", tolerance=1e-2)
    line = next(t for t in figure.data if t.name == "taylor")
    assert np.isnan(np.asarray(line.y, dtype=float)[[1, 3, 4]]).all()
    assert "3 non-finite points not drawn" in figure.layout.title.text
    assert figure.layout.yaxis.type == "log"


def test_order_needed_heatmap_marks_heads_that_never_get_there():
    needed = np.array([[0, 3], [-1, -1]])
    figure = figures.order_needed_heatmap(needed, max_order=10, tolerance=1e-2, error_at_max=np.ones((2, 2)),
                                          logit_min=-np.ones((2, 2)), logit_max=np.ones((2, 2)), title="t")
    reached, never = figure.data
    assert np.isnan(np.asarray(reached.z, dtype=float)[1]).all()
    assert np.asarray(never.z, dtype=float)[1].tolist() == [1.0, 1.0]
    assert "2 of 4 heads never below 0.01" in figure.layout.title.text
    assert never.text[1][0] == "never within 10"


def test_logit_histogram_trims_to_held_bins_and_handles_empty():
    edges = logit_bin_edges().numpy()
    counts = np.zeros(len(edges) - 1)
    counts[100] = 5
    figure = figures.logit_histogram(counts, edges, orders=[1, 10], clamp=(None, 5.0), title="t")
    bars = figure.data[0]
    assert len(bars.x) <= 6 and abs(sum(bars.y) - 1.0) < 1e-12
    assert len(figure.data) == 3
    empty = figures.logit_histogram(np.zeros(len(edges) - 1), edges, orders=[1], clamp=None, title="t")
    assert "no visible logits" in empty.layout.title.text


def test_row_weights_draws_only_visible_keys_and_escapes_tokens():
    softmax = np.array([0.5, 0.5, np.nan])
    figure = figures.row_weights(np.array([1.0, 1.0, np.nan]), softmax, np.array([0.6, 0.4, np.nan]),
                                 tokens=["<b>", "a", "b"], order=2, denominator_label="÷ sum", title="t")
    assert list(figure.data[0].x) == [0, 1]
    assert figure.data[0].customdata[0][0] == "&lt;b&gt;"


def test_loss_vs_order_reports_non_finite_losses():
    figure = figures.loss_vs_order([1, 2], [np.inf, 3.0], references={"model": 2.0, "broken": np.nan}, title="t")
    assert "1 order gave a non-finite loss" in figure.layout.title.text
    assert len(figure.layout.shapes) == 1
