"""core.analyses.collapse against brute-force numpy references with explicit loops, on synthetic q/k/v."""

import math

import numpy as np
import pytest
import torch

from attnscope.analyses import collapse, collapse_folds, collapse_reference
from attnscope.capture import LayerCapture


def _layer(length=40, heads=4, kv=2, dim=8, causal=True, seed=0, logit_scale=1.0) -> LayerCapture:
    g = torch.Generator().manual_seed(seed)
    return LayerCapture(q=torch.randn(1, heads, length, dim, generator=g) * logit_scale,
                        k=torch.randn(1, kv, length, dim, generator=g), v=torch.randn(1, kv, length, dim, generator=g),
                        scale=dim**-0.5, causal=causal, mask=None)


def _reference_row(alpha: np.ndarray, x: np.ndarray, n: int) -> dict:
    """Paper B's quantities for one query row, written as loops over tokens."""
    length = len(alpha)
    order = np.argsort(-alpha, kind="stable")
    selected, rest = list(order[:n]), [i for i in range(length) if i not in order[:n]]
    s = sum(alpha[j] * x[j] for j in selected)
    d_sum = sum(np.linalg.norm(alpha[i] * x[i] - s) for i in rest)
    d_norm = np.linalg.norm(sum(alpha[i] * x[i] for i in rest) - s)
    o = sum(alpha[i] * x[i] for i in range(length))
    expected = (length - n) / length * sum(np.linalg.norm(alpha[i] * x[i] - n / length * o) for i in range(length))
    radius = min(np.linalg.norm(s - alpha[j] * x[j]) for j in rest)
    n_s = sum(np.linalg.norm(alpha[i] * x[i] - s) <= radius for i in selected)
    a_n = sum(alpha[j] for j in selected)
    d1 = max(np.linalg.norm(x[i] - x[j]) for i in rest for j in selected)
    max_norm = max(np.linalg.norm(x[j]) for j in selected)
    bound = (1 - a_n) * d1 + ((length - n) * a_n - (1 - a_n)) * max_norm
    m = np.mean([np.linalg.norm(x[j]) for j in selected])
    delta = min((np.linalg.norm(x[j] - x[k]) for j in selected for k in selected if j != k), default=0.0)
    xi = []
    for i in selected:
        same = sum(alpha[j] ** 2 for j in selected if j != i)
        cross = sum(alpha[j] * alpha[k] for j in selected for k in selected if j != k and i not in (j, k))
        xi.append(math.sqrt(max(m**2 * same + (m**2 - delta**2 / 2) * cross, 0.0)))
    low = 1 - sum(xi) / (n * radius)
    high = np.mean([math.exp(-max(v - radius, 0.0) ** 2 / (2 * m**2)) for v in xi])
    expected_norm = abs(1 - 2 * n / length) * np.linalg.norm(o)
    return {"d_sum": d_sum, "d_norm": d_norm, "expected": expected, "expected_norm": expected_norm,
            "ratio": n_s / n, "bound": bound,
            "theorem2_low": low, "theorem2_high": high}


@pytest.mark.parametrize("analyse", [collapse.analyse_layer, collapse_reference.analyse_layer],
                         ids=["fast", "reference"])
@pytest.mark.parametrize("causal,window,softcap,sinks", [
    (True, None, None, False), (False, None, None, False), (True, 12, None, False), (True, None, 1.5, False),
    (True, None, None, True), (True, 12, 2.0, True)])
