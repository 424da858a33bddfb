"""Head fingerprints (attnscope.analyses.fingerprint) against the captured probabilities, on tiny models of the
families whose rules differ (a window narrower than the offset, softcaps, learned sinks, bidirectional BERT)."""

import functools
import math

import numpy as np
import pytest
import torch

from attnscope import engine
from attnscope.analyses import fingerprint
from attnscope.capture import run_with_capture
from tests.unit.tiny_models import VOCAB, WINDOW, build

FAMILIES = ["llama", "gemma2", "gemma3", "gpt_oss", "gpt2", "bert"]


def _ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, n), generator=torch.Generator().manual_seed(seed))


def _offset_mean(probs: torch.Tensor, offset: int, rows: range, n_keys: int) -> np.ndarray:
    """Mean over `rows` of probs[h, i, i - offset] where that key is visible (probability > 0 or the rule allows)."""
    picks = [[float(probs[h, i, i - offset]) for i in rows if i - offset >= 0] for h in range(probs.shape[0])]
    return np.array([np.mean(p) for p in picks])


@pytest.mark.parametrize("family", FAMILIES)
def test_document_fingerprint_equals_the_captured_probabilities(family):
    model, ids = build(family), _ids(30)
    found = fingerprint.document_fingerprint(model, ids)
    capture = run_with_capture(model, ids)
    streamed = engine.run(model, ids)
    for index in sorted(capture.layers):
        probs = capture.layer(index).probs()[0].double()  # (H, T, S): 0 where hidden
        np.testing.assert_allclose(found["previous_token"][index], _offset_mean(probs, 1, range(30), 30),
                                   rtol=1e-4, atol=1e-6, err_msg=f"{family} layer {index}")
        for name in fingerprint.STATISTICS:
            np.testing.assert_array_equal(found[name][index], getattr(streamed.head_stats[index], name).numpy())
    assert ("learned_sink_mass" in found) == (family == "gpt_oss")


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt_oss"])
def test_induction_score_equals_the_captured_probabilities(family):
    """Period 12 against a window of 8: sliding layers cannot see the target key (NaN), global layers can."""
    model, period = build(family), 12
    ids = fingerprint.repeated_tokens(VOCAB, period=period, seed=1, start=[1], avoid=[0, 1])
    assert torch.equal(ids[0, 1:1 + period], ids[0, 1 + period:])
    scores = fingerprint.induction_scores(model, ids, period=period)
    capture = run_with_capture(model, ids)
    n = ids.shape[1]
    for index in sorted(capture.layers):
        layer = capture.layer(index)
        if layer.window is not None and layer.window < period:
            assert np.isnan(scores[index]).all()
            continue
        probs = layer.probs()[0].double()
        expected = _offset_mean(probs, period - 1, range(n - period, n), n)
        np.testing.assert_allclose(scores[index], expected, rtol=1e-4, atol=1e-6, err_msg=f"{family} {index}")
    if family == "gemma3":
        assert WINDOW < period and np.isnan(scores).any() and not np.isnan(scores).all()


# ---- the collapse slopes, the Taylor order and N_s/N, each against a reference computed here from the capture ------

NEW_FIELDS = ("max_weight_slope", "entropy_slope", "taylor_order", "ns_ratio", "saturated")
# The definitions' numbers, written out rather than read from the module, so that a change to them shows here.
MIN_KEYS, MAX_ORDER, TOLERANCE, SELECTED, LAST_ROWS, BAND = 32, 10, 1e-2, 16, 8, (0.70, 0.85)
CAUSAL = ["llama", "gemma2", "gemma3", "gpt_oss", "gpt2"]
LONG = 80  # tokens: rows 31..79 see >= MIN_KEYS keys under the causal rule, and the last 8 rows see > 16
BERT_LONG = 160  # prefixes of 40, 80 and 160 tokens all see >= MIN_KEYS keys: three points for the fit
TAYLOR_ROWS = 16  # fewer than LONG, and on gemma2/gemma3 the first 16 rows need other orders than all 80 do


@functools.lru_cache(maxsize=None)
def _measured(family: str, n_tokens: int, taylor_tokens: int, seed: int = 0):
    """(model, ids, fingerprint, capture) of one family on n_tokens random ids, shared by the tests below."""
    model, ids = build(family, seed=seed), _ids(n_tokens)
    found = fingerprint.document_fingerprint(model, ids, taylor_tokens=taylor_tokens)
    return model, ids, found, run_with_capture(model, ids)


