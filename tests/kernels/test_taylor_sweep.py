"""taylor_sweep (every order and denominator in one pass) against its fp64 reference built from scratch per order."""

import math

import pytest
import torch

from attnscope.kernels import DENOMINATORS, taylor_sweep
from attnscope.kernels.taylor import chunked, naive
from tests.kernels import model_masks
from tests.kernels.helpers import MASKS, make_mask, make_qkv, mask_id, shape_id

SHAPES = [
    (1, 3, 1, 1, 1, 16, True),
    (1, 3, 1, 63, 63, 64, True),
    (2, 4, 2, 113, 113, 32, True),
    (1, 3, 1, 40, 75, 64, False),
    (1, 2, 1, 30, 50, 64, True),  # causal with a prefix already in the cache (T < S)
]
IDS = [shape_id(s, "fp32") for s in SHAPES]
MODEL_CASES, MODEL_IDS = model_masks.cases()
MASK_CASES = [(shape, kind, softcap) for shape in SHAPES for kind, softcap in MASKS]
MASK_IDS = [f"{shape_id(shape, 'fp32')}-{mask_id(kind, softcap)}" for shape, kind, softcap in MASK_CASES]
FIELDS = ("target_norm", "negative_weights", "nonpositive_denominator", "small_denominator", "term_mean",
          "logit_min", "logit_max")


def _assert_sweeps_equal(result, reference, *, rtol: float, what: str, hist_moves: int = 0):
    """Equal within rtol; the histograms exactly, or with `hist_moves` logits per head allowed into the next bin (an
    fp32 logit within rounding of a bin edge)."""
    for name in DENOMINATORS:
        assert result.error[name].shape == reference.error[name].shape
        torch.testing.assert_close(result.error[name].double(), reference.error[name].double(), rtol=rtol,
                                   atol=rtol, equal_nan=True, msg=lambda m: f"{what} {name}: {m}")
    for field in FIELDS:
        # NaN only for a head that sees no key at all (under an explicit mask): no weights to take fractions of
        torch.testing.assert_close(getattr(result, field).double(), getattr(reference, field).double(), rtol=rtol,
                                   atol=rtol, equal_nan=True, msg=lambda m: f"{what} {field}: {m}")
    if hist_moves == 0:
        assert torch.equal(result.logit_hist, reference.logit_hist), f"{what}: logit histograms differ"
    else:
        moved = (result.logit_hist.cumsum(-1) - reference.logit_hist.cumsum(-1)).abs()
        assert moved[..., -1].eq(0).all() and moved.amax() <= hist_moves, f"{what}: logit histograms differ"