def test_every_quantity_matches_the_loop_reference(causal, window, softcap, sinks, analyse):
    """With a sliding window of 12 keys the rows see keys position - 11 .. position: the loops run over those alone
    (and the first token, outside every window, takes no weight). A softcap caps the logits (and Delta); a learned
    sink is one more cell with its logit and a zero token vector, ranked like any key. Both the fast path and the
    readable reference (collapse_reference) are held to these loops."""
    layer = _layer(causal=causal, logit_scale=2.0)
    layer.window, layer.softcap = window, softcap
    sink_logits = torch.tensor([2.5, -1.0, 0.3, 4.0], dtype=torch.float64)
    layer.sinks = sink_logits.float() if sinks else None
    rows = analyse(layer, rows=3, temperature=True, seed=3)
    n_rows = rows.max_weight.shape[1]
    first_row = layer.q.shape[2] - n_rows
    for h in range(layer.n_heads):
        kv = layer.kv_head(h)
        for r in range(n_rows):
            position = first_row + r
            end = position + 1 if causal else layer.k.shape[2]
            start = 0 if window is None else max(0, end - window)
            seen = end - start
            logits = (layer.k[0, kv, start:end].double() @ layer.q[0, h, position].double()).numpy() * layer.scale
            if softcap:
                logits = softcap * np.tanh(logits / softcap)
            x = layer.v[0, kv, start:end].double().numpy()
            if sinks:  # the sink cell: its own logit, no token vector
                logits = np.append(logits, float(sink_logits[h]))
                x = np.vstack([x, np.zeros((1, x.shape[1]))])
                seen += 1
            alpha = np.exp(logits - logits.max())
            alpha /= alpha.sum()
            assert rows.visible[r] == seen
            assert rows.max_weight[h, r] == pytest.approx(alpha.max(), rel=1e-5)
            assert rows.min_weight[h, r] == pytest.approx(alpha.min(), rel=1e-9)
            assert rows.sink_mass[h, r] == pytest.approx(alpha[0] if start == 0 else 0.0, rel=1e-5)
            if sinks:
                assert rows.learned_sink_mass[h, r] == pytest.approx(alpha[-1], rel=1e-5)
            assert rows.entropy[h, r] == pytest.approx(-(alpha * np.log(alpha)).sum(), rel=1e-5)
            delta = np.linalg.norm(layer.q[0, h, position].double()) * layer.scale * max(
                np.linalg.norm(layer.k[0, kv, i].double()) for i in range(start, end))
            delta = min(delta, softcap) if softcap else delta
            delta = max(delta, abs(float(sink_logits[h]))) if sinks else delta
            assert rows.band_high[h, r] == pytest.approx(math.exp(2 * delta) / seen, rel=1e-9)
            for column, n in enumerate(rows.n_values):
                expected = _reference_row(alpha, x, n)
                for name in ("d_sum", "d_norm", "expected", "expected_norm", "ratio", "theorem2_low",
                             "theorem2_high"):
                    got = getattr(rows, name)[h, r, column]
                    assert got == pytest.approx(expected[name], rel=1e-6, abs=1e-9, nan_ok=True), (name, n, h, r)
                if n in rows.bound_ns:
                    got = rows.bound[h, r, rows.bound_ns.index(n)]
                    assert got == pytest.approx(expected["bound"], rel=1e-9), ("bound", n)
            # temperature: the exact Jacobian norm from a dense eigendecomposition, the probe by hand
            for t_index, temperature in enumerate(collapse.TEMPERATURES):
                p = np.exp((logits - logits.max()) / temperature)
                p /= p.sum()
                jacobian = (np.diag(p) - np.outer(p, p)) / temperature
                assert rows.jacobian_norm[h, r, t_index] == pytest.approx(
                    np.linalg.eigvalsh(jacobian).max(), rel=1e-7, abs=1e-12)


def test_random_direction_probe_by_hand():
    layer = _layer(length=24)
    rows = collapse.analyse_layer(layer, rows=2, temperature=True, seed=5)
    keys = layer.k[0].double().repeat_interleave(layer.groups, 0)  # (H, L, D)
    logits = torch.matmul(layer.q[0, :, 22:24].double(), keys.transpose(-1, -2)) * layer.scale
    logits = logits.masked_fill(~layer.visible(slice(22, 24))[0], -math.inf)
    generator = torch.Generator().manual_seed(5)
    direction = torch.randn(logits.shape, generator=generator, dtype=torch.float64) * torch.isfinite(logits)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    for e_index, eps in enumerate(collapse.EPSILONS):
        for t_index, temperature in enumerate(collapse.TEMPERATURES):
            before = torch.softmax(logits / temperature, -1)
            after = torch.softmax((logits + eps * direction) / temperature, -1)
            expected = ((after - before).norm(dim=-1) / eps).numpy()
            np.testing.assert_allclose(rows.sensitivity[:, :, e_index, t_index], expected, rtol=1e-9, atol=1e-15)


