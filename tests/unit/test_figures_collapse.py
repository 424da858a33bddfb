"""core.figures.collapse: figures build from one head or many, and mark what they could not reach."""

import numpy as np

from attnscope.figures import collapse as figures


def test_vanishing_draws_reference_lines_and_caps_the_useless_band():
    lengths = [32, 64, 128]
    values = np.random.default_rng(0).uniform(0.1, 0.9, (3, 10))
    figure = figures.vanishing(lengths, values, values, values, np.full((3, 10), 1e-40), np.full((3, 10), 1e40),
                               title="t")
    reference = next(t for t in figure.data if t.name == "1/L (uniform)")
    np.testing.assert_allclose(reference.y, [1 / 32, 1 / 64, 1 / 128])
    upper = next(t for t in figure.data if (t.name or "").startswith("Corollary 1 upper"))
    assert max(upper.y) == 1.0
    one_head = figures.vanishing(lengths, values[:, :1], values[:, :1], values[:, :1], values[:, :1], values[:, :1],
                                 title="t")
    assert not any((t.name or "").endswith("(median)") for t in one_head.data)


def test_critical_n_marks_lengths_where_it_was_not_reached():
    figure = figures.critical_n([32, 64], {"d_sum": [None, 8], "d_norm": [1, 2]}, largest_n=[20, 32], fraction=0.06,
                                title="t")
    never = next(t for t in figure.data if t.name == "d_sum: not reached")
    assert list(never.y[:1]) == [20] and np.isnan(never.y[1])
    assert not any(t.name == "d_norm: not reached" for t in figure.data)


def test_distinguishability_and_temperature_figures():
    ratio = np.random.default_rng(1).uniform(0, 1, (3, 12))
    figure = figures.distinguishability([1, 5, 16], ratio, ratio - 2, ratio, band=(0.7, 0.85), title="t")
    assert sum(t.type == "box" for t in figure.data) == 3
    lower = next(t for t in figure.data if (t.name or "").startswith("Theorem 2 lower"))
    assert min(lower.y) >= 0
    temps = [0.01, 0.1, 1.0]
    figure = figures.temperature(temps, np.ones((3, 3)), np.array([10.0, 1.0, 0.0]), [1e-3, 1e-1, 10.0], title="t")
    exact = next(t for t in figure.data if (t.name or "").startswith("exact"))
    assert np.isnan(exact.y[2])  # zero cannot sit on a log axis
    assert figure.layout.xaxis.type == "log"
