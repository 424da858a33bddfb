"""taylor_attention / taylor_error against the fp64 reference; the recurrent (RNN) form equals the parallel form."""

import math

import pytest
import torch

from attnscope.kernels import DENOMINATORS, taylor_attention, taylor_error
from attnscope.kernels.taylor import naive
from tests.kernels import model_masks
from tests.kernels.helpers import (
    DTYPES,
    MASKS,
    SHAPES,
    assert_within_rule,
    cases,
    make_mask,
    make_qkv,
    mask_id,
    shape_id,
)

CASES, IDS = cases()
ORDERS = (1, 2, 3, 10)
MODEL_CASES, MODEL_IDS = model_masks.cases()
MASK_CASES = [(shape, kind, softcap) for shape in SHAPES for kind, softcap in MASKS]
MASK_IDS = [f"{shape_id(shape, 'fp32')}-{mask_id(kind, softcap)}" for shape, kind, softcap in MASK_CASES]


def assert_taylor_within_rule(result, reference, plain, *, denominator, rounding_scale, what):
    """The tolerance rule; for the "taylor" denominator on per-row errors divided by the row's rounding scale
    (model_masks.taylor_rounding_scale): a sum of mixed-sign weights (odd orders, a very negative sink) can cancel
    towards zero, and so can the series inside one weight, so every fp32 summation order errs by about that scale x
    eps and the kernel's order need not err like plain torch's."""
    if denominator != "taylor":
        assert_within_rule(result, reference, plain, what=what, floor=1e-5)
        return
    target = (reference - reference) / rounding_scale  # 0, NaN where the reference is NaN or a row is all zero
    assert_within_rule((result - reference) / rounding_scale, target, (plain - reference) / rounding_scale, what=what,
                       floor=1e-6)


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


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("shape,dtype_name,extras", MODEL_CASES, ids=MODEL_IDS)
def test_windows_sinks_and_softcap_match_reference(shape, dtype_name, extras, backend):
    model = model_masks.model_arguments(extras, shape)
    q, k, v = make_qkv(shape, DTYPES[dtype_name], logit_scale=3.0 if "softcap" in model else 1.0)
    causal = shape[-1]
    for order in ORDERS:
        rounding_scale = model_masks.taylor_rounding_scale(q, k, v, order=order, causal=causal, **model)
        for denominator in DENOMINATORS:
            options = dict(order=order, denominator=denominator, causal=causal, **model)
            result = taylor_attention(q, k, v, **options, backend=backend)
            reference = naive.taylor_attention(q, k, v, **options)
            plain = naive.taylor_attention(q, k, v, **options, dtype=torch.float32)
            assert result.dtype == torch.float32
            assert_taylor_within_rule(result, reference, plain, denominator=denominator, rounding_scale=rounding_scale,
                                      what=f"order {order} {denominator} with {extras}")