def test_jacobian_norm_is_at_most_one_half_and_reaches_it_on_a_tie():
    p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.7, 0.2, 0.1]], dtype=torch.float64)
    norms = collapse.softmax_jacobian_norm(p)
    dense = [np.linalg.eigvalsh(np.diag(row) - np.outer(row, row)).max() for row in p.numpy()]
    np.testing.assert_allclose(norms.numpy(), dense, atol=1e-12)
    assert norms[0] == pytest.approx(0.5) and norms.max() <= 0.5


def test_length_grid_and_critical_n():
    assert collapse.length_grid(2048) == [32, 64, 128, 256, 512, 1024, 2048]
    assert collapse.length_grid(700) == [32, 64, 128, 256, 512, 700]
    assert collapse.length_grid(20) == [20]
    rng = np.random.default_rng(0)
    true = np.stack([rng.normal(10, 1, 50), rng.normal(0, 1, 50), rng.normal(0, 1, 50)], 1)
    expected = np.stack([rng.normal(0, 1, 50), rng.normal(0, 1, 50), rng.normal(5, 1, 50)], 1)
    first, stable, p_values = collapse.critical_n(true, expected, [1, 5, 10])
    assert first == 5 and stable is None and p_values[0] < 0.05 < p_values[1]
    assert collapse.critical_n(true[:, :2], expected[:, :2], [1, 5])[:2] == (5, 5)
    from scipy.stats import ks_2samp

    assert p_values[2] == ks_2samp(true[:, 2], expected[:, 2]).pvalue


def test_hidden_states_as_token_vectors():
    layer = _layer(length=30)
    hidden = torch.randn(1, 30, 12, generator=torch.Generator().manual_seed(1))
    rows = collapse.analyse_layer(layer, rows=2, hidden=hidden)
    position = 29
    for h in range(layer.n_heads):
        logits = (layer.k[0, layer.kv_head(h)].double() @ layer.q[0, h, position].double()).numpy() * layer.scale
        alpha = np.exp(logits - logits.max())
        alpha /= alpha.sum()
        expected = _reference_row(alpha, hidden[0].double().numpy(), 5)
        assert rows.d_sum[h, 1, rows.n_values.index(5)] == pytest.approx(expected["d_sum"], rel=1e-6)


# ---- the fast path's own organisation (tests/unit/test_collapse_reference.py holds it to the reference) -----------


def _tiny_capture(family: str, length: int = 96):
    from attnscope.capture import run_with_capture
    from tests.unit.tiny_models import VOCAB, build

    ids = torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(1))
    return run_with_capture(build(family), ids, hidden_states=True)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize("vectors", ["values", "hidden"])
def test_layers_analysed_together_equal_each_alone(family, vectors):
    """Folding layers into one batch of heads (and the temperature sweep over all of them) changes nothing: GPT-2's
    scale differs per layer, so it is never folded; the others are."""
    capture = _tiny_capture(family)
    order = sorted(capture.layers)
    hidden = [capture.hidden_states[i] for i in order] if vectors == "hidden" else None
    together = collapse.analyse_layers([capture.layer(i) for i in order], rows=5, hidden=hidden, temperature=True,
                                       seeds=order)
    for index, rows in zip(order, together):
        alone = collapse.analyse_layer(capture.layer(index), rows=5, temperature=True, seed=index,
                                       hidden=None if hidden is None else hidden[index])
        for field in ("max_weight", "entropy", "d_sum", "d_norm", "expected", "ratio", "theorem2_low", "bound",
                      "sensitivity", "jacobian_norm"):
            np.testing.assert_allclose(getattr(rows, field), getattr(alone, field), rtol=1e-12, atol=1e-15,
                                       err_msg=field)