def _cells(layer) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, T, S[+1]) fp64 log-probabilities of every row over its visible keys (and the learned sink's cell) and the
    (T,) number of keys each row sees, from the captured logits."""
    logits = layer.logits(dtype=torch.float64)[0]  # (H, T, S), -inf where hidden
    n_keys = torch.isfinite(logits[0]).sum(-1)
    if layer.sinks is not None:
        logits = torch.cat([logits, layer.sinks.double()[:, None, None].expand(*logits.shape[:2], 1)], -1)
    return torch.log_softmax(logits, -1), n_keys


def _row_max_and_entropy(layer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T,) keys seen, (H, T) max weight and (H, T) entropy (nats) per row, the sink cell counted as a cell."""
    log_p, n_keys = _cells(layer)
    p = log_p.exp()
    entropy = -(p * log_p.nan_to_num(neginf=0.0)).sum(-1)
    return n_keys.numpy(), p.amax(-1).numpy(), entropy.numpy()


def _fit_slope(x: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(H,) numpy.polyfit slope of values (H, n) against log x (n,), over the x >= MIN_KEYS; NaN with < 2 distinct x."""
    used = x >= MIN_KEYS
    if len(np.unique(x[used])) < 2:
        return np.full(values.shape[0], np.nan)
    return np.array([np.polyfit(np.log(x[used]), row[used], 1)[0] for row in values])


def _taylor_order(layer, n_rows: int) -> np.ndarray:
    """(H,) smallest order n <= 10 whose truncated series exp(s) ~ sum_{j<=n} s^j / j! over the exact softmax
    denominator gives outputs within 1e-2 of softmax attention (Frobenius ratio over the first n_rows rows), 11 when
    none does. Causal layers are cut to the first n_rows tokens; bidirectional rows keep every key."""
    logits = layer.logits(rows=slice(0, n_rows), dtype=torch.float64)[0]  # (H, t, S)
    if layer.causal:
        logits = logits[..., :n_rows]
    visible = torch.isfinite(logits)
    s = logits.masked_fill(~visible, 0.0)
    v = layer.v[0].double()[[layer.kv_head(h) for h in range(layer.n_heads)], :s.shape[-1]]  # (H, S, Dv)
    exact = torch.where(visible, s.exp(), 0.0)
    denominator = exact.sum(-1, keepdim=True)
    if layer.sinks is not None:
        denominator = denominator + layer.sinks.double().exp()[:, None, None]
    target = exact @ v / denominator
    order = np.full(layer.n_heads, MAX_ORDER + 1)
    for n in range(MAX_ORDER, -1, -1):  # downwards: the smallest order that passes is kept
        series = torch.where(visible, sum(s**j / math.factorial(j) for j in range(n + 1)), 0.0)
        error = (series @ v / denominator - target).flatten(1).norm(dim=-1) / target.flatten(1).norm(dim=-1)
        order[(error < TOLERANCE).numpy()] = n
    return order


def _ns_ratio(layer, n_selected: int = SELECTED, n_rows: int = LAST_ROWS) -> np.ndarray:
    """(H,) N_s/N (paper B, Theorem 2's count) averaged over the last n_rows rows (at most T/4 under the causal rule,
    as the context-collapse page takes them): I_N the N largest weights,
    s = sum_{i in I_N} alpha_i v_i, r = min over visible j outside I_N of ||alpha_j v_j - s||, N_s the i in I_N with
    ||alpha_i v_i - s|| <= r. A learned sink is one more cell with a zero vector. NaN when a row sees <= N cells."""
    log_p, _ = _cells(layer)
    n_queries = log_p.shape[1]
    rows = range(n_queries - min(n_rows, n_queries // 4 if layer.causal else n_queries), n_queries)
    ratio = np.zeros((layer.n_heads, len(rows)))
    for h in range(layer.n_heads):
        x = layer.v[0, layer.kv_head(h)].double().numpy()
        if layer.sinks is not None:
            x = np.vstack([x, np.zeros(x.shape[1])])
        for r, row in enumerate(rows):
            alpha = log_p[h, row].exp().numpy()
            cells = np.flatnonzero(np.isfinite(log_p[h, row].numpy()))
            if len(cells) <= n_selected:
                return np.full(layer.n_heads, np.nan)
            ranked = cells[np.argsort(-alpha[cells], kind="stable")]
            chosen, others = ranked[:n_selected], ranked[n_selected:]
            s = alpha[chosen] @ x[chosen]
            distance = np.linalg.norm(alpha[:, None] * x - s, axis=1)
            ratio[h, r] = (distance[chosen] <= distance[others].min()).sum() / n_selected
    return ratio.mean(1)


@pytest.mark.parametrize("family", CAUSAL)
def test_collapse_slopes_equal_a_fit_over_the_captured_rows(family):
    """Causal rows are their own context lengths: the slope is a least-squares fit of each row's max weight and
    entropy against log(keys it sees), over the rows seeing >= MIN_KEYS; a window of 8 keys never gets there."""
    _, _, found, capture = _measured(family, LONG, TAYLOR_ROWS)
    fitted = 0
    for index in sorted(capture.layers):
        layer = capture.layer(index)
        n_keys, max_weight, entropy = _row_max_and_entropy(layer)
        if layer.window is not None and layer.window < MIN_KEYS:
            assert np.isnan(found["max_weight_slope"][index]).all(), f"{family} {index}: window {layer.window}"
            assert np.isnan(found["entropy_slope"][index]).all(), f"{family} {index}: window {layer.window}"
            continue
        for name, values in (("max_weight_slope", max_weight), ("entropy_slope", entropy)):
            expected = _fit_slope(n_keys, values)
            assert np.isfinite(expected).all()
            np.testing.assert_allclose(found[name][index], expected, rtol=1e-3, atol=1e-5,
                                       err_msg=f"{family} layer {index} {name}")
        fitted += 1
    assert fitted >= 1
    if family in ("gemma2", "gemma3", "gpt_oss"):  # one sliding layer (NaN) and one global layer (fitted) each
        assert fitted == 1


def test_bidirectional_slopes_fit_the_means_of_separate_prefix_passes():
    """BERT's rows all see the whole text: the slope fits each pass's mean over rows against log L for passes on the
    prefixes of T/4, T/2 and T tokens (40, 80, 160)."""
    model, ids, found, _ = _measured("bert", BERT_LONG, TAYLOR_ROWS)
    lengths = np.array([BERT_LONG // 4, BERT_LONG // 2, BERT_LONG])
    means = {"max_weight_slope": [], "entropy_slope": []}
    for n in lengths:
        capture = run_with_capture(model, ids[:, :n])
        per_layer = [_row_max_and_entropy(capture.layer(i))[1:] for i in sorted(capture.layers)]
        means["max_weight_slope"].append(np.stack([m.mean(-1) for m, _ in per_layer]))  # (layers, heads)
        means["entropy_slope"].append(np.stack([e.mean(-1) for _, e in per_layer]))
    for name, values in means.items():
        values = np.stack(values, -1)  # (layers, heads, lengths)
        expected = _fit_slope(lengths, values.reshape(-1, len(lengths))).reshape(values.shape[:2])
        np.testing.assert_allclose(found[name], expected, rtol=1e-3, atol=1e-5, err_msg=name)


def test_bidirectional_slopes_need_two_prefixes_of_min_keys():
    """60 tokens: T/4 = 15 and T/2 = 30 are under MIN_KEYS, so only the full pass is left and there is no slope."""
    _, _, found, _ = _measured("bert", 60, TAYLOR_ROWS)
    assert np.isnan(found["max_weight_slope"]).all() and np.isnan(found["entropy_slope"]).all()


@pytest.mark.parametrize("family", CAUSAL)
def test_taylor_order_equals_the_truncated_series_on_the_first_rows(family):
    _, _, found, capture = _measured(family, LONG, TAYLOR_ROWS)
    prefix_matters = False
    for index in sorted(capture.layers):
        layer = capture.layer(index)
        expected = _taylor_order(layer, TAYLOR_ROWS)
        np.testing.assert_array_equal(found["taylor_order"][index], expected, err_msg=f"{family} layer {index}")
        prefix_matters |= bool((_taylor_order(layer, LONG) != expected).any())
    if family in ("gemma2", "gemma3"):  # so a fingerprint that read every row instead would fail here
        assert prefix_matters
    if family == "gpt_oss":  # sharp logits and sinks: no order up to 10 is close enough
        assert (found["taylor_order"] == MAX_ORDER + 1).all()


def test_bidirectional_taylor_order_when_every_row_is_read():
    """taylor_tokens >= T: every row and every key of BERT's layers."""
    _, _, found, capture = _measured("bert", LONG, LONG)
    for index in sorted(capture.layers):
        np.testing.assert_array_equal(found["taylor_order"][index], _taylor_order(capture.layer(index), LONG))


def test_bidirectional_taylor_order_reads_the_first_taylor_tokens_rows():
    """The docstring (and the atlas's Taylor finding, 'first N tokens') promise the first taylor_tokens rows; for
    BERT those rows still see every key. On this model the first 16 rows need other orders than all 160 do."""
    _, _, found, capture = _measured("bert", BERT_LONG, TAYLOR_ROWS)
    for index in sorted(capture.layers):
        np.testing.assert_array_equal(found["taylor_order"][index], _taylor_order(capture.layer(index), TAYLOR_ROWS),
                                      err_msg=f"layer {index}")


@pytest.mark.parametrize("family", FAMILIES)
def test_ns_ratio_and_saturation_equal_the_distinguishable_count(family):
    """N_s/N at N = 16 over the last 8 rows, against the count written out here; NaN in a layer whose window (8)
    leaves no row 17 cells."""
    _, _, found, capture = _measured(family, BERT_LONG if family == "bert" else LONG, TAYLOR_ROWS)
    low, high = BAND
    for index in sorted(capture.layers):
        expected = _ns_ratio(capture.layer(index))
        np.testing.assert_allclose(found["ns_ratio"][index], expected, rtol=0, atol=1e-6, err_msg=f"{family} {index}")
        band = np.where(np.isnan(expected), np.nan, (expected >= low) & (expected <= high))
        np.testing.assert_array_equal(found["saturated"][index], band, err_msg=f"{family} {index}")
        window = capture.layer(index).window
        assert np.isnan(found["ns_ratio"][index]).all() == (window is not None and window <= SELECTED)


def test_saturated_marks_exactly_the_heads_in_the_band():
    """A GPT-NeoX seed whose global layer has heads both inside and outside 0.70-0.85."""
    _, _, found, capture = _measured("gpt_neox", LONG, TAYLOR_ROWS, seed=2)
    expected = np.stack([_ns_ratio(capture.layer(i)) for i in sorted(capture.layers)])
    np.testing.assert_allclose(found["ns_ratio"], expected, rtol=0, atol=1e-6)
    low, high = BAND
    inside = (expected >= low) & (expected <= high)
    assert inside.any() and not inside.all()
    np.testing.assert_array_equal(found["saturated"], inside.astype(np.float32))


@pytest.mark.parametrize("family", FAMILIES)
def test_short_text_has_no_slope_and_no_ns_ratio(family):
    """12 tokens: no row sees MIN_KEYS keys and none sees 17, so slopes, N_s/N and saturated are NaN; the Taylor order
    is still an order."""
    _, _, found, _ = _measured(family, 12, fingerprint.TAYLOR_TOKENS)
    for name in ("max_weight_slope", "entropy_slope", "ns_ratio", "saturated"):
        assert np.isnan(found[name]).all(), name
    order = found["taylor_order"]
    assert np.isin(order, np.arange(MAX_ORDER + 2)).all()
    assert all(found[name].shape == found["entropy"].shape for name in NEW_FIELDS)


def test_log_slope_fits_only_the_rows_with_enough_keys():
    n_keys = torch.arange(1, 101, dtype=torch.float64)
    values = 3.0 + torch.tensor([0.5, -2.0])[:, None] * n_keys.log()  # exactly linear in log n
    values[:, : MIN_KEYS - 1] = 1e6  # rows seeing fewer than MIN_KEYS keys: left out
    values[:, MIN_KEYS - 1] += 1.0  # the row seeing exactly MIN_KEYS keys: in, and off the line
    expected = _fit_slope(n_keys.numpy(), values.numpy())
    assert abs(expected[0] - 0.5) > 1e-3  # the row at MIN_KEYS moves the fit
    np.testing.assert_allclose(fingerprint.log_slope(n_keys, values).numpy(), expected, rtol=1e-6)
    assert torch.isnan(fingerprint.log_slope(torch.full((50,), 40.0), values[:, :50])).all()  # one length only
    assert torch.isnan(fingerprint.log_slope(torch.arange(1.0, 20.0), values[:, :19])).all()  # none has 32 keys
