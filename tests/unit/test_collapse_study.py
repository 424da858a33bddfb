"""attnscope.studies.collapse on tiny random models: the study's run equals the page's former per-window path, one
forward pass per window for decoders, units are cacheable, and results save, reopen and explain themselves."""

import contextlib
import math

import numpy as np
import pytest
import torch

from attnscope.analyses import collapse as analysis
from attnscope.capture import run_with_capture
from attnscope.studies import collapse as study
from attnscope.studies.base import Finding, Source, open_result
from tests.unit.tiny_models import VOCAB, handle

IDS = torch.randint(0, VOCAB, (1, 200), generator=torch.Generator().manual_seed(1))[0].tolist()
ARRAYS = ("max_weight", "entropy", "sink_mass", "band_low", "band_high", "d_sum", "d_norm", "expected",
          "expected_norm", "ratio", "theorem2_low", "theorem2_high", "bound")


class _RecordingSource(Source):
    """The library's Source, keeping every unit call (what the dashboard's st.cache_data is keyed by) and counting
    forward passes."""

    def __init__(self, model):
        super().__init__(model)
        self.calls, self.forward_passes = [], 0

    def unit(self, fn, *args):
        self.calls.append((fn, args))
        return super().unit(fn, *args)

    @contextlib.contextmanager
    def turn(self):  # every forward pass is taken in a turn
        self.forward_passes += 1
        yield


@pytest.fixture(scope="module")
def llama():
    return handle("llama")


@pytest.fixture(scope="module")
def result(llama):
    return study.run(Source(llama), IDS, max_length=64, windows=2, rows=4)


@pytest.mark.parametrize("family, vectors", [("llama", "values"), ("llama", "hidden"), ("bert", "values")])
def test_run_equals_the_per_window_path_the_page_ran(family, vectors):
    """The page used to analyse each (window, length) from one capture of the window (decoders) or one run per
    length (encoders) and average over windows itself."""
    model = handle(family)
    result = study.run(Source(model), IDS, max_length=64, windows=3, rows=4, vectors=vectors)
    settings = analysis.Settings(max_length=64, windows=3, rows=4, vectors=vectors)
    windows = analysis.text_windows(torch.tensor([IDS]), settings)
    lengths = analysis.length_grid(64)
    hidden = vectors == "hidden"
    per_length = {length: [] for length in lengths}
    for window in windows:
        capture = run_with_capture(model.module, window, hidden_states=hidden)
        for length in lengths:
            run = capture if family != "bert" else run_with_capture(model.module, window[:, :length],
                                                                    hidden_states=hidden)
            per_length[length].append(analysis.analyse_capture(run, length, settings,
                                                               temperature=length == lengths[-1]))
    assert result.lengths == tuple(lengths) and result.windows == 3 and result.window_tokens == 64
    for summary, length in zip(result.summaries, lengths):
        expected = analysis.average_windows(per_length[length])
        assert summary.n_values == expected.n_values and summary.bound_rows == expected.bound_rows
        for name in ARRAYS:
            np.testing.assert_array_equal(getattr(summary, name), getattr(expected, name), err_msg=name)
    np.testing.assert_array_equal(result.summaries[-1].jacobian_norm, expected.jacobian_norm)
    first, stable, p_values = analysis.critical_for(result.summaries[-1], "d_norm")
    assert (result.critical["d_norm"].first[-1], result.critical["d_norm"].stable[-1]) == (first, stable)
    np.testing.assert_array_equal(result.critical["d_norm"].p_values[-1], p_values)


def test_one_forward_pass_per_window_for_decoders_and_per_length_for_encoders(llama):
    source = _RecordingSource(llama)
    result = study.run(source, IDS, max_length=64, windows=2, rows=4)
    assert source.forward_passes == 2 and len(source.calls) == 2 * len(result.lengths)
    for fn, args in source.calls:
        assert fn is study.measure and hash(args) is not None  # the dashboard caches units by their arguments
    bert = _RecordingSource(handle("bert"))
    study.run(bert, IDS, max_length=64, windows=2, rows=4)
    assert bert.forward_passes == 2 * 2


def test_unit_alone_equals_the_unit_inside_run(llama, result):
    """A unit computed on its own (a cache miss in another session) is what run computed with the shared capture."""
    window = tuple(IDS[64:128])
    alone = study.measure(Source(llama), window, 32, 4, "values", False)
    inside = analysis.analyse_capture(run_with_capture(llama.module, torch.tensor([window])), 32,
                                      analysis.Settings(rows=4), temperature=False)
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(alone, name), getattr(inside, name), err_msg=name)


