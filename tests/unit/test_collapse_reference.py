"""The fast path of the collapse analysis (collapse_folds: layers folded, squares expanded, the secular equation) gives
the numbers of the readable reference (collapse_reference: one head and one row at a time, dense eigenvalues)."""

import dataclasses

import numpy as np
import pytest
import torch

from attnscope.analyses import collapse_folds, collapse_reference
from attnscope.capture import LayerCapture
from tests.kernels.helpers import assert_within_rule
from tests.unit.tiny_models import ARCHITECTURES, VOCAB, build

EPS64 = float(np.finfo(np.float64).eps)
# Both paths are fp64 but organise the work differently (distances as expanded squares, sums in another order):
# 1e-9 leaves about six orders of magnitude above their rounding and still catches any wrong or missing term.
FP64_RTOL = 1e-9
# From the fp32 attention_stats kernel; held to flash-attention's rule against plain fp32 torch.
FP32_FIELDS = ("max_weight", "entropy", "sink_mass", "learned_sink_mass")
FP64_FIELDS = ("min_weight", "band_low", "band_high", "d_sum", "d_norm", "expected", "expected_norm", "theorem2_low",
               "theorem2_high", "bound")


def assert_same_rows(fast: collapse_reference.LayerRows, reference: collapse_reference.LayerRows,
                     layer: LayerCapture, what: str) -> None:
    """Every field of two LayerRows of one layer agrees: counts exactly, fp64 fields to FP64_RTOL, the kernel's fp32
    fields by the tolerance rule, the temperature sweep to its own rounding."""
    assert (fast.length, fast.window, fast.n_values, fast.bound_ns) == \
        (reference.length, reference.window, reference.n_values, reference.bound_ns), what
    np.testing.assert_array_equal(fast.visible, reference.visible, err_msg=what)
    np.testing.assert_array_equal(fast.ratio, reference.ratio, err_msg=f"{what}: ratio")  # counts of N_s
    for name in FP64_FIELDS:
        got, expected = getattr(fast, name), getattr(reference, name)
        scale = np.nanmax(np.abs(expected), initial=0.0)
        np.testing.assert_allclose(got, expected, rtol=FP64_RTOL, atol=FP64_RTOL * scale, equal_nan=True,
                                   err_msg=f"{what}: {name}")
    plain = _plain_fp32(layer, len(reference.visible))
    for name in FP32_FIELDS:
        got, expected = getattr(fast, name), getattr(reference, name)
        assert (got is None) == (expected is None), f"{what}: {name}"
        if expected is not None:
            assert_within_rule(torch.from_numpy(got), torch.from_numpy(expected), plain[name], what=f"{what}: {name}")
    assert (fast.sensitivity is None) == (reference.sensitivity is None), what
    if reference.sensitivity is not None:
        temperatures = np.asarray(collapse_reference.TEMPERATURES)
        epsilons = np.asarray(collapse_reference.EPSILONS)[:, None]
        # A softmax weight is known to about eps * its size, so lambda_max / T to about eps / T, and the probe's
        # difference of two softmaxes divided by eps_probe to about eps / eps_probe: a few roundings of each.
        np.testing.assert_array_less(np.abs(fast.jacobian_norm - reference.jacobian_norm),
                                     FP64_RTOL * reference.jacobian_norm + 16 * EPS64 / temperatures,
                                     err_msg=f"{what}: jacobian_norm")
        np.testing.assert_array_less(np.abs(fast.sensitivity - reference.sensitivity),
                                     FP64_RTOL * reference.sensitivity + 4 * EPS64 / epsilons,
                                     err_msg=f"{what}: sensitivity")


def _plain_fp32(layer: LayerCapture, rows: int) -> dict[str, torch.Tensor]:
    """Max weight, entropy, weight on key 0 and learned sink mass (H, R) of the last `rows` rows by a plain fp32
    softmax over the keys (and the sink cell): the baseline of the tolerance rule."""
    layer = layer.to("cpu")
    picked = slice(layer.q.shape[2] - rows, layer.q.shape[2])
    logits = layer.logits(rows=picked)[0]  # (H, R, L) fp32, -inf where hidden
    if layer.sinks is not None:
        logits = torch.cat([logits, layer.sinks[:, None, None].expand(-1, rows, 1)], -1)
    p = torch.softmax(logits, -1)
    return {"max_weight": p.amax(-1), "entropy": -torch.special.xlogy(p, p).sum(-1), "sink_mass": p[..., 0],
            "learned_sink_mass": p[..., -1]}