@pytest.mark.parametrize("sinks", [None, "mixed"])
@pytest.mark.parametrize("shape,kind,softcap", MASK_CASES, ids=MASK_IDS)
def test_torch_path_with_masks_matches_reference(shape, kind, softcap, sinks):
    """Explicit masks (padding: rows that see no key give NaN, or 0 where a sink gives the denominator a term)."""
    q, k, v = make_qkv(shape, torch.float32, logit_scale=3.0 if softcap else 1.0)
    model = dict(causal=shape[-1], mask=make_mask(kind, shape), softcap=softcap,
                 sinks=None if sinks is None else model_masks.make_sinks(sinks, shape[1]))
    for order in ORDERS:
        rounding_scale = model_masks.taylor_rounding_scale(q, k, v, order=order, **model)
        for denominator in DENOMINATORS:
            result = taylor_attention(q, k, v, order=order, denominator=denominator, **model, backend="auto")
            reference = naive.taylor_attention(q, k, v, order=order, denominator=denominator, **model)
            plain = naive.taylor_attention(q, k, v, order=order, denominator=denominator, **model,
                                           dtype=torch.float32)
            assert_taylor_within_rule(result, reference, plain, denominator=denominator, rounding_scale=rounding_scale,
                                      what=f"order {order} {denominator} under a {kind} mask")


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_keys_left_of_every_window_are_never_read(backend):
    """64 queries after 96 cached keys, a window of 33: no row sees keys 0..63, two whole key tiles of the Triton
    kernel. Keys and values there are NaN, which any product with them (even by a weight of 0) would spread."""
    shape = (1, 2, 1, 64, 160, 16, True)
    q, k, v = make_qkv(shape, torch.float32)
    sinks = model_masks.make_sinks("mixed", 2)
    k_poisoned, v_poisoned = k.clone(), v.clone()
    k_poisoned[:, :, :64] = float("nan")
    v_poisoned[:, :, :64] = float("nan")
    for denominator in DENOMINATORS:
        options = dict(order=3, denominator=denominator, window=33, sinks=sinks, backend=backend)
        clean = taylor_attention(q, k, v, **options)
        assert torch.isfinite(clean).all()
        torch.testing.assert_close(taylor_attention(q, k_poisoned, v_poisoned, **options), clean, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_a_very_low_sink_leaves_softmax_denominators_alone(backend):
    """exp(-100) is nothing beside the keys' terms; the polynomial of -100 is not (order 2: 4901)."""
    q, k, v = make_qkv((1, 2, 1, 40, 40, 32, True), torch.float32)
    sinks = torch.full((2,), -100.0)
    plain = taylor_attention(q, k, v, order=4, denominator="softmax", backend=backend)
    torch.testing.assert_close(taylor_attention(q, k, v, order=4, denominator="softmax", sinks=sinks,
                                                backend=backend), plain)
    with_sink = taylor_attention(q, k, v, order=2, denominator="taylor", sinks=sinks, backend=backend)
    without = taylor_attention(q, k, v, order=2, denominator="taylor", backend=backend)
    assert (with_sink.norm(dim=-1) < without.norm(dim=-1)).all()


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


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("extras", ["window7", "sinks_high", "softcap2", "window7-sinks_mixed-softcap2"])
@pytest.mark.parametrize("denominator", DENOMINATORS)
def test_taylor_error_with_windows_sinks_and_softcap_matches_reference(denominator, extras, backend):
    """The target is softmax attention with the same window, softcap and sink (the sink in its normaliser)."""
    shape = (1, 4, 2, 50, 50, 32, True)
    model = model_masks.model_arguments(extras, shape)
    q, k, v = make_qkv(shape, torch.float32)
    result = taylor_error(q, k, v, orders=[0, 1, 3, 10], denominator=denominator, **model, backend=backend)
    reference = naive.taylor_error(q, k, v, orders=[0, 1, 3, 10], denominator=denominator, **model)
    assert result.shape == (4, 1, 4, 50)
    torch.testing.assert_close(result.double(), reference.double(), rtol=1e-4, atol=1e-6)


def test_taylor_error_with_a_padding_mask_is_nan_on_rows_that_see_nothing():
    shape = (2, 3, 1, 30, 30, 16, True)
    q, k, v = make_qkv(shape, torch.float32)
    mask = make_mask("padding", shape)
    result = taylor_error(q, k, v, orders=[1, 4], mask=mask, backend="auto")
    reference = naive.taylor_error(q, k, v, orders=[1, 4], mask=mask)
    torch.testing.assert_close(result.double(), reference.double(), rtol=1e-4, atol=1e-6, equal_nan=True)
    assert torch.isnan(result[:, 0, :, :3]).all() and not torch.isnan(result[:, 1]).any()


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


@pytest.mark.parametrize("kwargs,message", [
    (dict(window=0), "window must be a positive"),
    (dict(window=4, causal=False), "narrows the causal rule"),
    (dict(window=4, mask=torch.ones(8, 8, dtype=torch.bool)), "narrows the causal rule"),
    (dict(sinks=torch.zeros(3)), "one logit per query head"),
    (dict(softcap=-1.0), "softcap must be a positive"),
    (dict(mask=torch.ones(8, 8, dtype=torch.bool), backend="triton"), "Triton kernels take no explicit mask"),
], ids=["window0", "window_bidirectional", "window_and_mask", "sinks_shape", "softcap", "mask_on_triton"])
@pytest.mark.parametrize("function", ["taylor_attention", "taylor_error"])
def test_bad_model_arguments(function, kwargs, message):
    q, k, v = make_qkv((1, 2, 1, 8, 8, 16, True), torch.float32)
    with pytest.raises(ValueError, match=message):
        if function == "taylor_attention":
            taylor_attention(q, k, v, order=2, **kwargs)
        else:
            taylor_error(q, k, v, orders=[2], **kwargs)