def test_progress_and_settings(llama):
    seen = []
    result = study.run(Source(llama), IDS, max_length=100, windows=5, rows=3, max_tokens=80,
                       progress=lambda fraction, message: seen.append((fraction, message)))
    assert result.window_tokens == 80 and result.windows == 2  # 200 tokens hold two windows of 80
    assert result.lengths == (32, 64, 80)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(seen) == 2 * 3 + 1
    assert seen[0][1] == "Window 1/2, context length 32"
    assert "enough for 2 window(s) of 80" in result.summary()
    assert result.meta["windows"] == 5 and result.meta["max_length"] == 100 and result.meta["text"] == "given"
    with pytest.raises(ValueError, match="needs at least 32"):
        study.run(Source(llama), IDS[:20])
    with pytest.raises(ValueError, match="windows"):
        study.run(Source(llama), IDS, windows=0)
    with pytest.raises(ValueError, match="vectors"):
        study.run(Source(llama), IDS, vectors="keys")


def test_findings_figures_and_tables(result):
    findings = result.findings()
    assert [f.topic for f in findings] == ["Vanishing attention", "Distance vs context length", "Critical N",
                                           "Distinguishability", "Temperature", "What this means for your model"]
    assert all(isinstance(f, Finding) for f in findings)
    assert findings[-1].paper is None and findings[-1].measured.startswith("- **Saturated heads**")
    assert "the Theorem 1 bound held in" in findings[1].measured
    assert [f.topic for f in result.findings(section="temperature")] == ["Temperature"]
    one = result.findings(layer=1, head=2, fixed_length=32)
    assert one[0] == findings[0] and one[3] != findings[3]  # vanishing is over every head; N_s/N at L = 32
    figures = result.figures(layer=1, head=2, fixed_length=32)
    assert list(figures) == ["vanishing-attention", "distance-vs-length", "distance-vs-n", "critical-n",
                             "distinguishability", "temperature"]
    assert figures["distinguishability"].layout.title.text == "N_s / N at L = 32, layer 1, head 2"
    tables = result.tables()
    assert set(tables) == set(figures) - {"distance-vs-n"}
    n_heads = result.n_layers * result.n_heads
    assert len(tables["vanishing-attention"]) == len(result.lengths) * n_heads
    assert len(tables["distinguishability"]) == len(result.summaries[-1].n_values) * n_heads
    with pytest.raises(ValueError, match="was not measured"):
        result.findings(fixed_length=48)
    with pytest.raises(ValueError, match="outside"):
        result.figures(layer=7, head=0)
    with pytest.raises(ValueError, match="Unknown section"):
        result.findings(section="nope")


def test_to_frame_is_one_row_per_length_layer_head_and_n(result):
    frame = result.to_frame()
    n_heads = result.n_layers * result.n_heads
    assert len(frame) == sum(len(s.n_values) for s in result.summaries) * n_heads
    last = result.summaries[-1]
    row = frame[(frame.L == last.length) & (frame.layer == 2) & (frame["head"] == 1) & (frame.N == 5)].iloc[0]
    column = last.n_values.index(5)
    assert row.d_sum == last.d_sum[2, 1, column] and row.max_weight == last.max_weight[2, 1]
    assert row.theorem1 == last.bound[2, 1, last.bound_ns.index(5)]
    assert math.isnan(frame[(frame.N == 2)].theorem1.iloc[0])  # N = 2 has no Theorem 1 bound


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_save_and_open_round_trip(result, tmp_path, suffix):
    reopened = open_result(result.save(tmp_path / f"collapse{suffix}"))
    assert isinstance(reopened, study.CollapseResult)
    assert reopened.lengths == result.lengths and reopened.meta == result.meta
    for before, after in zip(result.summaries, reopened.summaries):
        for name in (*ARRAYS, "sensitivity", "jacobian_norm"):
            a, b = getattr(before, name), getattr(after, name)
            assert (a is None and b is None) or np.array_equal(a, b), name
    assert reopened.critical["d_sum"].first == result.critical["d_sum"].first
    assert reopened.findings() == result.findings()
    for path in (result.save(tmp_path / "collapse.csv"), result.save(tmp_path / "collapse.html")):
        assert path.stat().st_size > 0
    assert "Vanishing attention" in result._repr_html_()