def test_farthest_key_outside_the_top_b_by_brute_force():
    """Theorem 1's d1 through the union table (keys outside every row's top B, keys some other row ranks high, keys
    hidden from later rows) against the definition, with top-B sets drawn from a pool so that the part outside E is
    not empty."""
    generator = torch.Generator().manual_seed(4)
    n_heads, rows, length, top, dim = 4, 3, 300, 20, 6
    x = torch.randn(2, length, dim, generator=generator, dtype=torch.float64)  # two sets of two heads
    chosen = torch.stack([torch.randperm(120, generator=generator)[:top] for _ in range(n_heads * rows)])
    chosen = chosen.view(n_heads, rows, top)
    visible_mask = torch.ones(rows, length, dtype=torch.bool).tril(length - rows)  # causal, bottom-right aligned
    bound_ns = (1, 5, 10, 20)
    norms_sq = (x * x).sum(-1)
    vectors = x[(torch.arange(n_heads) // 2)[:, None, None], chosen]
    between = torch.cdist(vectors, vectors) ** 2  # squared, as _separations gives them
    left_x, right_x = collapse_folds._square_factors(x, norms_sq)
    got = collapse_folds._theorem1_d1(left_x, right_x, chosen, visible_mask, int(visible_mask.sum(-1).min()), bound_ns,
                                between)
    for h in range(n_heads):
        for r in range(rows):
            points = x[h // 2]
            for column, n in enumerate(bound_ns):
                inside = chosen[h, r, :n]
                outside = [i for i in range(length) if visible_mask[r, i] and i not in inside.tolist()]
                expected = torch.cdist(points[inside], points[outside]).max()
                assert got[h, r, column] == pytest.approx(float(expected), rel=1e-12), (h, r, n)


def test_jacobian_norm_on_peaked_flat_and_tied_rows():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 300, generator=generator, dtype=torch.float64) * 4
    logits[1, :2] = 50.0  # a tie at the top
    logits[2, 0] = 900.0  # one-hot at every temperature
    for temperature in (1e-3, 1e-2, 0.1, 1.0, 100.0):
        p = torch.softmax(logits / temperature, -1)
        dense = [np.linalg.eigvalsh(np.diag(row) - np.outer(row, row)).max() for row in p.numpy()]
        np.testing.assert_allclose(collapse.softmax_jacobian_norm(p).numpy(), dense, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("family", ["gemma2", "gemma3", "gpt_oss", "mistral"])
def test_every_family_is_analysed_and_its_bounds_hold(family):
    """Soft-capped, sliding-window and learned-sink layers of tiny models: Theorem 1 and Corollary 1 hold on every
    analysed row, local layers' rows see at most the window, and the learned sink's mass comes out where it exists."""
    from attnscope.capture import run_with_capture
    from tests.unit.tiny_models import VOCAB, WINDOW, build

    ids = torch.randint(0, VOCAB, (1, 64), generator=torch.Generator().manual_seed(4))
    capture = run_with_capture(build(family), ids)
    settings = collapse.Settings(max_length=64, windows=1, rows=4)
    summary = collapse.analyse_capture(capture, 64, settings, temperature=True)
    assert summary.bound_rows > 0 and summary.bound_violations == 0 and summary.corollary_violations == 0
    assert np.isfinite(summary.max_weight).all() and np.isfinite(summary.sensitivity).all()
    windows = [capture.layer(i).window or 0 for i in sorted(capture.layers)]
    assert summary.layer_windows == tuple(windows) and WINDOW in windows  # each of these families has local layers
    rows = collapse.analyse_layers([capture.layer(i) for i in sorted(capture.layers)], rows=4)
    for layer_rows, window in zip(rows, windows):
        sink_cell = int(capture.layer(0).sinks is not None)
        assert layer_rows.visible.max() == (window or 64) + sink_cell
    assert (summary.learned_sink_mass is not None) == (family == "gpt_oss")