def _random_layer(length: int, *, heads: int = 4, kv: int = 2, dim: int = 8, causal: bool = True,
                  window: int | None = None, softcap: float | None = None, sinks: bool = False) -> LayerCapture:
    generator = torch.Generator().manual_seed(length)
    q, k, v = (torch.randn(1, n, length, dim, generator=generator) for n in (heads, kv, kv))
    return LayerCapture(q=q * 2, k=k, v=v, scale=dim**-0.5, causal=causal, mask=None, window=window,
                        softcap=softcap, sinks=torch.randn(heads, generator=generator) * 2 if sinks else None)


RULES = {
    "causal": {}, "bidirectional": {"causal": False}, "window12": {"window": 12}, "softcap1.5": {"softcap": 1.5},
    "sinks": {"sinks": True}, "window12-softcap2-sinks": {"window": 12, "softcap": 2.0, "sinks": True},
}


@pytest.mark.parametrize("vectors", ["values", "hidden"])
@pytest.mark.parametrize("length", [1, 2, 63, 113])
@pytest.mark.parametrize("rule", list(RULES))
def test_fast_path_equals_the_reference_on_random_layers(rule, length, vectors):
    """Awkward lengths (one key, where no N is measured; two; odd ones) under every visibility and logit rule, with
    grouped-query heads, value vectors or hidden states, and the temperature sweep."""
    layer = _random_layer(length, **RULES[rule])
    hidden = torch.randn(1, length + 3, 12, generator=torch.Generator().manual_seed(7)) if vectors == "hidden" else None
    fast = collapse_folds.analyse_layer(layer, rows=3, hidden=hidden, temperature=True, seed=5)
    reference = collapse_reference.analyse_layer(layer, rows=3, hidden=hidden, temperature=True, seed=5)
    assert_same_rows(fast, reference, layer, f"{rule}-L{length}-{vectors}")


@pytest.mark.parametrize("heads, kv", [(4, 4), (6, 1)], ids=["mha", "mqa"])
def test_fast_path_equals_the_reference_with_long_rows_and_every_n(heads, kv):
    """Rows that see 300 keys measure every N of N_GRID up to 256 and every Theorem 1 size (the union table of
    _theorem1_d1 and the blocks of _separations in several pieces)."""
    layer = _random_layer(400, heads=heads, kv=kv)
    fast = collapse_folds.analyse_layer(layer, rows=2)
    reference = collapse_reference.analyse_layer(layer, rows=2)
    assert reference.n_values == collapse_reference.N_GRID and reference.bound_ns == collapse_reference.BOUND_NS
    assert_same_rows(fast, reference, layer, f"L400-H{heads}-KV{kv}")


@pytest.mark.parametrize("family", list(ARCHITECTURES))
def test_folded_layers_of_every_tiny_model_equal_the_reference(family):
    """Every layer of each tiny architecture (sliding-window, soft-capped, learned-sink and bidirectional layers),
    analysed together as the sweep does (layers folded, the temperature sweep over all of them at once)."""
    ids = torch.randint(0, VOCAB, (1, 64), generator=torch.Generator().manual_seed(1))
    from attnscope.capture import run_with_capture

    capture = run_with_capture(build(family), ids, hidden_states=True)
    order = sorted(capture.layers)
    for vectors in ("values", "hidden"):
        hidden = [capture.hidden_states[i] for i in order] if vectors == "hidden" else None
        folded = collapse_folds.analyse_layers([capture.layer(i) for i in order], rows=4, hidden=hidden,
                                               temperature=True, seeds=order)
        for position, (index, fast) in enumerate(zip(order, folded)):
            reference = collapse_reference.analyse_layer(capture.layer(index), rows=4, temperature=True, seed=index,
                                                         hidden=None if hidden is None else hidden[position])
            assert_same_rows(fast, reference, capture.layer(index), f"{family} layer {index} {vectors}")


def test_the_reference_refuses_a_padding_mask_as_the_fast_path_does():
    layer = dataclasses.replace(_random_layer(16), mask=torch.ones(1, 1, 16, 16, dtype=torch.bool))
    for analyse in (collapse_folds.analyse_layer, collapse_reference.analyse_layer):
        with pytest.raises(ValueError, match="padding"):
            analyse(layer, rows=2)
