"""Paper B's bounds and trends on the packaged SmolLM2 and the built-in long document (pydoc_data.topics)."""

import numpy as np
import pytest

from attnscope.analyses import collapse
from attnscope.capture import run_with_capture
from attnscope.tokens import tokenize

pytestmark = pytest.mark.slow

SETTINGS = collapse.Settings(max_length=512, windows=2, rows=8)


@pytest.fixture(scope="module")
def ids(smollm2):
    return tokenize(smollm2.tokenizer, collapse.builtin_text(), max_tokens=4096).as_tensor()


@pytest.fixture(scope="module")
def sweep(smollm2, ids):
    return collapse.run_sweep(smollm2.model, ids, SETTINGS, causal=True)


@pytest.fixture(scope="module")
def layers(smollm2, ids):
    capture = run_with_capture(smollm2.model, ids[:, 512:1024], hidden_states=True)
    return capture


@pytest.mark.parametrize("vectors", ["values", "hidden"])
def test_theorem1_bound_holds_for_every_head_and_query(layers, vectors):
    """Summed reading (where it is provable): d_sum <= bound for every layer, head, analysed query and N."""
    checked = 0
    for index in (0, 7, 15, 29):
        hidden = layers.hidden_states[index] if vectors == "hidden" else None
        for length in (64, 512):
            rows = collapse.analyse_layer(layers.layer(index).prefix(length), rows=16, hidden=hidden)
            columns = [rows.n_values.index(n) for n in rows.bound_ns]
            measured = rows.d_sum[..., columns]
            assert (measured <= rows.bound * (1 + 1e-9)).all(), (index, length, (measured - rows.bound).max())
            checked += measured.size
    assert checked > 1000


def test_corollary1_band_and_jacobian_bound_hold(layers):
    for index in (3, 20):
        rows = collapse.analyse_layer(layers.layer(index).prefix(256), rows=8, temperature=True)
        assert (rows.max_weight <= rows.band_high * (1 + 1e-6)).all()
        assert (rows.min_weight >= rows.band_low * (1 - 1e-6)).all()
        limit = 1 / (2 * np.asarray(collapse.TEMPERATURES))
        assert (rows.jacobian_norm <= limit * (1 + 1e-9)).all(), "the exact Jacobian norm never exceeds 1/(2T)"
        assert (rows.jacobian_norm >= rows.sensitivity[:, :, 0] * (1 - 1e-3)).all(), \
            "a random direction never moves softmax more than the worst case (to first order, eps = 1e-3)"


def test_attention_vanishes_and_spreads_as_the_context_grows(sweep):
    max_weight = [s.max_weight.mean() for s in sweep.summaries]
    entropy = [s.entropy.mean() for s in sweep.summaries]
    assert sweep.lengths == [32, 64, 128, 256, 512]
    assert max_weight[-1] < max_weight[0] - 0.1 and all(b < a + 0.02 for a, b in zip(max_weight, max_weight[1:]))
    assert entropy[-1] > entropy[0] + 0.5 and all(b > a - 0.05 for a, b in zip(entropy, entropy[1:]))
    for summary in sweep.summaries:
        assert summary.bound_violations == 0 and summary.bound_rows > 0
        assert summary.corollary_violations == 0
        assert ((summary.ratio >= 0) & (summary.ratio <= 1)).all()
        assert (summary.entropy <= np.log(summary.length) + 1e-6).all()


def test_low_temperature_is_far_more_sensitive(sweep):
    last = sweep.summaries[-1]
    probe = last.sensitivity[:, :, 0].reshape(-1, len(collapse.TEMPERATURES)).max(0)  # eps = 1e-3, max over heads
    temps = list(collapse.TEMPERATURES)
    assert probe[temps.index(0.01)] > 10 * probe[temps.index(1.0)]


def test_critical_n_uses_scipy_on_per_head_samples(sweep):
    from scipy.stats import ks_2samp

    summary = sweep.summaries[-1]
    first, stable, p_values = collapse.critical_for(summary, "d_sum")
    n = len(summary.n_values)
    column = summary.n_values.index(5)
    expected = ks_2samp(summary.d_sum.reshape(-1, n)[:, column], summary.expected.reshape(-1, n)[:, column]).pvalue
    assert p_values[column] == expected
    assert first is None or p_values[summary.n_values.index(first)] > collapse.KS_ALPHA
    if stable is not None:
        assert (p_values[summary.n_values.index(stable):] > collapse.KS_ALPHA).all()
