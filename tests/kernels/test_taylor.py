"""taylor_attention / taylor_error against the fp64 reference; the recurrent (RNN) form equals the parallel form."""

import math

import pytest
import torch

from attnscope.kernels import DENOMINATORS, taylor_attention, taylor_error
from attnscope.kernels.taylor import naive
from tests.kernels.helpers import DTYPES, assert_within_rule, cases, make_qkv

CASES, IDS = cases()
ORDERS = (1, 2, 3, 10)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("shape,dtype_name", CASES, ids=IDS)
def test_every_order_and_denominator_matches_reference(shape, dtype_name, backend):
    q, k, v = make_qkv(shape, DTYPES[dtype_name])
    causal = shape[-1]
    for order in ORDERS:
        for denominator in DENOMINATORS:
            result = taylor_attention(q, k, v, order=order, denominator=denominator, causal=causal, backend=backend)
            reference = naive.taylor_attention(q, k, v, order=order, denominator=denominator, causal=causal)
            # Order-10 series overflow fp16 in plain torch, which would make the rule vacuous; the kernels compute
            # the series in fp32, so plain torch in fp32 is the (stricter) baseline.
            plain = naive.taylor_attention(q, k, v, order=order, denominator=denominator, causal=causal,
                                           dtype=torch.float32)
            assert result.dtype == torch.float32
            assert_within_rule(result, reference, plain, what=f"order {order} {denominator}", floor=1e-5)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("clamp", [None, 5.0, 1.0, (-2.0, 2.0)], ids=str)
def test_large_logits_negative_weights_and_clamps(clamp, backend):
    """Logits spanning about +-20: odd orders give negative weights, nothing is silently clamped."""
    q, k, v = make_qkv((1, 3, 1, 63, 63, 64, True), torch.float32, logit_scale=5.0)
    scores = torch.matmul(q.double(), k.double().transpose(-1, -2)) / 8
    assert scores.min() < -15 and scores.max() > 15
    causal = torch.ones(63, 63, dtype=torch.bool).tril()
    for order in ORDERS:
        weights = naive.taylor_weights(naive.clamp_logits(scores, clamp), order) * causal
        # A sum denominator of mixed-sign weights can cancel towards zero, and then every fp32 summation order errs
        # by about condition x eps with condition = sum|w| / |sum w|. For that denominator the rule compares
        # per-row errors divided by the row's condition number and magnitude.
        condition = (weights.abs().sum(-1) / weights.sum(-1).abs())[..., None]
        for denominator in DENOMINATORS:
            result = taylor_attention(q, k, v, order=order, denominator=denominator, clamp=clamp, backend=backend)
            reference = naive.taylor_attention(q, k, v, order=order, denominator=denominator, clamp=clamp)
            plain = naive.taylor_attention(q, k, v, order=order, denominator=denominator, clamp=clamp,
                                           dtype=torch.float32)
            what = f"order {order} {denominator} clamp {clamp}"
            if denominator == "taylor":
                scale_rows = condition * reference.abs().amax(-1, keepdim=True)
                normalised = ((result - reference) / scale_rows, (plain - reference) / scale_rows)
                assert_within_rule(normalised[0], torch.zeros_like(reference), normalised[1], what=what, floor=1e-7)
            else:
                assert_within_rule(result, reference, plain, what=what, floor=1e-5)
        if clamp is None and order % 2 == 1:
            assert (weights < 0).any(), f"order {order} must give negative weights for very negative logits"
            assert (weights.sum(-1) < 0).any(), "and some sum denominators below zero, returned as they are"


def test_high_order_approaches_softmax_for_small_logits():
    q, k, v = make_qkv((1, 2, 1, 40, 40, 64, True), torch.float32, logit_scale=0.3)
    errors = taylor_error(q, k, v, orders=[0, 1, 2, 4, 10], backend="triton")
    median = errors.flatten(1).median(dim=1).values
    assert (median[1:] < median[:-1]).all(), f"error must fall with the order: {median.tolist()}"
    assert median[-1] < 1e-5


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("denominator", DENOMINATORS)
def test_taylor_error_matches_reference(denominator, backend):
    q, k, v = make_qkv((1, 3, 1, 50, 50, 32, True), torch.float32)
    result = taylor_error(q, k, v, orders=[0, 1, 3, 10], denominator=denominator, backend=backend)
    reference = naive.taylor_error(q, k, v, orders=[0, 1, 3, 10], denominator=denominator)
    assert result.shape == (4, 1, 3, 50)
    torch.testing.assert_close(result.double(), reference.double(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("order", [0, 1, 2])
@pytest.mark.parametrize("denominator", ["taylor", "none"])
def test_recurrent_form_equals_parallel_form(order, denominator):
    """Sum of order+1 linear RNNs with Kronecker-power states == the parallel form, to fp64 rounding."""
    q, k, v = make_qkv((1, 4, 2, 12, 12, 6, True), torch.float64)
    recurrent = naive.taylor_attention_recurrent(q, k, v, order=order, denominator=denominator)
    parallel = naive.taylor_attention(q, k, v, order=order, denominator=denominator)
    torch.testing.assert_close(recurrent, parallel, rtol=1e-12, atol=1e-12)


def test_order_one_is_linear_attention():
    q, k, v = make_qkv((1, 4, 2, 12, 12, 6, True), torch.float64)
    linear = naive.linear_attention(q, k, v, feature_map=naive.identity_plus_one)
    torch.testing.assert_close(linear, naive.taylor_attention(q, k, v, order=1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(linear, naive.taylor_attention_recurrent(q, k, v, order=1), rtol=1e-12, atol=1e-12)
    kernel = taylor_attention(q.float(), k.float(), v.float(), order=1, backend="triton")
    torch.testing.assert_close(kernel.double(), linear, rtol=1e-4, atol=1e-5)


def test_state_size_of_the_recurrent_form():
    head_dim = 6
    assert naive.kronecker_power(torch.ones(head_dim), 2).numel() == head_dim**2
    assert naive.kronecker_power(torch.ones(head_dim), 0).numel() == 1
    with pytest.raises(ValueError, match="orders 0-2"):
        naive.taylor_attention_recurrent(*make_qkv((1, 1, 1, 4, 4, 4, True), torch.float64), order=3)


def test_horner_equals_the_term_by_term_series():
    from attnscope.kernels.taylor.chunked import horner

    s = torch.linspace(-20, 20, 101, dtype=torch.float64)
    for order in range(0, 21):
        torch.testing.assert_close(horner(s, order), naive.taylor_weights(s, order), rtol=1e-12, atol=1e-9)
    assert math.isclose(float(naive.taylor_weights(torch.tensor(-20.0, dtype=torch.float64), 10)), 2.1e6, rel_tol=0.2)


@pytest.mark.parametrize("kwargs,message", [
    (dict(order=21), "order must be in"),
    (dict(order=2, denominator="sigmoid"), "denominator must be one of"),
    (dict(order=2, clamp=(3.0, -3.0)), "low <= high"),
])
def test_bad_arguments(kwargs, message):
    q, k, v = make_qkv((1, 2, 1, 8, 8, 16, True), torch.float32)
    with pytest.raises(ValueError, match=message):
        taylor_attention(q, k, v, **kwargs)