@pytest.mark.parametrize("clamp", [None, 5.0, (-2.0, 2.0)], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_torch_sweep_matches_reference(shape, clamp):
    """Logits of about +-20: negative weights, vanishing and negative sum denominators all occur and must agree."""
    q, k, v = make_qkv(shape, torch.float32, logit_scale=5.0)
    causal = shape[-1]
    result = taylor_sweep(q, k, v, max_order=10, clamp=clamp, causal=causal, backend="torch")
    reference = naive.taylor_sweep(q, k, v, max_order=10, clamp=clamp, causal=causal)
    _assert_sweeps_equal(result, reference, rtol=1e-6, what=f"clamp {clamp}")
    if clamp is None and shape[3] > 1:
        assert result.negative_weights[1::2].amax() > 0, "odd orders must give negative weights here"
        assert result.nonpositive_denominator.amax() > 0, "some sum denominator must reach zero or below here"


@pytest.mark.parametrize("shape", SHAPES[1:3], ids=IDS[1:3])
def test_triton_sweep_matches_reference(shape):
    """The Triton path measures errors with the fp32 kernel: modest logits, so fp32 error stays near rounding."""
    q, k, v = make_qkv(shape, torch.float32)
    result = taylor_sweep(q, k, v, max_order=4, backend="triton")
    reference = naive.taylor_sweep(q, k, v, max_order=4)
    _assert_sweeps_equal(result, reference, rtol=1e-4, what="triton")


@pytest.mark.parametrize("clamp", [None, (-2.0, 2.0)], ids=str)
@pytest.mark.parametrize("shape,dtype_name,extras", MODEL_CASES, ids=MODEL_IDS)
def test_torch_sweep_with_windows_sinks_and_softcap_matches_reference(shape, dtype_name, extras, clamp):
    model = model_masks.model_arguments(extras, shape)
    q, k, v = make_qkv(shape, torch.float32, logit_scale=5.0)
    result = taylor_sweep(q, k, v, max_order=10, clamp=clamp, causal=shape[-1], **model, backend="torch")
    reference = naive.taylor_sweep(q, k, v, max_order=10, clamp=clamp, causal=shape[-1], **model)
    _assert_sweeps_equal(result, reference, rtol=1e-6, what=f"{extras} clamp {clamp}")


@pytest.mark.parametrize("sinks", [None, "mixed"])
@pytest.mark.parametrize("shape,kind,softcap", MASK_CASES, ids=MASK_IDS)
def test_torch_sweep_with_masks_matches_reference(shape, kind, softcap, sinks):
    """Rows that see no key have NaN errors and a zero target norm, in both."""
    # softcap 1 of logits about +-20 would land many within rounding of the bin edge at 1.0: keep them below 10
    q, k, v = make_qkv(shape, torch.float32, logit_scale=2.0 if softcap else 5.0)
    model = dict(causal=shape[-1], mask=make_mask(kind, shape), softcap=softcap,
                 sinks=None if sinks is None else model_masks.make_sinks(sinks, shape[1]))
    result = taylor_sweep(q, k, v, max_order=6, **model, backend="auto")
    reference = naive.taylor_sweep(q, k, v, max_order=6, **model)
    _assert_sweeps_equal(result, reference, rtol=1e-6, what=f"{kind} mask")


@pytest.mark.parametrize("extras", ["window7", "sinks_high", "window7-sinks_mixed-softcap2"])
def test_triton_sweep_with_windows_sinks_and_softcap_matches_reference(extras):
    shape = (2, 2, 1, 70, 70, 16, True)
    model = model_masks.model_arguments(extras, shape)
    q, k, v = make_qkv(shape, torch.float32)
    result = taylor_sweep(q, k, v, max_order=4, **model, backend="triton")
    reference = naive.taylor_sweep(q, k, v, max_order=4, **model)
    _assert_sweeps_equal(result, reference, rtol=1e-4, what=f"triton {extras}", hist_moves=2)


def test_sinks_scale_the_target_and_join_both_denominators():
    """With sinks the target is (1 - p_sink) x the sink-free one, and a sink far above the logits makes the exact
    denominator dwarf every key's: the sum denominator of order 0 (the key count + 1) falls below 1e-2 of it."""
    shape = (1, 2, 1, 30, 30, 16, True)
    q, k, v = make_qkv(shape, torch.float32)
    sinks = torch.tensor([12.0, -40.0])
    with_sinks = taylor_sweep(q, k, v, max_order=2, sinks=sinks, backend="torch")
    without = taylor_sweep(q, k, v, max_order=2, backend="torch")
    scores = naive.masked_scores(q, k, causal=True, scale=None)
    sink_mass = 1 / (1 + torch.exp(scores - sinks.double()[None, :, None, None]).sum(-1))
    torch.testing.assert_close(with_sinks.target_norm.double(), (1 - sink_mass) * without.target_norm.double(),
                               rtol=1e-5, atol=0)
    assert with_sinks.small_denominator[0, 0, 0] == 1 and with_sinks.small_denominator[0, 0, 1] == 0


def test_keys_left_of_every_window_are_never_read_by_the_sweep():
    """No row sees keys 0..63 (64 queries after 96 cached keys, a window of 33): NaN there changes nothing."""
    q, k, v = make_qkv((1, 2, 1, 64, 160, 16, True), torch.float32, logit_scale=3.0)
    clean = taylor_sweep(q, k, v, max_order=4, window=33, backend="torch")
    k[:, :, :64], v[:, :, :64] = float("nan"), float("nan")
    poisoned = taylor_sweep(q, k, v, max_order=4, window=33, backend="torch")
    _assert_sweeps_equal(poisoned, clean, rtol=0, what="poisoned keys")


def test_the_sweep_is_every_single_order_call():
    """Per-row errors equal naive.taylor_error called order by order, denominator by denominator."""
    q, k, v = make_qkv(SHAPES[2], torch.float32, logit_scale=2.0)
    sweep = chunked.taylor_sweep(q, k, v, max_order=6, clamp=None, causal=True, scale=q.shape[-1] ** -0.5)
    for name in DENOMINATORS:
        direct = naive.taylor_error(q, k, v, orders=range(7), denominator=name)
        torch.testing.assert_close(sweep.error[name], direct, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_errors_fall_with_order_when_logits_are_small():
    """Every logit in [-1, 1]: the series converges fast, so error(1) > error(2) > error(10) and error(10) < 1e-6."""
    q, k, v = make_qkv((1, 3, 1, 63, 63, 64, True), torch.float32)
    scores = torch.matmul(q.double(), k.double().transpose(-1, -2)) / 8
    q = q / scores.abs().max().item()  # now |q.k / 8| <= 1
    sweep = taylor_sweep(q, k, v, max_order=10, backend="torch")
    for name in ("softmax", "taylor"):
        worst = sweep.error[name].amax((1, 2, 3))
        assert worst[1] > worst[2] > worst[10], name
        assert worst[10] < 1e-6, f"{name}: order-10 error {worst[10]:.2e}"


def test_even_orders_never_give_negative_weights():
    q, k, v = make_qkv((1, 3, 1, 63, 63, 64, True), torch.float32, logit_scale=5.0)
    sweep = taylor_sweep(q, k, v, max_order=10, backend="torch")
    assert sweep.negative_weights[0::2].amax() == 0
    assert sweep.nonpositive_denominator[0::2].amax() == 0


def test_term_sizes_and_histogram():
    q, k, v = make_qkv((1, 2, 1, 40, 40, 16, True), torch.float32, logit_scale=3.0)
    sweep = taylor_sweep(q, k, v, max_order=3, backend="torch")
    scores = naive.masked_scores(q, k, causal=True, scale=None)
    visible = torch.isfinite(scores)
    for n in range(4):
        direct = (scores.abs() ** n / math.factorial(n))[visible].view(1, 2, -1).mean(-1)
        torch.testing.assert_close(sweep.term_mean[n].double(), direct, rtol=1e-6, atol=0)
    assert sweep.logit_hist.sum(-1).tolist() == [[40 * 41 // 2] * 2]
